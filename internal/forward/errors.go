package forward

import (
	"net"

	"github.com/pgwarden/pgwarden/internal/netconn"
)

// SQLSTATEs sent to local clients.
const (
	codeUnableToConnect   = "08001" // sqlclient_unable_to_establish_sqlconnection
	codeConnectionFailure = "08006" // connection_failure
	codeTooManyConns      = "53300" // too_many_connections
	codeCannotConnectNow  = "57P03" // cannot_connect_now
)

// sendFatal writes a FATAL ErrorResponse (none when quiet), then
// half-closes and briefly drains before closing, so the client reads the
// message instead of an RST (closing with unread bytes would send one).
func sendFatal(conn net.Conn, e *fatalError) {
	if e.quiet {
		netconn.LingerClose(conn)
		return
	}
	netconn.Fatal(conn, e.code, e.message, e.hint)
}
