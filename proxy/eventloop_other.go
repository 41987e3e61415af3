//go:build !linux

package proxy

import "net"

// Event-loop relaying is Linux-only (epoll); elsewhere every session is
// relayed by pipe's two goroutines and loopConn is a pass-through with the
// client's guard (clientguard.go).

type loopConn struct {
	net.Conn
	guard clientGuard
}

func newLoopConn(c net.Conn) *loopConn { return &loopConn{Conn: c} }

func (c *loopConn) Read(p []byte) (int, error)  { return c.guard.read(c.Conn, p) }
func (c *loopConn) Write(p []byte) (int, error) { return c.guard.write(c.Conn, p) }

type loopSession struct{}

func (s *Server) relayInLoop(*session, net.Conn) bool { return false }

func (s *Server) stopLoops() {}

func (sess *session) closeRelay() {}
