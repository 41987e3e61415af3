package proxyproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/proxyproto/pptest"
)

// sslRequest is what a postgres client sends first; it stands for "the
// bytes after the header", which must still be in the socket afterwards.
var sslRequest = []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}

// tcpPair returns both ends of a real loopback TCP connection.
func tcpPair(t testing.TB) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	r := <-ch
	require.NoError(t, r.err)
	t.Cleanup(func() { client.Close(); r.c.Close() })
	return client, r.c
}

// v2 builds a v2 header by hand: command, family byte, then the body.
func v2(cmd, fam byte, body []byte) []byte {
	b := append([]byte{}, pp.SIGV2...)
	b = append(b, 0x20|cmd, fam)
	b = binary.BigEndian.AppendUint16(b, uint16(len(body)))
	return append(b, body...)
}

// v4body is a v2 TCPv4 address block.
func v4body(src, dst string, sport, dport uint16) []byte {
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	b := append(s[:], d[:]...)
	b = binary.BigEndian.AppendUint16(b, sport)
	return binary.BigEndian.AppendUint16(b, dport)
}

// v6body is a v2 TCPv6 address block.
func v6body(src, dst string, sport, dport uint16) []byte {
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	b := append(s[:], d[:]...)
	b = binary.BigEndian.AppendUint16(b, sport)
	return binary.BigEndian.AppendUint16(b, dport)
}

// formatted renders a header with go-proxyproto's own writer, to check that
// what real senders produce is read.
var formatted = pptest.Header

func withTLVs(t testing.TB, base []byte, tlvs []pp.TLV) []byte {
	t.Helper()
	h, err := pp.Read(bufioReader(base))
	require.NoError(t, err)
	require.NoError(t, h.SetTLVs(tlvs))
	b, err := h.Format()
	require.NoError(t, err)
	return b
}

func TestReadHeaderValid(t *testing.T) {
	t.Parallel()
	ap := netip.MustParseAddrPort
	tests := []struct {
		name   string
		header []byte
		want   Header // Len is filled from the header
	}{
		{"v1 tcp4", []byte("PROXY TCP4 127.0.0.50 10.0.0.1 51234 5432\r\n"),
			Header{Version: 1, Source: ap("127.0.0.50:51234"), Destination: ap("10.0.0.1:5432")}},
		{"v1 tcp6", []byte("PROXY TCP6 2001:db8::7 2001:db8::1 40000 5432\r\n"),
			Header{Version: 1, Source: ap("[2001:db8::7]:40000"), Destination: ap("[2001:db8::1]:5432")}},
		{"v1 tcp6 v4-mapped source is unmapped", []byte("PROXY TCP6 ::ffff:192.0.2.9 ::1 1 2\r\n"),
			Header{Version: 1, Source: ap("192.0.2.9:1"), Destination: ap("[::1]:2")}},
		{"v1 longest line", []byte("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"),
			Header{Version: 1, Source: ap("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"), Destination: ap("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535")}},
		{"v1 unknown is local", []byte("PROXY UNKNOWN\r\n"), Header{Version: 1, Local: true}},
		{"v1 unknown with addresses is local", []byte("PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n"), Header{Version: 1, Local: true}},
		{"v1 from go-proxyproto", formatted(t, 1, "198.51.100.4:1111", "203.0.113.1:5432"),
			Header{Version: 1, Source: ap("198.51.100.4:1111"), Destination: ap("203.0.113.1:5432")}},
		{"v2 tcp4", v2(1, 0x11, v4body("127.0.0.50", "127.0.0.1", 51234, 5432)),
			Header{Version: 2, Source: ap("127.0.0.50:51234"), Destination: ap("127.0.0.1:5432")}},
		{"v2 tcp6", v2(1, 0x21, v6body("2001:db8::7", "2001:db8::1", 40000, 5432)),
			Header{Version: 2, Source: ap("[2001:db8::7]:40000"), Destination: ap("[2001:db8::1]:5432")}},
		{"v2 tcp6 v4-mapped source is unmapped", v2(1, 0x21, v6body("::ffff:192.0.2.9", "::1", 1, 2)),
			Header{Version: 2, Source: ap("192.0.2.9:1"), Destination: ap("[::1]:2")}},
		{"v2 from go-proxyproto", formatted(t, 2, "[2001:db8::9]:7", "[2001:db8::1]:5432"),
			Header{Version: 2, Source: ap("[2001:db8::9]:7"), Destination: ap("[2001:db8::1]:5432")}},
		{"v2 with TLVs", withTLVs(t, v2(1, 0x11, v4body("192.0.2.1", "192.0.2.2", 3, 4)), []pp.TLV{
			{Type: pp.PP2_TYPE_AUTHORITY, Value: []byte("db.example.com")},
			{Type: pp.PP2_TYPE_NOOP, Value: make([]byte, 300)},
		}), Header{Version: 2, Source: ap("192.0.2.1:3"), Destination: ap("192.0.2.2:4")}},
		{"v2 local unspec", v2(0, 0x00, nil), Header{Version: 2, Local: true}},
		{"v2 local with addresses", v2(0, 0x11, v4body("192.0.2.1", "192.0.2.2", 3, 4)), Header{Version: 2, Local: true}},
		{"v2 local with a short block is skipped", v2(0, 0x11, []byte{1, 2, 3}), Header{Version: 2, Local: true}},
		{"v2 local with only TLVs", v2(0, 0x00, []byte{byte(pp.PP2_TYPE_NOOP), 0, 2, 9, 9}), Header{Version: 2, Local: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			want := tc.want
			want.Len = len(tc.header)
			for _, transport := range []string{"tcp", "pipe"} {
				var client, server net.Conn
				if transport == "tcp" {
					client, server = tcpPair(t)
				} else {
					client, server = net.Pipe()
					t.Cleanup(func() { client.Close(); server.Close() })
				}
				// The header and the client's first message in one write,
				// as a balancer forwarding a fast client produces them.
				go func() { _, _ = client.Write(append(append([]byte{}, tc.header...), sslRequest...)) }()
				got, err := ReadHeader(server, time.Now().Add(10*time.Second))
				require.NoError(t, err, transport)
				if got != want {
					t.Fatalf("%s: got %+v, want %+v", transport, got, want)
				}
				// Frame-exact: the next bytes are still in the connection.
				requireNext(t, server, sslRequest)
			}
		})
	}
}

// requireNext reads len(want) bytes from c and compares them.
func requireNext(t testing.TB, c net.Conn, want []byte) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	got := make([]byte, len(want))
	_, err := io.ReadFull(c, got)
	require.NoError(t, err)
	if !bytes.Equal(got, want) {
		t.Fatalf("bytes after the header: got %q, want %q", got, want)
	}
}

// TestReadHeaderSplitWrites delivers a header one byte per write: the
// reader must reassemble it and still leave the next bytes alone.
func TestReadHeaderSplitWrites(t *testing.T) {
	t.Parallel()
	for _, header := range [][]byte{
		[]byte("PROXY TCP4 127.0.0.50 10.0.0.1 51234 5432\r\n"),
		[]byte("PROXY UNKNOWN\r\n"),
		v2(1, 0x21, v6body("2001:db8::7", "2001:db8::1", 40000, 5432)),
	} {
		client, server := net.Pipe()
		stream := append(append([]byte{}, header...), sslRequest...)
		go func() {
			for i := range stream {
				if _, err := client.Write(stream[i : i+1]); err != nil {
					return
				}
			}
		}()
		h, err := ReadHeader(server, time.Now().Add(10*time.Second))
		require.NoError(t, err)
		require.Equal(t, len(header), h.Len)
		requireNext(t, server, sslRequest)
		client.Close()
		server.Close()
	}
}

func TestReadHeaderErrors(t *testing.T) {
	t.Parallel()
	v2fixed := func(verCmd, fam byte, n uint16) []byte {
		b := append(append([]byte{}, pp.SIGV2...), verCmd, fam)
		return binary.BigEndian.AppendUint16(b, n)
	}
	tests := []struct {
		name  string
		send  []byte
		close bool          // close after sending; else keep the conn open
		wait  time.Duration // deadline from now (10s when zero)
		want  error
		rest  []byte // bytes that must still be readable afterwards
	}{
		{name: "ssl request, no header", send: sslRequest, want: ErrNoHeader},
		{name: "tls client hello, no header", send: []byte{0x16, 3, 1, 0, 0xa5, 1, 0, 0, 0xa1}, want: ErrNoHeader},
		{name: "a few other bytes then silence", send: []byte("GET"), want: ErrNoHeader},
		{name: "one other byte then silence", send: []byte{0x16}, want: ErrNoHeader},
		{name: "a few other bytes then close", send: []byte("GE"), close: true, want: ErrNoHeader},
		{name: "nothing then close", close: true, want: ErrClosed},
		{name: "nothing then silence", wait: 200 * time.Millisecond, want: ErrTimeout},
		{name: "lowercase signature", send: []byte("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), want: ErrNoHeader},
		{name: "signature without its space", send: []byte("PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n"), want: ErrNoHeader},
		{name: "partial v1 then silence", send: []byte("PROXY TCP4 1.2"), wait: 200 * time.Millisecond, want: ErrTimeout},
		{name: "partial v1 signature then silence", send: []byte("PRO"), wait: 200 * time.Millisecond, want: ErrTimeout},
		{name: "partial v1 then close", send: []byte("PROXY TCP4 1.2"), close: true, want: ErrMalformed},
		{name: "partial v2 then silence", send: v2fixed(0x21, 0x11, 12)[:14], wait: 200 * time.Millisecond, want: ErrTimeout},
		{name: "v2 body short then silence", send: v2fixed(0x21, 0x11, 12), wait: 200 * time.Millisecond, want: ErrTimeout},
		{name: "v2 body short then close", send: append(v2fixed(0x21, 0x11, 12), 1, 2, 3), close: true, want: ErrMalformed},
		{name: "v1 longer than 107 bytes", send: []byte("PROXY UNKNOWN " + strings.Repeat("x", 93) + "tail\r\n"),
			want: ErrMalformed, rest: []byte("tail\r\n")},
		{name: "v1 bare LF", send: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), want: ErrMalformed},
		{name: "v1 bare CR", send: []byte("PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n"), want: ErrMalformed},
		{name: "v1 empty protocol", send: []byte("PROXY \r\n"), want: ErrMalformed},
		{name: "v1 unknown protocol", send: []byte("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"), want: ErrMalformed},
		{name: "v1 bad address", send: []byte("PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n"), want: ErrMalformed},
		{name: "v1 v6 address in TCP4", send: []byte("PROXY TCP4 ::1 5.6.7.8 1 2\r\n"), want: ErrMalformed},
		{name: "v1 bad port", send: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"), want: ErrMalformed},
		{name: "v1 extra token", send: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"), want: ErrMalformed},
		{name: "v1 zero source", send: []byte("PROXY TCP4 0.0.0.0 5.6.7.8 1 2\r\n"), want: ErrUnsupported},
		{name: "v2 signature mismatch", send: append(append([]byte{}, pp.SIGV2[:8]...), "XXXXXXXX"...), want: ErrNoHeader},
		{name: "v2 version 1", send: v2fixed(0x11, 0x11, 0), want: ErrMalformed},
		{name: "v2 command 2", send: v2fixed(0x22, 0x11, 0), want: ErrMalformed},
		// The body is not read when the length is over the limit: the
		// bytes behind the fixed part are still there.
		{name: "v2 length over the limit", send: append(v2fixed(0x21, 0x11, 4097), "after"...),
			want: ErrMalformed, rest: []byte("after")},
		{name: "v2 length 65535", send: append(v2fixed(0x21, 0x21, 65535), "after"...),
			want: ErrMalformed, rest: []byte("after")},
		{name: "v2 tcp4 block too short", send: v2(1, 0x11, []byte{1, 2, 3, 4}), want: ErrMalformed},
		{name: "v2 udp4", send: v2(1, 0x12, v4body("1.2.3.4", "5.6.7.8", 1, 2)), want: ErrUnsupported},
		{name: "v2 udp6", send: v2(1, 0x22, v6body("::2", "::1", 1, 2)), want: ErrUnsupported},
		{name: "v2 unix stream", send: v2(1, 0x31, make([]byte, 216)), want: ErrUnsupported},
		{name: "v2 proxy unspec", send: v2(1, 0x00, nil), want: ErrUnsupported},
		{name: "v2 undefined family", send: v2(1, 0x13, v4body("1.2.3.4", "5.6.7.8", 1, 2)), want: ErrUnsupported},
		{name: "v2 zero source", send: v2(1, 0x21, v6body("::", "::1", 1, 2)), want: ErrUnsupported},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			client, server := tcpPair(t)
			if len(tc.send) > 0 {
				_, err := client.Write(tc.send)
				require.NoError(t, err)
			}
			if tc.close {
				require.NoError(t, client.(*net.TCPConn).CloseWrite())
			}
			wait := tc.wait
			if wait == 0 {
				// Long enough that waiting for it fails the run (go test
				// -timeout): these errors must come from the bytes alone.
				wait = time.Hour
			}
			_, err := ReadHeader(server, time.Now().Add(wait))
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if tc.rest != nil {
				requireNext(t, server, tc.rest)
			}
		})
	}
}

// TestReadHeaderTrickle: a peer sending one byte at a time cannot stretch
// the deadline, which is absolute, not per read.
func TestReadHeaderTrickle(t *testing.T) {
	t.Parallel()
	client, server := tcpPair(t)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		line := []byte("PROXY TCP4 127.0.0.50 10.0.0.1 51234 5432\r\n")
		for i := range line {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := client.Write(line[i : i+1]); err != nil {
				return
			}
		}
	}()
	_, err := ReadHeader(server, time.Now().Add(300*time.Millisecond))
	require.ErrorIs(t, err, ErrTimeout)
}

// TestReadHeaderClearsDeadline: the read deadline is cleared on return, so
// the caller's later reads are not cut short by the header's deadline.
func TestReadHeaderClearsDeadline(t *testing.T) {
	t.Parallel()
	client, server := tcpPair(t)
	_, err := client.Write([]byte("PROXY UNKNOWN\r\n"))
	require.NoError(t, err)
	deadline := time.Now().Add(100 * time.Millisecond)
	_, err = ReadHeader(server, deadline)
	require.NoError(t, err)
	time.Sleep(time.Until(deadline) + 50*time.Millisecond)
	go func() { _, _ = client.Write(sslRequest) }()
	got := make([]byte, len(sslRequest))
	_, err = io.ReadFull(server, got)
	require.NoError(t, err)
}

func TestReason(t *testing.T) {
	t.Parallel()
	for err, want := range map[error]string{
		ErrTimeout: "timeout", ErrNoHeader: "no_header", ErrMalformed: "malformed",
		ErrUnsupported: "unsupported", ErrClosed: "closed", io.ErrClosedPipe: "error",
	} {
		if got := Reason(errors.Join(errors.New("ctx"), err)); got != want {
			t.Errorf("Reason(%v) = %q, want %q", err, got, want)
		}
	}
}

func TestHeaderSourceAddr(t *testing.T) {
	t.Parallel()
	h := Header{Version: 2, Source: netip.MustParseAddrPort("192.0.2.1:7")}
	require.Equal(t, "192.0.2.1:7", h.SourceAddr().String())
	require.Nil(t, Header{Version: 2, Local: true}.SourceAddr())
}
