package forward

import (
	"io"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// SQLSTATEs sent to local clients.
const (
	codeUnableToConnect   = "08001" // sqlclient_unable_to_establish_sqlconnection
	codeConnectionFailure = "08006" // connection_failure
	codeTooManyConns      = "53300" // too_many_connections
	codeCannotConnectNow  = "57P03" // cannot_connect_now
)

// sendFatal writes a FATAL ErrorResponse under a short deadline, then
// half-closes and briefly drains before closing, so the client reads the
// message instead of an RST (closing with unread bytes would send one).
func sendFatal(conn net.Conn, e *fatalError) {
	if !e.quiet {
		msg := &pgproto3.ErrorResponse{
			Severity:            "FATAL",
			SeverityUnlocalized: "FATAL",
			Code:                e.code,
			Message:             e.message,
			Hint:                e.hint,
		}
		if buf, err := msg.Encode(nil); err == nil {
			_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = conn.Write(buf)
		}
	}
	lingerClose(conn)
}

// lingerClose sends FIN and discards what the peer still sends, for at most
// half a second and 64 KiB, then closes.
func lingerClose(conn net.Conn) {
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	_, _ = io.CopyN(io.Discard, conn, 64<<10)
	_ = conn.Close()
}
