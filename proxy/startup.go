package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"time"

	"github.com/pgwarden/pgwarden/internal/netconn"
)

// tlsRecordHandshake is the first byte of a TLS ClientHello record. A
// startup packet's first byte is the high byte of a length of at most 10000,
// so it can never be 0x16: that is how PostgreSQL 17 tells direct TLS apart
// (backend_startup.c ProcessSSLStartup).
const tlsRecordHandshake = 0x16

// alpnPostgres is the IANA-registered ALPN protocol id for PostgreSQL. Direct
// TLS requires it: without ALPN a client could be talking to us because some
// other protocol's TLS got misdirected here.
const alpnPostgres = "postgresql"

var (
	errSecondGSSRequest = refuse(OutcomeProtocolViolation, codeProtocolViolation,
		"duplicate GSSENCRequest: at most one encryption request is allowed before TLS", "", nil)
	errNegotiationInsideTLS = refuse(OutcomeProtocolViolation, codeProtocolViolation,
		"encryption request received over an encrypted connection", "", nil)
	errDirectTLSWithoutALPN = refuse(OutcomeProtocolViolation, codeProtocolViolation,
		`direct TLS connection without ALPN protocol "postgresql"`,
		"Use sslnegotiation=postgres, or a client that offers ALPN \"postgresql\" (libpq 17+).", nil)
)

// negotiate takes a fresh admitted connection through encryption
// negotiation to its first packet over TLS: a StartupMessage or a
// CancelRequest. It may also return a plaintext CancelRequest (psql's Ctrl-C
// never encrypts). On return sess.tls is set whenever TLS was established, so
// an error can be sent over it.
func (s *Server) negotiate(ctx context.Context, sess *session) (*startupPacket, error) {
	raw := sess.raw

	// Read one byte alone: 0x16 means direct TLS, anything else is the
	// first byte of a startup packet's length.
	var first [1]byte
	if _, err := io.ReadFull(raw, first[:]); err != nil {
		return nil, readErr(err)
	}
	if first[0] == tlsRecordHandshake {
		sess.tlsMode = "direct"
		if err := s.handshake(ctx, sess, &prefixConn{Conn: raw, prefix: first[:]}); err != nil {
			return nil, err
		}
		if sess.tls.ConnectionState().NegotiatedProtocol != alpnPostgres {
			return nil, errDirectTLSWithoutALPN
		}
		return s.readEncryptedStartup(sess)
	}

	var r io.Reader = io.MultiReader(&prefixConn{prefix: first[:]}, raw)
	gssRefused := false
	for {
		p, err := readStartupPacket(r, false)
		if err != nil {
			return nil, err
		}
		r = raw // the replayed first byte is spent
		switch p.kind {
		case kindCancelRequest:
			return p, nil
		case kindGSSEncRequest:
			// We do not offer GSS encryption: answer 'N', and only once
			// (a negotiation loop is CVE-2026-6479's recursion DoS).
			if gssRefused {
				return nil, errSecondGSSRequest
			}
			gssRefused = true
			if _, err := raw.Write([]byte{'N'}); err != nil {
				return nil, silent(OutcomeClientGone, err)
			}
		case kindSSLRequest:
			// Exactly one byte, then TLS. We have read exactly the 8 bytes
			// of the SSLRequest, so any plaintext the client pipelined
			// behind it is still in the socket and will be fed to the TLS
			// handshake, which rejects it: injected bytes are never taken
			// as part of the encrypted session (CVE-2021-23214).
			if _, err := raw.Write([]byte{'S'}); err != nil {
				return nil, silent(OutcomeClientGone, err)
			}
			sess.tlsMode = "sslrequest"
			if err := s.handshake(ctx, sess, raw); err != nil {
				return nil, err
			}
			return s.readEncryptedStartup(sess)
		default:
			// readStartupPacket refuses a plaintext StartupMessage itself.
			return nil, errTLSRequired
		}
	}
}

// handshake runs the TLS server handshake under the connection's deadline.
func (s *Server) handshake(ctx context.Context, sess *session, conn net.Conn) error {
	// The relay's conn sits under crypto/tls from the start: the session
	// keeps its TLS state when it is handed over after authentication.
	tconn := tls.Server(s.relay.Wrap(conn), sess.tun.TLS)
	if err := tconn.HandshakeContext(ctx); err != nil {
		if netconn.IsTimeout(err) || errors.Is(err, context.DeadlineExceeded) {
			return silent(OutcomeTimeout, err)
		}
		return silent(OutcomeTLSFailed, err)
	}
	sess.tls = tconn
	cs := tconn.ConnectionState()
	sess.tlsVersion = tls.VersionName(cs.Version)
	sess.tlsCipher = tls.CipherSuiteName(cs.CipherSuite)
	s.cfg.Metrics.HandshakeCompleted(s.cfg.Name, time.Since(sess.start))
	return nil
}

// readEncryptedStartup reads the first packet inside TLS. Only a
// StartupMessage or a CancelRequest may come now; another SSLRequest or a
// GSSENCRequest is a protocol violation (pgbouncer: "SSL req inside SSL";
// CVE-2026-14681 for GSS after direct TLS).
func (s *Server) readEncryptedStartup(sess *session) (*startupPacket, error) {
	p, err := readStartupPacket(sess.tls, true)
	if err != nil {
		return nil, err
	}
	switch p.kind {
	case kindStartupMessage, kindCancelRequest:
		return p, nil
	default:
		return nil, errNegotiationInsideTLS
	}
}

// prefixConn replays bytes already read before reading from Conn. With a
// nil Conn it is just the prefix.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	if c.Conn == nil {
		return 0, io.EOF
	}
	return c.Conn.Read(p)
}
