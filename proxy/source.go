package proxy

import (
	"errors"
	"net"
	"net/netip"
	"time"
)

// Clients behind a load balancer.
//
// The accept-time policy (package acl) judges a direct peer by its address
// before Serve sees the connection. A trusted load balancer's connections
// arrive undecided: the real client is named in a PROXY protocol header the
// balancer sends before the client's first byte. That header is read here,
// in the connection's own goroutine and never in the accept loop, where one
// balancer connection that is slow to send it would stall every accept.
// The SourceResolver reads it frame-exactly (the bytes after it stay in the
// socket for the negotiation, the TLS handshake and the event-loop
// hand-off) and applies the same admission to the client it names; from
// then on the client is the connection's source for every per-source rule:
// startup caps, authentication slots, bans, cancel limits and logs.

// SourceResolver establishes a connection's client before anything else is
// read from it. Implementations must be safe for concurrent use.
type SourceResolver interface {
	// Resolve is called once per connection, in its goroutine, before any
	// byte is read, with the pre-authentication deadline. For a direct
	// peer it returns the peer at once, reading nothing. For a trusted
	// balancer's connection it reads the header (by deadline at the
	// latest), admits the client the header names, and returns it with
	// the balancer's address. Errors:
	//   - wrapping ErrSourceRefused: the client was refused by the
	//     admission policy, which has reset the connection and counted
	//     and logged the refusal (exactly as at accept);
	//   - wrapping ErrNoClient: the balancer named no client: a header
	//     saying so (a health check), or a close before the first byte
	//     (a plain TCP health check);
	//   - anything else: no valid header arrived in time.
	// Resolve may leave the connection's deadlines cleared; the proxy
	// re-arms its own.
	Resolve(conn net.Conn, deadline time.Time) (Source, error)
}

// Source is who a connection comes from.
type Source struct {
	// Client is the client: the peer itself, or the client a trusted load
	// balancer named (normalised: IPv4-mapped IPv6 unmapped, no zone).
	Client netip.AddrPort
	// Balancer is the load balancer that named Client; nil for a direct
	// peer.
	Balancer net.Addr
}

var (
	// ErrSourceRefused is wrapped by Resolve errors for a client the
	// admission policy refused; the connection has been reset.
	ErrSourceRefused = errors.New("source refused at admission")
	// ErrNoClient is wrapped by Resolve errors when the balancer named no
	// client: a v2 LOCAL command, a v1 UNKNOWN line, or a close before the
	// first byte. These are health checks; they never reach postgres.
	ErrNoClient = errors.New("the load balancer named no client")
)

// resolveSource runs the SourceResolver and makes its client the session's
// source. done reports that the connection ended there, with outcome;
// refused means the admission policy refused it, which is counted and
// logged as an accept-time refusal and not as a connection of the proxy's.
func (s *Server) resolveSource(sess *session) (outcome Outcome, done, refused bool, err error) {
	if s.cfg.Sources == nil {
		return 0, false, false, nil
	}
	src, err := s.cfg.Sources.Resolve(sess.raw, sess.start.Add(s.cfg.HandshakeTimeout))
	switch {
	case errors.Is(err, ErrSourceRefused):
		return 0, true, true, err
	case errors.Is(err, ErrNoClient):
		return OutcomeHealthCheck, true, false, err
	case err != nil:
		return OutcomeBadProxyHeader, true, false, err
	}
	if src.Balancer != nil {
		sess.remote = src.Client.Addr()
		sess.source = src.Client.String()
		sess.balancer = src.Balancer.String()
	}
	return 0, false, false, nil
}
