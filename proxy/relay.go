package proxy

import (
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/proxy/internal/eventloop"
	"github.com/pgwarden/pgwarden/proxy/internal/relay"
)

// RelayMode chooses what moves an authenticated session's bytes
// (--relay). Whichever it is, the connection path meets it only at two
// points: the client's conn is wrapped before the TLS handshake
// (handshake), and the session is handed over after ReadyForQuery
// (relaySession).
type RelayMode int

const (
	// RelayAuto uses event loops where they exist (Linux), goroutines
	// elsewhere.
	RelayAuto RelayMode = iota
	// RelayLoop uses event loops (package eventloop): level-triggered
	// epoll, crypto/tls over a non-blocking socket.
	RelayLoop
	// RelayGoroutines uses two goroutines per session (relay.Pipe). It
	// relies on nothing crypto/tls does not promise.
	RelayGoroutines
)

// String names the mode as the command line does.
func (m RelayMode) String() string {
	switch m {
	case RelayAuto:
		return "auto"
	case RelayLoop:
		return "loop"
	case RelayGoroutines:
		return "goroutines"
	}
	return fmt.Sprintf("RelayMode(%d)", int(m))
}

// ErrRelayUnsupported is New's error for RelayLoop where there are no
// event loops.
var ErrRelayUnsupported = errors.New("proxy: the event-loop relay needs Linux (epoll)")

// newRelay is the one place a Server's relay is chosen.
func newRelay(mode RelayMode, log *zap.Logger) (relay.Relay, error) {
	switch {
	case mode == RelayGoroutines, mode == RelayAuto && !eventloop.Supported:
		return relay.Goroutines(), nil
	case mode == RelayLoop && !eventloop.Supported:
		return nil, ErrRelayUnsupported
	case mode == RelayAuto, mode == RelayLoop:
		return eventloop.New(log)
	}
	return nil, fmt.Errorf("proxy: unknown relay mode %d", int(mode))
}

// relaySession hands an authenticated session to the relay and waits for
// it to end. A drain that closed the session before the hand-off leaves it
// unrelayed.
func (s *Server) relaySession(sess *session) {
	rs := &relay.Session{
		Client:   sess.tls,
		Raw:      sess.raw,
		Upstream: sess.upstream,
		Up:       s.bytesUp,
		Down:     s.bytesDown,
	}
	s.mu.Lock()
	if sess.closed {
		s.mu.Unlock()
		return
	}
	sess.relayed = rs
	s.mu.Unlock()
	sess.relayErr = s.relay.Run(rs)
	sess.bytesToUpstream += rs.BytesToUpstream
	sess.bytesToClient += rs.BytesToClient
}

// relayOutcome is the outcome of a session that reached the relay, for its
// log line and metrics: ok unless the relay ended it for a reason of its
// own.
func relayOutcome(err error) Outcome {
	switch {
	case errors.Is(err, relay.ErrTLSAbuse):
		return OutcomeTLSAbuse
	case errors.Is(err, relay.ErrQueueFull):
		return OutcomeInternalError
	}
	return OutcomeOK
}
