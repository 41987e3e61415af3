package proxy

import (
	"context"
	"errors"
	"net"
	"syscall"
	"time"
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
	var d net.Dialer
	conn, err := d.DialContext(dctx, s.cfg.Upstream.Network, s.cfg.Upstream.Address)
	if err != nil {
		return nil, refuse("upstream_unavailable", codeConnectionFailure,
			"could not connect to the upstream PostgreSQL server: "+dialProblem(err),
			"The database server behind this gateway is down or refusing connections; try again later.", err)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		// Queries are small request/response exchanges: no Nagle delay.
		_ = tc.SetNoDelay(true)
	}
	return conn, nil
}

// dialProblem names a dial failure in words safe to show a client.
func dialProblem(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ENOENT):
		return "socket file not found"
	case errors.Is(err, syscall.EACCES):
		return "permission denied"
	case isTimeout(err), errors.Is(err, context.DeadlineExceeded):
		return "timed out"
	default:
		return "network error"
	}
}
