package proxy_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/proxy"
)

// octetResolver is a SourceResolver whose "header" is one byte: the last
// octet of the client in 192.0.2.0/24. 0 names no client (a health check),
// 255 is refused (the resolver resets the connection, as a gate would).
type octetResolver struct{}

func (octetResolver) Resolve(c net.Conn, deadline time.Time) (proxy.Source, error) {
	_ = c.SetReadDeadline(deadline)
	defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return proxy.Source{}, fmt.Errorf("reading the header: %w", err)
	}
	switch b[0] {
	case 0:
		return proxy.Source{}, proxy.ErrNoClient
	case 255:
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = c.Close()
		return proxy.Source{}, proxy.ErrSourceRefused
	}
	return proxy.Source{Client: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, b[0]}), 5432), Balancer: c.RemoteAddr()}, nil
}

// balancerConn connects, sends the one-byte header naming octet, and
// keeps quiet: the connection then holds its startup slot.
func (g *gateway) balancerConn(t *testing.T, octet byte) net.Conn {
	t.Helper()
	c := g.dialRaw(t, "")
	_, err := c.Write([]byte{octet})
	require.NoError(t, err)
	return c
}

// requireReset asserts the connection is reset with no byte sent.
func requireReset(t *testing.T, c net.Conn) {
	t.Helper()
	n, err := io.Copy(io.Discard, c)
	require.Zero(t, n)
	require.True(t, errors.Is(err, syscall.ECONNRESET), "want a reset, got %v", err)
}

// TestSourcesBehindBalancer: the per-source startup cap counts the client
// a balancer names, not the balancer; a connection whose header is still
// pending holds a global slot; health checks and refusals end quietly.
func TestSourcesBehindBalancer(t *testing.T) {
	g := startGateway(t, withUpstream("127.0.0.1:1"), func(c *proxy.Config, _ *acl.ListenerConfig) {
		c.Sources = octetResolver{}
		c.MaxStartups, c.MaxStartupsPerIP = 3, 1
	})
	// Two clients behind the one balancer each get their slot...
	g.balancerConn(t, 1)
	g.balancerConn(t, 2)
	waitFor(t, "two startups", func() bool { return g.server.Sessions() == 2 })
	// ...and the first one's second connection is over its own cap.
	requireReset(t, g.balancerConn(t, 1))

	// A header still on its way holds the last global slot: the next
	// connection is reset before anything is read.
	pending := g.dialRaw(t, "")
	waitFor(t, "three startups", func() bool { return g.server.Sessions() == 3 })
	g.requireResetAtAccept(t, "")
	pending.Close()
	waitFor(t, "the pending one gone", func() bool { return g.server.Sessions() == 2 })

	// A health check and a refused client end without a byte.
	hc := g.balancerConn(t, 0)
	n, err := io.Copy(io.Discard, hc)
	require.Zero(t, n)
	require.NoError(t, err, "a health check is closed, not reset")
	requireReset(t, g.balancerConn(t, 255))
}
