package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgwarden/pgwarden/internal/certstest"
)

// seedPackets are real first packets and near-misses.
func seedPackets() [][]byte {
	pkt := func(code uint32, body ...byte) []byte {
		b := binary.BigEndian.AppendUint32(nil, uint32(8+len(body)))
		b = binary.BigEndian.AppendUint32(b, code)
		return append(b, body...)
	}
	startup := pkt(3<<16, []byte("user\x00alice\x00database\x00app\x00\x00")...)
	return [][]byte{
		pkt(sslRequestCode),
		pkt(gssEncRequestCode),
		append(pkt(gssEncRequestCode), pkt(sslRequestCode)...),
		append(pkt(gssEncRequestCode), pkt(gssEncRequestCode)...),
		pkt(cancelRequestCode, 0, 0, 0, 1, 1, 2, 3, 4),
		startup,
		pkt(3<<16|2, []byte("user\x00a\x00\x00")...),
		pkt(3<<16|9999, []byte("user\x00a\x00_pq_.x\x00y\x00\x00")...),
		pkt(2 << 16),
		startup[:len(startup)-1],
		append(pkt(sslRequestCode), startup...),
		{0x16, 3, 1, 0, 5, 1, 0, 0, 1, 0},
		{0, 0, 0, 0},
		{0xff, 0xff, 0xff, 0xff},
		{0, 0, 0x27, 0x11},
		{},
	}
}

// FuzzReadStartupPacket drives the startup packet parser with arbitrary
// bytes: it must never panic, never read past its declared length, and
// return either a packet or a refusal.
func FuzzReadStartupPacket(f *testing.F) {
	for _, s := range seedPackets() {
		f.Add(s, true)
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, data []byte, encrypted bool) {
		r := bytes.NewReader(data)
		p, err := readStartupPacket(r, encrypted)
		consumed := len(data) - r.Len()
		if err != nil {
			var ce *clientError
			var se *silentError
			if !errors.As(err, &ce) && !errors.As(err, &se) {
				t.Fatalf("unclassified error %T: %v", err, err)
			}
			if consumed > maxStartupLen {
				t.Fatalf("read %d bytes before refusing", consumed)
			}
			return
		}
		if p.kind == kindStartupMessage || p.kind == kindCancelRequest {
			if len(p.raw) != consumed {
				t.Fatalf("packet of %d bytes but consumed %d", len(p.raw), consumed)
			}
		} else if consumed != 8 {
			t.Fatalf("negotiation request consumed %d bytes", consumed)
		}
		if p.kind == kindStartupMessage && (p.user() == "" || !encrypted) {
			t.Fatalf("accepted a startup without user or without TLS")
		}
	})
}

// memConn is a net.Conn whose reads come from a byte slice and whose writes
// are discarded: negotiate can run without a peer that might block.
type memConn struct {
	r   *bytes.Reader
	out bytes.Buffer
}

func (c *memConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *memConn) Write(p []byte) (int, error)      { return c.out.Write(p) }
func (c *memConn) Close() error                     { return nil }
func (c *memConn) LocalAddr() net.Addr              { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5432} }
func (c *memConn) RemoteAddr() net.Addr             { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000} }
func (c *memConn) SetDeadline(time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzNegotiate runs the whole pre-authentication negotiation (encryption
// requests, TLS, the encrypted startup) on arbitrary client bytes, and a
// CancelRequest through its handling (policy, rate limit, key lookup). It
// must return without panicking, and must never write more than one byte
// before a TLS handshake.
func FuzzNegotiate(f *testing.F) {
	ca := certstest.NewCA(f)
	certPEM, keyPEM := ca.Server(f, "localhost")
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		f.Fatal(err)
	}
	srv, err := New(Config{
		Upstream: Upstream{Network: "tcp", Address: "127.0.0.1:1"},
		TLS:      &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{alpnPostgres}},
	})
	if err != nil {
		f.Fatal(err)
	}
	// The seed cancel (pid 1, key 1 2 3 4) names a live session, whose
	// upstream refuses the forwarded cancel (nothing listens on port 1).
	srv.cfg.Cancels.register(1, []byte{1, 2, 3, 4}, srv.cfg.Upstream)
	for _, s := range seedPackets() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		conn := &memConn{r: bytes.NewReader(data)}
		sess := &session{tun: srv.tun.Load(), raw: conn, start: time.Now(), remote: netip.MustParseAddr("127.0.0.1")}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p, err := srv.negotiate(ctx, sess)
		if err == nil && p.kind != kindCancelRequest && p.kind != kindStartupMessage {
			t.Fatalf("negotiate returned packet kind %d", p.kind)
		}
		if err == nil && p.kind == kindStartupMessage && sess.tls == nil {
			t.Fatal("a StartupMessage was accepted without TLS")
		}
		if err == nil && p.kind == kindCancelRequest {
			// A cancel never gets a reply: every outcome is silent.
			var se *silentError
			if cerr := srv.forwardCancel(ctx, sess, p); !errors.As(cerr, &se) {
				t.Fatalf("cancel handling returned %v, not a silent outcome", cerr)
			}
		}
		if len(data) > 0 && data[0] == 0x16 {
			return // direct TLS: everything we wrote was TLS
		}
		// Before TLS we answer only 'N' (to GSSENCRequest), then either 'S'
		// (and from there on, TLS) or an ErrorResponse 'E'.
		out := conn.out.Bytes()
		i := 0
		for i < len(out) && out[i] == 'N' {
			i++
		}
		if i < len(out) && out[i] != 'S' && out[i] != 'E' {
			t.Fatalf("wrote %q before TLS", out)
		}
	})
}

// FuzzAuthResponse feeds arbitrary client bytes as the answer to each
// kind of authentication request, through the same frameReader, size cap
// and SetAuthType dance as authExchange. It must classify every input (relay it,
// refuse it, or call it abandoned) without panicking or reading past one
// message.
func FuzzAuthResponse(f *testing.F) {
	requests := []pgproto3.BackendMessage{
		&pgproto3.AuthenticationCleartextPassword{},
		&pgproto3.AuthenticationMD5Password{Salt: [4]byte{1, 2, 3, 4}},
		&pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256"}},
		&pgproto3.AuthenticationSASLContinue{Data: []byte("r=abc,s=c2FsdA==,i=4096")},
		&pgproto3.AuthenticationGSS{},
		&pgproto3.AuthenticationGSSContinue{Data: []byte{1, 2}},
	}
	encode := func(m pgproto3.FrontendMessage) []byte {
		b, err := m.Encode(nil)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	seeds := [][]byte{
		encode(&pgproto3.PasswordMessage{Password: "secret"}),
		encode(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=abc")}),
		encode(&pgproto3.SASLResponse{Data: []byte("c=biws,r=abc,p=xyz")}),
		encode(&pgproto3.Terminate{}),
		encode(&pgproto3.Query{String: "SELECT 1"}),
		{'p', 0, 0, 0, 4},
		{'p', 0x7f, 0xff, 0xff, 0xff},
		{'p', 0, 0, 0, 9, 'S', 'C', 'R', 'A'},
		{},
	}
	for i := range requests {
		for _, s := range seeds {
			f.Add(uint8(i), s)
		}
	}
	srv, err := New(Config{Upstream: Upstream{Network: "tcp", Address: "127.0.0.1:1"}, TLS: &tls.Config{}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		req, err := requests[int(which)%len(requests)].Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		fe := pgproto3.NewFrontend(bytes.NewReader(req), io.Discard)
		if _, err := fe.Receive(); err != nil {
			t.Fatal(err)
		}
		client := bytes.NewReader(data)
		be := pgproto3.NewBackend(newFrameReader(client), io.Discard)
		be.SetMaxBodyLen(defaultAuthMessageMaxLen)
		sess := &session{tun: srv.tun.Load(), start: time.Now()}
		err = srv.readAuthResponse(sess, fe, be)
		if err != nil {
			var ce *clientError
			var se *silentError
			if !errors.As(err, &ce) && !errors.As(err, &se) {
				t.Fatalf("unclassified error %T: %v", err, err)
			}
			return
		}
		// Relayed: exactly one message was consumed, no more.
		if consumed := len(data) - client.Len(); consumed < 5 ||
			consumed != 1+int(binary.BigEndian.Uint32(data[1:5])) {
			t.Fatalf("relayed after consuming %d bytes of %d", consumed, len(data))
		}
	})
}
