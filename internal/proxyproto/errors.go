package proxyproto

import (
	"errors"
)

// The errors ReadHeader returns wrap exactly one of these, so callers can
// count and log them by kind (see Reason). None is ever sent to the peer:
// the gateway closes the connection.
var (
	// ErrTimeout: the deadline passed before a complete header arrived.
	ErrTimeout = errors.New("PROXY header not received before the deadline")
	// ErrNoHeader: the first bytes are not a PROXY v1 or v2 signature (a
	// client that connected to the gateway directly, past the balancer).
	ErrNoHeader = errors.New("no PROXY protocol header")
	// ErrMalformed: a signature was present but the header is invalid or
	// truncated.
	ErrMalformed = errors.New("malformed PROXY protocol header")
	// ErrUnsupported: a valid header whose command or address family names
	// no TCP client (UDP, unix sockets, unspecified).
	ErrUnsupported = errors.New("unsupported PROXY protocol header")
	// ErrClosed: the peer closed or reset the connection before sending a
	// single byte, which is what a TCP health check does.
	ErrClosed = errors.New("connection closed before a PROXY header")
)

// Reasons lists every label Reason returns, for metrics that pre-register
// them.
func Reasons() []string {
	return []string{"timeout", "no_header", "malformed", "unsupported", "closed", "error"}
}

// Reason returns a short label for err, for a metric label or a log field:
// "timeout", "no_header", "malformed", "unsupported", "closed", or "error"
// for anything else (an I/O error in the middle of a header, say).
func Reason(err error) string {
	switch {
	case errors.Is(err, ErrTimeout):
		return "timeout"
	case errors.Is(err, ErrNoHeader):
		return "no_header"
	case errors.Is(err, ErrMalformed):
		return "malformed"
	case errors.Is(err, ErrUnsupported):
		return "unsupported"
	case errors.Is(err, ErrClosed):
		return "closed"
	default:
		return "error"
	}
}
