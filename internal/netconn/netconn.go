// Package netconn ends connections the way postgres clients expect and
// tells the network errors of a connection's normal life from real faults.
// The gateway (proxy), its relays and the client-side forwarder share it.
package netconn

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Bounds of LingerClose: enough for a client to read an error message and
// hang up, too little for one that keeps sending to pin the goroutine.
const (
	lingerTime  = 500 * time.Millisecond
	lingerBytes = 64 << 10
	// fatalWriteTime bounds the write of a FATAL: a client that does not
	// read it is not waited for.
	fatalWriteTime = time.Second
)

// Fatal writes a FATAL ErrorResponse with code, message and hint under a
// short write deadline, then LingerCloses the connection. A failed write is
// not reported: the connection is ending either way. This is tlsrouter's
// Conn.abort: the client learns why, and a client that keeps sending
// cannot hold us.
func Fatal(conn net.Conn, code, message, hint string) {
	msg := &pgproto3.ErrorResponse{
		Severity:            "FATAL",
		SeverityUnlocalized: "FATAL",
		Code:                code,
		Message:             message,
		Hint:                hint,
	}
	// Encode fails only on impossible lengths; callers' texts are short.
	if buf, err := msg.Encode(nil); err == nil {
		_ = conn.SetWriteDeadline(time.Now().Add(fatalWriteTime))
		_, _ = conn.Write(buf)
	}
	LingerClose(conn)
}

// LingerClose sends FIN and discards what the peer still sends, for at most
// half a second and 64 KiB, before closing. Closing with unread bytes in the
// socket would send RST, and an RST can destroy the error message still in
// flight to the peer.
func LingerClose(conn net.Conn) {
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = conn.SetReadDeadline(time.Now().Add(lingerTime))
	_, _ = io.CopyN(io.Discard, conn, lingerBytes)
	_ = conn.Close()
}

// ResetClose closes with SO_LINGER 0: the peer gets RST, nothing is
// written, and no TIME_WAIT state is kept (a flood of refused sources
// leaves nothing behind).
func ResetClose(c net.Conn) {
	if lc, ok := c.(interface{ SetLinger(sec int) error }); ok {
		_ = lc.SetLinger(0)
	}
	_ = c.Close()
}

// IsBenign reports errors that are part of a connection's normal life: the
// peer closed or reset it, or we closed it ourselves.
func IsBenign(err error) bool {
	return err == nil ||
		errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) ||
		IsReset(err)
}

// IsReset reports a connection reset (or a write into a reset connection).
func IsReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// IsTimeout reports a deadline expiry.
func IsTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
