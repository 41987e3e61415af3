package forward

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Request codes of the startup phase (protocol.sgml, "Message Formats").
// pgproto3 keeps its copies unexported.
const (
	sslRequestCode    = 80877103
	gssEncRequestCode = 80877104
	cancelRequestCode = 80877102
)

// Startup packet bounds: a length word and a code at least, and at most
// postgres's MAX_STARTUP_PACKET_LENGTH (pqcomm.h), which pgproto3 applies too.
const (
	minStartupLen = 8
	maxStartupLen = 10000
)

// tlsRecordHandshake is the first byte of a TLS ClientHello: a local client
// trying direct TLS. A startup length's first byte can never be 0x16.
const tlsRecordHandshake = 0x16

// localStartup is what a local client's negotiation ended with: a
// StartupMessage to forward as it came, or a CancelRequest.
type localStartup struct {
	startup []byte // the whole packet, length word included
	cancel  *pgproto3.CancelRequest
}

// fatalError is a refusal the local client is told about in a FATAL
// ErrorResponse. Local clients are the user's own tools, so the message may
// carry the cause in full.
type fatalError struct {
	code    string
	message string
	hint    string
	quiet   bool // close without an ErrorResponse (the client would not parse one)
}

func (e *fatalError) Error() string { return e.code + " " + e.message }

func protocolViolation(format string, args ...any) *fatalError {
	return &fatalError{code: "08P01", message: "pgwarden connect: " + fmt.Sprintf(format, args...)}
}

// readLocalStartup reads a local client's packets up to its StartupMessage
// or CancelRequest, answering 'N' to one SSLRequest and one GSSENCRequest:
// the local leg is plaintext by design, and libpq's sslmode=prefer (the
// default) and gssencmode=prefer fall back to it. A second request of either
// kind is a protocol violation (a negotiation loop is CVE-2026-6479's
// recursion DoS on the server side). rw is read frame-exactly: nothing past
// the last packet is consumed.
func readLocalStartup(rw io.ReadWriter) (*localStartup, error) {
	sslRefused, gssRefused := false, false
	for {
		pkt, err := readStartupPacket(rw)
		if err != nil {
			return nil, err
		}
		code := binary.BigEndian.Uint32(pkt[4:8])
		switch {
		case code == sslRequestCode:
			if err := refuseEncryption(rw, &sslRefused, "SSLRequest"); err != nil {
				return nil, err
			}
		case code == gssEncRequestCode:
			if err := refuseEncryption(rw, &gssRefused, "GSSENCRequest"); err != nil {
				return nil, err
			}
		case code == cancelRequestCode:
			var cr pgproto3.CancelRequest
			if err := cr.Decode(pkt[4:]); err != nil {
				return nil, protocolViolation("malformed CancelRequest: %v", err)
			}
			return &localStartup{cancel: &cr}, nil
		case code>>16 == 3:
			// Any 3.x: a newer minor version (libpq's "grease") is the
			// gateway's and postgres's to negotiate, so it is forwarded.
			return &localStartup{startup: pkt}, nil
		default:
			return nil, protocolViolation("unsupported frontend protocol %d.%d: use protocol 3", code>>16, code&0xffff)
		}
	}
}

// refuseEncryption answers an encryption request 'N', once per kind.
func refuseEncryption(w io.Writer, refused *bool, name string) error {
	if *refused {
		return protocolViolation("duplicate %s", name)
	}
	*refused = true
	if _, err := w.Write([]byte{'N'}); err != nil {
		return fmt.Errorf("answering the %s: %w", name, err)
	}
	return nil
}

// readStartupPacket reads one length-prefixed startup-phase packet exactly.
func readStartupPacket(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:1]); err != nil {
		return nil, fmt.Errorf("reading the startup packet: %w", err)
	}
	if hdr[0] == tlsRecordHandshake {
		return nil, &fatalError{quiet: true, code: "08P01",
			message: "local client tried direct TLS: the local leg is plaintext (use sslmode=disable or prefer, sslnegotiation=postgres)"}
	}
	if _, err := io.ReadFull(r, hdr[1:]); err != nil {
		return nil, fmt.Errorf("reading the startup packet: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n < minStartupLen || n > maxStartupLen {
		return nil, protocolViolation("invalid startup packet length %d (want %d..%d)", n, minStartupLen, maxStartupLen)
	}
	pkt := make([]byte, n)
	copy(pkt, hdr[:])
	if _, err := io.ReadFull(r, pkt[4:]); err != nil {
		return nil, fmt.Errorf("reading the startup packet: %w", err)
	}
	return pkt, nil
}
