//go:build !linux

package proxy

import "net"

// Event-loop relaying is Linux-only (epoll); elsewhere every session is
// relayed by pipe's two goroutines and loopConn is a plain pass-through.

type loopConn struct{ net.Conn }

func newLoopConn(c net.Conn) *loopConn { return &loopConn{Conn: c} }

type loopSession struct{}

func (s *Server) relayInLoop(*session, net.Conn) bool { return false }

func (s *Server) stopLoops() {}

func (sess *session) closeRelay() {}
