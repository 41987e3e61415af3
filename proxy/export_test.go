package proxy

import (
	"github.com/pgwarden/pgwarden/proxy/internal/eventloop"
	"github.com/pgwarden/pgwarden/proxy/internal/relay"
)

// UseGoroutineRelay makes s relay authenticated sessions with two goroutines
// each, as --relay goroutines does, so tests cover both relays. Call it
// before s serves.
func UseGoroutineRelay(s *Server) { s.relay = relay.Goroutines() }

// NopMetrics is the Metrics a Server uses when none is configured.
func NopMetrics() Metrics { return nopMetrics{} }

// RelayLoopSessions reports how many sessions the event loops relay now.
func RelayLoopSessions() int { return eventloop.Sessions() }

// RelayQueueMax is the most an event loop's queue toward one socket may
// hold (0 where there are no event loops).
const RelayQueueMax = eventloop.QueueMax

// RelayQueuePeak is the most any event loop's queue has held since
// ResetRelayQueuePeak.
func RelayQueuePeak() int64 { return eventloop.QueuePeak() }

// ResetRelayQueuePeak starts a new RelayQueuePeak measurement.
func ResetRelayQueuePeak() { eventloop.ResetQueuePeak() }
