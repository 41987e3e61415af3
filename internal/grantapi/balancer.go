package grantapi

import (
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/pgwarden/pgwarden/internal/proxyproto"
)

// DefaultProxyHeaderTimeout bounds the wait for a load balancer's PROXY
// header when ServerConfig.ProxyHeaderTimeout gives none.
const DefaultProxyHeaderTimeout = 3 * time.Second

// balancerListener marks connections from trusted load balancers: each
// must begin with a PROXY header, which the connection reads at its first
// Read, in the goroutine that serves it (the TLS handshake's), never in
// the accept loop, where one slow balancer would stall every request.
type balancerListener struct {
	net.Listener
	trusted func() *proxyproto.Trusted
	timeout func() time.Duration
	onError func(reason string)
}

func (l *balancerListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil || !l.trusted().Contains(c.RemoteAddr()) {
		return c, err
	}
	return &balancedConn{Conn: c, timeout: l.timeout(), onError: l.onError}, nil
}

// balancedConn is a connection from a trusted balancer. Its first Read
// reads the PROXY header exactly (proxyproto.ReadHeader), after which
// RemoteAddr is the client the header names, so the grant is for the CI
// runner, not for the balancer. A connection without a valid header, or
// a health check (a header naming no client), reads as closed.
type balancedConn struct {
	net.Conn
	timeout time.Duration
	onError func(reason string)

	once sync.Once
	err  error // the header's failure, returned by every Read

	mu           sync.Mutex
	client       net.Addr  // set once the header named one
	readDeadline time.Time // the server's, restored after the header
}

// errHealthCheck ends a connection whose header names no client.
var errHealthCheck = fmt.Errorf("PROXY header without a client (health check): %w", io.EOF)

func (c *balancedConn) Read(p []byte) (int, error) {
	c.once.Do(c.readHeader)
	if c.err != nil {
		return 0, c.err
	}
	return c.Conn.Read(p)
}

func (c *balancedConn) readHeader() {
	c.mu.Lock()
	serverDeadline := c.readDeadline
	c.mu.Unlock()
	deadline := time.Now().Add(c.timeout)
	if !serverDeadline.IsZero() && serverDeadline.Before(deadline) {
		deadline = serverDeadline
	}
	h, err := proxyproto.ReadHeader(c.Conn, deadline)
	// ReadHeader clears the read deadline; put back the server's (its
	// handshake and header timeouts), or the rest would wait unbounded.
	if derr := c.Conn.SetReadDeadline(serverDeadline); derr != nil && err == nil {
		err = derr
	}
	switch {
	case err != nil:
		c.onError(proxyproto.Reason(err))
		c.err = fmt.Errorf("PROXY header from trusted balancer %s: %w", c.Conn.RemoteAddr(), err)
	case h.Local:
		c.err = errHealthCheck
	default:
		c.mu.Lock()
		c.client = h.SourceAddr()
		c.mu.Unlock()
	}
}

// RemoteAddr is the client the PROXY header named once it has been read,
// and the balancer until then.
func (c *balancedConn) RemoteAddr() net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client != nil {
		return c.client
	}
	return c.Conn.RemoteAddr()
}

// Balancer is the load balancer's address.
func (c *balancedConn) Balancer() net.Addr { return c.Conn.RemoteAddr() }

func (c *balancedConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.readDeadline = t
	c.mu.Unlock()
	return c.Conn.SetReadDeadline(t)
}

func (c *balancedConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.readDeadline = t
	c.mu.Unlock()
	return c.Conn.SetDeadline(t)
}

// balancerOf returns the load balancer a connection came through, or nil
// for a direct one.
func balancerOf(c net.Conn) net.Addr {
	if b, ok := c.(interface{ Balancer() net.Addr }); ok {
		return b.Balancer()
	}
	return nil
}
