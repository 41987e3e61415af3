package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// SQLSTATEs pgwarden itself sends. Everything else a client sees comes from
// postgres verbatim.
const (
	codeInvalidAuthorization = "28000" // invalid_authorization_specification
	codeProtocolViolation    = "08P01" // protocol_violation
	codeFeatureNotSupported  = "0A000" // feature_not_supported
	codeConnectionFailure    = "08006" // connection_failure
	codeTooManyConnections   = "53300" // too_many_connections
	codeCannotConnectNow     = "57P03" // cannot_connect_now
)

// clientError is a refusal the client is told about. Only code, message and
// hint go on the wire; cause goes to the log. The peer is unauthenticated,
// so public texts are fixed strings written here, never err.Error() of some
// lower layer.
type clientError struct {
	outcome string // for the connection's log line and metrics
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
func refuse(outcome, code, message, hint string, cause error) *clientError {
	return &clientError{outcome: outcome, code: code, message: message, hint: hint, cause: cause}
}

// silentError ends a connection without telling the client anything: a
// timeout, a failed TLS handshake, a cancel request (which never gets a
// reply), or a client that simply went away.
type silentError struct {
	outcome string
	cause   error
}

func (e *silentError) Error() string {
	if e.cause == nil {
		return e.outcome
	}
	return e.outcome + ": " + e.cause.Error()
}

func (e *silentError) Unwrap() error { return e.cause }

func silent(outcome string, cause error) *silentError {
	return &silentError{outcome: outcome, cause: cause}
}

// encodeError renders a FATAL ErrorResponse for the client.
func encodeError(e *clientError) []byte {
	msg := &pgproto3.ErrorResponse{
		Severity:            "FATAL",
		SeverityUnlocalized: "FATAL",
		Code:                e.code,
		Message:             e.message,
		Hint:                e.hint,
	}
	buf, err := msg.Encode(nil)
	if err != nil {
		// Encode fails only on impossible lengths; our texts are constants.
		return nil
	}
	return buf
}

// abortWithError writes the ErrorResponse under a short deadline, half-closes
// so the client reads it before the connection goes, drains briefly, and
// closes. This is tlsrouter's Conn.abort: the client learns why, and a client
// that keeps sending cannot pin us.
func abortWithError(conn net.Conn, e *clientError) {
	_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
	if buf := encodeError(e); buf != nil {
		_, _ = conn.Write(buf)
	}
	lingerClose(conn)
}

// lingerClose sends FIN and discards what the client still sends, for at most
// half a second and 64 KiB, before closing. Closing with unread bytes in the
// socket would send RST, and an RST can destroy the error message still in
// flight to the client.
func lingerClose(conn net.Conn) {
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	_, _ = io.CopyN(io.Discard, conn, 64<<10)
	_ = conn.Close()
}

// isBenignNetErr reports errors that are part of normal connection life:
// the peer closed, reset, or we closed the conn ourselves.
func isBenignNetErr(err error) bool {
	return err == nil ||
		errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE)
}

// isTimeout reports a deadline expiry.
func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
