package gateway

import (
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/internal/proxyproto"
	"github.com/pgwarden/pgwarden/proxy"
)

// balancerSources is a route's proxy.SourceResolver: for a connection from
// one of the route's trusted load balancers (--proxy-protocol-from), which
// the accept-time gate left undecided (acl.ListenerConfig.Defer), it reads
// the PROXY header in the connection's goroutine and runs the route's gate
// on the client the header names, so that client is admitted or refused
// (reset, counted, logged) exactly as a direct peer is at accept. Other
// peers were judged at accept and are their own clients.
type balancerSources struct {
	// trusted are the balancers in force, and timeout the header wait
	// (the gateway's, shared by the routes): a reload replaces them.
	trusted atomic.Pointer[proxyproto.Trusted]
	timeout *atomic.Int64
	gate    *acl.Gate
	// onHeaderError counts a trusted peer's missing or bad header by
	// proxyproto.Reason.
	onHeaderError func(reason string)
}

var _ proxy.SourceResolver = (*balancerSources)(nil)

// Resolve implements proxy.SourceResolver.
func (b *balancerSources) Resolve(c net.Conn, deadline time.Time) (proxy.Source, error) {
	if !b.trusted.Load().Contains(c.RemoteAddr()) {
		return proxy.Source{}, nil
	}
	// The header is the balancer's, sent as soon as it connects: a short
	// wait of its own, and never past the connection's pre-authentication
	// deadline.
	if d := time.Now().Add(time.Duration(b.timeout.Load())); d.Before(deadline) {
		deadline = d
	}
	h, err := proxyproto.ReadHeader(c, deadline)
	if err != nil {
		reason := proxyproto.Reason(err)
		b.onHeaderError(reason)
		if reason == "closed" {
			// Connected and closed without a byte: a plain TCP health
			// check.
			return proxy.Source{}, fmt.Errorf("%w: %w", proxy.ErrNoClient, err)
		}
		return proxy.Source{}, fmt.Errorf("PROXY header from trusted balancer %s: %w", c.RemoteAddr(), err)
	}
	if h.Local {
		return proxy.Source{}, fmt.Errorf("%w: PROXY v%d header without a client (health check)", proxy.ErrNoClient, h.Version)
	}
	client := h.Source.Addr()
	if v := b.gate.AdmitSource(c, client, true); v.Decision != acl.Admit {
		return proxy.Source{}, fmt.Errorf("%w: %s named by %s: %w", proxy.ErrSourceRefused, client, c.RemoteAddr(), v.Decision.Err())
	}
	return proxy.Source{Client: h.Source, Balancer: c.RemoteAddr()}, nil
}
