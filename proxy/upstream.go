package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/pgwarden/pgwarden/internal/netconn"
)

// dialUpstream connects to postgres. It runs only after TLS and a valid
// StartupMessage, so an unauthenticated scanner never costs postgres a
// backend. Failure is answered promptly with 08006 and a message naming the
// kind of problem; the address itself stays in our log.
func (s *Server) dialUpstream(ctx context.Context, deadline time.Time) (net.Conn, error) {
	if d := time.Now().Add(s.cfg.DialTimeout); d.Before(deadline) {
		deadline = d
	}
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	conn, err := s.cfg.Upstream.Dial(dctx)
	s.cfg.Metrics.UpstreamDialed(s.cfg.Name, err == nil)
	if err != nil {
		return nil, refuse(OutcomeUpstreamUnavailable, codeConnectionFailure,
			"could not connect to the upstream PostgreSQL server: "+dialProblem(err),
			"The database server behind this gateway is down or refusing connections; try again later.", err)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		// Queries are small request/response exchanges: no Nagle delay.
		_ = tc.SetNoDelay(true)
	}
	return conn, nil
}

// ErrUpstreamNotLoopback is the dial error for a LoopbackOnly upstream whose
// name resolved to an address that is not loopback.
var ErrUpstreamNotLoopback = errors.New("upstream address is not loopback")

// Dial connects to the upstream. With LoopbackOnly, the dialer's Control
// hook checks each address a TCP dial is about to connect to, after name
// resolution and before connect(2): a name such as localhost that resolved
// to loopback when the configuration was checked but resolves elsewhere now
// (a changed hosts file, DNS rebinding) is refused, not dialed. Checking the
// name once at start and dialing it by name later would not hold.
func (u Upstream) Dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	if u.LoopbackOnly {
		d.Control = requireLoopback
	}
	return d.DialContext(ctx, u.Network, u.Address)
}

// requireLoopback is a net.Dialer Control hook: address is the resolved
// IP:port of a TCP dial (unix sockets are left alone).
func requireLoopback(network, address string, _ syscall.RawConn) error {
	if network == "unix" {
		return nil
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil || !ap.Addr().Unmap().IsLoopback() {
		return fmt.Errorf("%w: %s", ErrUpstreamNotLoopback, address)
	}
	return nil
}

// dialProblem names a dial failure in words safe to show a client.
func dialProblem(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ENOENT):
		return "socket file not found"
	case errors.Is(err, ErrUpstreamNotLoopback):
		return "upstream address is not loopback"
	case errors.Is(err, syscall.EACCES):
		return "permission denied"
	case netconn.IsTimeout(err), errors.Is(err, context.DeadlineExceeded):
		return "timed out"
	default:
		return "network error"
	}
}
