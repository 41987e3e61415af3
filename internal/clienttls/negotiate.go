package clienttls

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"unicode"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgwarden/pgwarden/internal/netconn"
)

// maxPreTLSErrorLen bounds an ErrorResponse a server sends instead of
// answering the SSLRequest: libpq accepts at most 30000 bytes for an error
// before authentication (fe-connect.c), and so do we.
const maxPreTLSErrorLen = 30000

// ResetAtAccept explains a connection that the server reset before sending
// anything: that is how pgwarden (and most firewalls that "reject with
// tcp-reset") refuse a source, so the user should look at allowlists and
// bans rather than at TLS or passwords.
const ResetAtAccept = "reset before any byte came back: a reset right after connect is what an allowlist or a ban looks like " +
	"(pgwarden closes sources outside its --allow list, or banned, this way; see `pgwarden bans list` on the gateway)"

// ServerError is an ErrorResponse a server sent before TLS, instead of
// answering the SSLRequest. Nothing authenticates it yet (CVE-2024-10977:
// libpq no longer shows its text), so callers must present it as unverified.
type ServerError struct {
	Code    string
	Message string
}

// Error marks the text as unverified.
func (e *ServerError) Error() string {
	return fmt.Sprintf("unverified server error (sent before TLS) %s: %s", e.Code, e.Message)
}

// RequestTLS sends an SSLRequest on conn and reads the answer under conn's
// deadline. It returns the reply byte ('S', 'N', 'E', or whatever came, 0
// if nothing did) and nil only after an 'S' with nothing behind it.
func RequestTLS(conn net.Conn) (byte, error) {
	req, err := (&pgproto3.SSLRequest{}).Encode(nil)
	if err != nil {
		return 0, layerErr(LayerNegotiate, err, "encoding the SSLRequest")
	}
	if _, err := conn.Write(req); err != nil {
		return 0, firstReadError(err, "sending the SSLRequest")
	}
	// Exactly one byte (pgconn's startTLS does the same): whatever the
	// server sends after it stays in the socket for the check below and,
	// failing that, for the TLS handshake, which cannot take it for
	// encrypted data.
	var reply [1]byte
	if _, err := io.ReadFull(conn, reply[:]); err != nil {
		return 0, firstReadError(err, "reading the answer to the SSLRequest")
	}
	switch reply[0] {
	case 'S':
		if Pending(conn) {
			return 'S', layerErr(LayerNegotiate, nil,
				"received unencrypted data after SSL response: the server (or something in between) sent bytes after its 'S' and before TLS; refusing them (CVE-2021-23222)")
		}
		return 'S', nil
	case 'N':
		return 'N', layerErr(LayerNegotiate, nil,
			"the server does not offer TLS: it answered 'N' to the SSLRequest (a postgres with ssl=off, or a pooler without TLS; pgwarden always answers 'S')")
	case 'E':
		se, err := readPreTLSError(conn)
		if err != nil {
			return 'E', layerErr(LayerNegotiate, err, "the server answered the SSLRequest with a malformed error message")
		}
		return 'E', &Error{Layer: LayerNegotiate, Msg: "the server sent an error instead of answering the SSLRequest", Err: se}
	default:
		return reply[0], layerErr(LayerNegotiate, nil,
			"not a PostgreSQL server: it answered %s to the SSLRequest (expected 'S' or 'N')", quoteByte(reply[0]))
	}
}

// readPreTLSError reads the rest of an ErrorResponse whose 'E' was already
// read: a 4-byte length, bounded, then the fields.
func readPreTLSError(conn net.Conn) (*ServerError, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return nil, fmt.Errorf("reading the error's length: %w", err)
	}
	n := int64(int32(binary.BigEndian.Uint32(hdr[:])))
	if n < 4 || n > maxPreTLSErrorLen {
		return nil, fmt.Errorf("error message length %d outside 4..%d", n, maxPreTLSErrorLen)
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(conn, body); err != nil {
		return nil, fmt.Errorf("reading the error's fields: %w", err)
	}
	var er pgproto3.ErrorResponse
	if err := er.Decode(body); err != nil {
		return nil, fmt.Errorf("decoding the error: %w", err)
	}
	return &ServerError{Code: Sanitize(er.Code, 5), Message: Sanitize(er.Message, 300)}, nil
}

// firstReadError attributes a failure of the first exchange on a fresh
// connection: a reset before any byte came back is the tcp layer (an
// allowlist or a ban); anything else is the negotiation.
func firstReadError(err error, doing string) error {
	switch {
	case netconn.IsReset(err):
		return layerErr(LayerTCP, err, "connected, then %s", ResetAtAccept)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return layerErr(LayerNegotiate, nil, "the server closed the connection without answering the SSLRequest")
	case netconn.IsTimeout(err):
		return layerErr(LayerNegotiate, nil, "no answer to the SSLRequest in time (is it a PostgreSQL server? for one that speaks only direct TLS use --direct-tls)")
	default:
		return layerErr(LayerNegotiate, err, "%s", doing)
	}
}

// Sanitize makes a string a server sent safe to print on one line: control
// and non-graphic characters become '?', and it is cut to max runes.
func Sanitize(s string, max int) string {
	var b strings.Builder
	n := 0
	for _, r := range s {
		if n == max {
			b.WriteString("…")
			break
		}
		if !unicode.IsGraphic(r) {
			r = '?'
		}
		b.WriteRune(r)
		n++
	}
	return b.String()
}

// quoteByte prints a reply byte for a message: 'H' for printable ASCII,
// 0x16 otherwise.
func quoteByte(b byte) string {
	if b >= 0x20 && b < 0x7f {
		return fmt.Sprintf("%q (0x%02x)", rune(b), b)
	}
	return fmt.Sprintf("0x%02x", b)
}
