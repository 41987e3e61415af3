package proxy

import (
	"time"

	"github.com/pgwarden/pgwarden/proxy/internal/relay"
)

// Metrics receives the gateway's counters. Package metrics implements it
// with the Prometheus client; the default does nothing. Implementations must
// be safe for concurrent use and cheap: the counters BytesCounter returns
// are added to on the hot path.
type Metrics interface {
	// ConnectionClosed is called once per connection the proxy handled,
	// with its outcome.
	ConnectionClosed(route string, outcome Outcome, duration time.Duration)
	// HandshakeCompleted observes accept → TLS handshake done.
	HandshakeCompleted(route string, d time.Duration)
	// BytesCounter returns the counter of relayed payload bytes for one
	// direction (toUpstream is client → postgres). It is resolved once per
	// server, so the hot path is a single Add.
	BytesCounter(route string, toUpstream bool) Counter
	// CancelRequest counts cancel requests, forwarded or dropped.
	CancelRequest(forwarded bool)
	// SessionsActive moves the gauge of connections being handled.
	SessionsActive(route string, delta int)
	// UpstreamDialed reports whether a connection to the route's upstream
	// (for a client's login) could be opened.
	UpstreamDialed(route string, ok bool)
}

// Counter is the one method of a Prometheus counter the relay needs.
type Counter = relay.Counter

type nopCounter struct{}

func (nopCounter) Add(float64) {}

type nopMetrics struct{}

func (nopMetrics) ConnectionClosed(string, Outcome, time.Duration) {}
func (nopMetrics) HandshakeCompleted(string, time.Duration)        {}
func (nopMetrics) BytesCounter(string, bool) Counter               { return nopCounter{} }
func (nopMetrics) CancelRequest(bool)                              {}
func (nopMetrics) SessionsActive(string, int)                      {}
func (nopMetrics) UpstreamDialed(string, bool)                     {}
