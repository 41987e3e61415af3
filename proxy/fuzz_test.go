package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/pgwarden/pgwarden/certs/certstest"
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
// requests, TLS, the encrypted startup) on arbitrary client bytes. It must
// return without panicking, and must never write more than one byte before
// a TLS handshake.
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
	for _, s := range seedPackets() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		conn := &memConn{r: bytes.NewReader(data)}
		sess := &session{raw: conn, start: time.Now()}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p, err := srv.negotiate(ctx, sess)
		if err == nil && p.kind != kindCancelRequest && p.kind != kindStartupMessage {
			t.Fatalf("negotiate returned packet kind %d", p.kind)
		}
		if err == nil && p.kind == kindStartupMessage && sess.tls == nil {
			t.Fatal("a StartupMessage was accepted without TLS")
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
