package proxy

import "time"

// Metrics receives the gateway's counters. cmd implements it with the
// Prometheus client; the default does nothing. Implementations must be safe
// for concurrent use and cheap: BytesRelayed is called on the hot path.
type Metrics interface {
	// ConnectionClosed is called once per connection the proxy handled,
	// with its outcome (e.g. "ok", "tls_required", "auth_failed").
	ConnectionClosed(route, outcome string, duration time.Duration)
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
}

// Counter is the one method of a Prometheus counter the relay needs.
type Counter interface{ Add(float64) }

type nopCounter struct{}

func (nopCounter) Add(float64) {}

type nopMetrics struct{}

func (nopMetrics) ConnectionClosed(string, string, time.Duration) {}
func (nopMetrics) HandshakeCompleted(string, time.Duration)       {}
func (nopMetrics) BytesCounter(string, bool) Counter              { return nopCounter{} }
func (nopMetrics) CancelRequest(bool)                             {}
func (nopMetrics) SessionsActive(string, int)                     {}
