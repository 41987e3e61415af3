package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/pgwarden/pgwarden/internal/netconn"
)

// Request codes of the packets a client may send first (protocol.sgml,
// "Message Formats": SSLRequest, GSSENCRequest, CancelRequest).
const (
	sslRequestCode    = 80877103
	gssEncRequestCode = 80877104
	cancelRequestCode = 80877102

	// minStartupLen and maxStartupLen bound the length word of a startup
	// packet, which counts itself. Postgres refuses bodies over
	// MAX_STARTUP_PACKET_LENGTH (10000); we hold the whole packet to 10000.
	minStartupLen = 8
	maxStartupLen = 10000

	// A CancelRequest carries a 4-byte key in protocol 3.0 and up to 256
	// bytes in 3.2, so its packet is 16 to 264 bytes long.
	minCancelLen = 16
	maxCancelLen = 12 + 256

	// nameDataLen-1 is how much of a user or database name postgres keeps.
	nameDataLen = 64

	// Versions we relay; any other 3.x minor is forwarded so that postgres
	// answers NegotiateProtocolVersion itself (libpq's protocol "grease").
	protocolMajor = 3
)

// packetKind says what the first packet of a connection was.
type packetKind int

const (
	kindSSLRequest packetKind = iota
	kindGSSEncRequest
	kindCancelRequest
	kindStartupMessage
)

// startupParam is one name/value pair of a StartupMessage, in wire order.
type startupParam struct{ name, value string }

// startupPacket is a parsed first packet. raw holds the whole packet,
// length word included, for StartupMessage and CancelRequest: those bytes
// go to postgres verbatim, so it sees exactly what the client sent.
type startupPacket struct {
	kind    packetKind
	raw     []byte
	version uint32
	params  []startupParam

	cancelPID uint32
	cancelKey []byte
}

// param returns a startup parameter's value ("" if absent).
func (p *startupPacket) param(name string) string {
	for _, kv := range p.params {
		if kv.name == name {
			return kv.value
		}
	}
	return ""
}

// user and database are the names postgres will use: truncated to
// NAMEDATALEN-1 bytes, the database defaulting to the user
// (backend_startup.c ProcessStartupPacket).
func (p *startupPacket) user() string { return truncateName(p.param("user")) }

func (p *startupPacket) database() string {
	if db := p.param("database"); db != "" {
		return truncateName(db)
	}
	return p.user()
}

func truncateName(s string) string {
	if len(s) >= nameDataLen {
		return s[:nameDataLen-1]
	}
	return s
}

// errBadStartupLength ends a connection whose first packet's length word is
// out of range: closed without a reply, counted and logged, as postgres
// does (backend_startup.c ProcessStartupPacket reports "invalid length of
// startup packet" as a COMMERROR, to its own log only, and returns). A
// reply would also be wrong for what such bytes usually are: not a startup
// at all. node-postgres, told to end a connection it is still opening,
// queues its Terminate ('X', length 4) before its SSLRequest, so the first
// length word reads 0x58000000; postgres closes silently and the client
// ends cleanly, while an ErrorResponse in place of the 'S' or 'N' it waits
// for makes it throw.
func errBadStartupLength(length int32) error {
	return badLength(fmt.Errorf("invalid length of startup packet: %d", length))
}

// badLength is a bad_startup_length close. Postgres has read the bytes
// behind the length word into its buffer when it closes, so the client gets
// a FIN; closing with them unread would send an RST, which clients report
// as an error of their own.
func badLength(cause error) *silentError {
	return &silentError{outcome: OutcomeBadStartupLength, cause: cause, drain: true}
}

// errRequestLength answers an SSLRequest or GSSENCRequest whose length word
// is in range but not 8: the packet's contents are wrong, which postgres
// answers with a FATAL too.
var errRequestLength = refuse(OutcomeBadStartup, codeProtocolViolation, "invalid length of startup packet", "", nil)

// readStartupPacket reads one startup-phase packet with exact-length reads,
// so not one byte past it is consumed. A StartupMessage arriving while
// encrypted is false is refused right after its 8-byte header, before the
// declared length is read. Refusals come back as *clientError (to be sent)
// or *silentError (to be dropped).
func readStartupPacket(r io.Reader, encrypted bool) (*startupPacket, error) {
	var hdr [8]byte
	// The length comes first, alone: an absurd one is refused before we
	// wait for anything more.
	if n, err := io.ReadFull(r, hdr[:4]); err != nil {
		if n > 0 && errors.Is(err, io.ErrUnexpectedEOF) {
			// Part of a length word, then the end: postgres's "incomplete
			// startup packet", also closed without a reply. (No bytes at
			// all is a client that just left, as port probes do.)
			return nil, badLength(fmt.Errorf("incomplete startup packet: %d of 4 length bytes", n))
		}
		return nil, readErr(err)
	}
	length := int32(binary.BigEndian.Uint32(hdr[:4]))
	if length < minStartupLen || length > maxStartupLen {
		return nil, errBadStartupLength(length)
	}
	if _, err := io.ReadFull(r, hdr[4:8]); err != nil {
		return nil, readErr(err)
	}
	code := binary.BigEndian.Uint32(hdr[4:8])

	switch code {
	case sslRequestCode, gssEncRequestCode:
		if length != 8 {
			return nil, errRequestLength
		}
		if code == sslRequestCode {
			return &startupPacket{kind: kindSSLRequest}, nil
		}
		return &startupPacket{kind: kindGSSEncRequest}, nil
	case cancelRequestCode:
		if length < minCancelLen || length > maxCancelLen {
			return nil, silent(OutcomeCancelMalformed, fmt.Errorf("cancel request of %d bytes", length))
		}
		raw, err := readRest(r, hdr[:], int(length))
		if err != nil {
			return nil, err
		}
		return &startupPacket{
			kind:      kindCancelRequest,
			raw:       raw,
			cancelPID: binary.BigEndian.Uint32(raw[8:12]),
			cancelKey: raw[12:],
		}, nil
	}

	if major, minor := code>>16, code&0xffff; major != protocolMajor {
		return nil, refuse(OutcomeBadProtocol, codeFeatureNotSupported,
			fmt.Sprintf("unsupported frontend protocol %d.%d: server supports 3.0 to 3.2", major, minor), "", nil)
	}
	if !encrypted {
		return nil, errTLSRequired
	}
	raw, err := readRest(r, hdr[:], int(length))
	if err != nil {
		return nil, err
	}
	params, err := parseStartupParams(raw[8:])
	if err != nil {
		return nil, err
	}
	p := &startupPacket{kind: kindStartupMessage, raw: raw, version: code, params: params}
	if p.param("user") == "" {
		return nil, refuse(OutcomeBadStartup, codeInvalidAuthorization, "no PostgreSQL user name specified in startup packet", "", nil)
	}
	return p, nil
}

// errTLSRequired is the answer to a plaintext StartupMessage: what postgres
// says for a hostssl-only pg_hba, plus how to connect.
var errTLSRequired = refuse(OutcomeTLSRequired, codeInvalidAuthorization,
	"TLS is required: this server accepts only encrypted connections",
	"Connect with sslmode=require (or verify-full with the server's CA as sslrootcert).", nil)

// readRest reads the packet body after its 8-byte header.
func readRest(r io.Reader, hdr []byte, length int) ([]byte, error) {
	raw := make([]byte, length)
	copy(raw, hdr[:8])
	if _, err := io.ReadFull(r, raw[8:]); err != nil {
		return nil, readErr(err)
	}
	return raw, nil
}

// parseStartupParams checks the NUL-separated name/value list and its final
// terminator. A repeated name is refused: postgres keeps the last value, and
// the role we authorize and log must be the role postgres logs in.
func parseStartupParams(body []byte) ([]startupParam, error) {
	bad := func(why string) error {
		return refuse(OutcomeBadStartup, codeProtocolViolation, "invalid startup packet layout: "+why, "", nil)
	}
	var params []startupParam
	for {
		name, rest, ok := bytes.Cut(body, []byte{0})
		if !ok {
			return nil, bad("expected terminator as last byte")
		}
		if len(name) == 0 {
			if len(rest) != 0 {
				return nil, bad("data after terminator")
			}
			return params, nil
		}
		value, rest, ok := bytes.Cut(rest, []byte{0})
		if !ok {
			return nil, bad("missing value")
		}
		for _, kv := range params {
			if kv.name == string(name) {
				return nil, bad("duplicate parameter")
			}
		}
		params = append(params, startupParam{name: string(name), value: string(value)})
		body = rest
	}
}

// readErr classifies a failed read during the startup phase.
func readErr(err error) error {
	if netconn.IsTimeout(err) {
		return silent(OutcomeTimeout, err)
	}
	return silent(OutcomeClientGone, err)
}
