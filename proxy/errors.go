package proxy

import (
	"net"

	"github.com/pgwarden/pgwarden/internal/netconn"
)

// SQLSTATEs pgwarden itself sends. Everything else a client sees comes from
// postgres verbatim.
const (
	codeInvalidAuthorization = "28000" // invalid_authorization_specification
	codeProtocolViolation    = "08P01" // protocol_violation
	codeFeatureNotSupported  = "0A000" // feature_not_supported
	codeConnectionFailure    = "08006" // connection_failure
	codeTooManyConnections   = "53300" // too_many_connections
)

// clientError is a refusal the client is told about. Only code, message and
// hint go on the wire; cause goes to the log. The peer is unauthenticated,
// so public texts are fixed strings written here, never err.Error() of some
// lower layer.
type clientError struct {
	outcome Outcome // for the connection's log line and metrics
	code    string
	message string
	hint    string
	cause   error
}

func (e *clientError) Error() string {
	if e.cause != nil {
		return e.message + ": " + e.cause.Error()
	}
	return e.message
}

func (e *clientError) Unwrap() error { return e.cause }

// refuse builds a clientError.
func refuse(outcome Outcome, code, message, hint string, cause error) *clientError {
	return &clientError{outcome: outcome, code: code, message: message, hint: hint, cause: cause}
}

// silentError ends a connection without telling the client anything: a
// timeout, a failed TLS handshake, a cancel request (which never gets a
// reply), or a client that simply went away.
type silentError struct {
	outcome Outcome
	cause   error
	// drain closes with FIN after discarding what the client still sends
	// (netconn.LingerClose), as a server that had read it into a buffer
	// would, instead of the RST a close with unread bytes sends.
	drain bool
}

func (e *silentError) Error() string {
	if e.cause == nil {
		return e.outcome.String()
	}
	return e.outcome.String() + ": " + e.cause.Error()
}

func (e *silentError) Unwrap() error { return e.cause }

func silent(outcome Outcome, cause error) *silentError {
	return &silentError{outcome: outcome, cause: cause}
}

// abortWithError sends e as a FATAL ErrorResponse, then closes without
// an RST that could destroy it (netconn.Fatal).
func abortWithError(conn net.Conn, e *clientError) {
	netconn.Fatal(conn, e.code, e.message, e.hint)
}
