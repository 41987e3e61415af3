// Package relay is the seam between the gateway's connection path and what
// moves an authenticated session's bytes. Once postgres has said
// ReadyForQuery the gateway has nothing left to decide: a Relay copies
// bytes both ways until either side ends, without parsing them.
//
// Two implementations exist, chosen once per proxy.Server: Goroutines (two
// goroutines per session, ghostunnel's fuse; this package) and the Linux
// event loop (package eventloop). Both sit under crypto/tls the same way:
// the client's conn is wrapped before the TLS handshake (Relay.Wrap), and
// what crypto/tls writes on its own once the session is relayed is counted
// and limited by the conn's Guard.
package relay

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"time"
)

// Relay moves the bytes of authenticated sessions.
type Relay interface {
	// Wrap returns the conn crypto/tls is to run over for a client; it is
	// called for every connection before its TLS handshake. Until the
	// session is relayed, the returned conn passes everything through to
	// raw.
	Wrap(raw net.Conn) net.Conn
	// Run relays s until either side ends it (or s.Close is called) and
	// returns why the relay ended it, if it did: an error wrapping
	// ErrTLSAbuse or ErrQueueFull, or another fault. A session that simply
	// ended returns nil. It fills s's byte counts.
	Run(s *Session) error
	// Stop releases what the relay holds for the process (the event
	// loops). The server calls it once every session has ended.
	Stop()
	// Alive returns nil once every goroutine the relay runs for many
	// sessions at once (an event loop) has shown, before ctx ends, that it
	// still gets round to its work; otherwise why not. A relay with no
	// such goroutine is always alive. A supervisor's watchdog asks this.
	Alive(ctx context.Context) error
}

// Counter is what a relay counts relayed bytes on (one Prometheus counter
// per route and direction).
type Counter interface{ Add(float64) }

// CloseGrace bounds how long the other direction may go on after one side
// has finished, so a silent peer cannot hold a session.
const CloseGrace = 5 * time.Second

// Session is one authenticated session handed to a Relay.
type Session struct {
	// Client is the client's TLS connection, over the conn Wrap returned.
	Client *tls.Conn
	// Raw is the accepted socket under Client.
	Raw net.Conn
	// Upstream is postgres's connection, plaintext.
	Upstream net.Conn
	// Up and Down count relayed bytes: client → postgres, postgres → client.
	Up, Down Counter

	// BytesToUpstream and BytesToClient are the bytes relayed each way,
	// set by Run.
	BytesToUpstream int64
	BytesToClient   int64

	mu     sync.Mutex
	closed bool
	stop   func()
}

// Start runs start under the session's lock unless Close has been called,
// and keeps the function it returns, which Close calls to end the session
// (nil if closing its conns is enough). It reports whether the session was
// started. A relay that hands the session to another goroutine does so in
// start, so a Close can never fall between the hand-off and the
// registration of its stop.
func (s *Session) Start(start func() (stop func())) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.stop = start()
	return true
}

// Close ends the session now, whatever its relay (a drain that ran out of
// time). The caller closes the session's conns too.
func (s *Session) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.stop != nil {
		s.stop()
	}
}
