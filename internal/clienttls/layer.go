package clienttls

import (
	"errors"
	"fmt"
)

// Layer names, in the order a connection passes them. `pgwarden probe`
// prints one line per layer under these names and exits with 10 + the index
// of the first that failed.
const (
	LayerResolve           = "resolve"
	LayerTCP               = "tcp"
	LayerNegotiate         = "negotiate"
	LayerTLS               = "tls"
	LayerCertificate       = "certificate"
	LayerClientCertificate = "client-certificate"
	LayerAuth              = "auth"
	LayerQuery             = "query"
)

// Layers lists the layer names in order.
var Layers = []string{LayerResolve, LayerTCP, LayerNegotiate, LayerTLS, LayerCertificate, LayerClientCertificate, LayerAuth, LayerQuery}

// Error is a connection failure attributed to one layer. Msg says what
// happened in words a user can act on; Err is the underlying cause.
type Error struct {
	Layer string
	Msg   string
	Err   error
}

// Error is "layer: message: cause".
func (e *Error) Error() string {
	if e.Err != nil {
		return e.Layer + ": " + e.Msg + ": " + e.Err.Error()
	}
	return e.Layer + ": " + e.Msg
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// layerErr builds an *Error.
func layerErr(layer string, err error, format string, args ...any) *Error {
	return &Error{Layer: layer, Msg: fmt.Sprintf(format, args...), Err: err}
}

// LayerOf returns the layer an error is attributed to, or "" if none.
func LayerOf(err error) string {
	var le *Error
	if errors.As(err, &le) {
		return le.Layer
	}
	return ""
}
