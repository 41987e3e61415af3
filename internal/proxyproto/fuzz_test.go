package proxyproto

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
)

// FuzzReadHeader feeds arbitrary bytes over net.Pipe. The first byte picks
// whether the writer closes after the data (even) or keeps the connection
// open (odd), so the deadline ends the read. Run it with
// -fuzzminimizetime 10x: inputs that wait for the deadline make the default
// minimisation crawl. Properties:
//   - no panic, and a return (the watchdog fails a read that outlives its
//     deadline by far);
//   - on success the header is a prefix of the input, exactly Len bytes
//     long, and every byte after it is still readable from the connection:
//     nothing past the header was consumed;
//   - on failure the error is one of the package's kinds, or an I/O error.
func FuzzReadHeader(f *testing.F) {
	seeds := [][]byte{
		[]byte("PROXY TCP4 127.0.0.50 10.0.0.1 51234 5432\r\n"),
		[]byte("PROXY TCP6 2001:db8::7 2001:db8::1 40000 5432\r\n"),
		[]byte("PROXY UNKNOWN\r\n"),
		[]byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"),
		[]byte("PROXY \r\n"),
		[]byte("PROXY TCP4 1.2"),
		v2(1, 0x11, v4body("127.0.0.50", "127.0.0.1", 51234, 5432)),
		v2(1, 0x21, v6body("2001:db8::7", "2001:db8::1", 40000, 5432)),
		v2(0, 0x00, nil),
		v2(0, 0x11, []byte{1, 2, 3}),
		v2(1, 0x12, v4body("1.2.3.4", "5.6.7.8", 1, 2)),
		v2(1, 0x31, make([]byte, 216)),
		v2(1, 0x11, append(v4body("1.2.3.4", "5.6.7.8", 1, 2), byte(pp.PP2_TYPE_AUTHORITY), 0, 3, 'a', 'b', 'c')),
		v2(1, 0x11, append(v4body("1.2.3.4", "5.6.7.8", 1, 2), byte(pp.PP2_TYPE_AUTHORITY), 0, 9, 'a')),
		append(append([]byte{}, pp.SIGV2...), 0x21, 0x11, 0xff, 0xff),
		sslRequest,
		{0x16, 3, 1, 0, 0xa5},
		{},
	}
	for _, s := range seeds {
		f.Add(append([]byte{0}, append(s, sslRequest...)...))
		f.Add(append([]byte{1}, s...))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		keepOpen := in[0]&1 == 1
		data := in[1:]
		if len(data) > MaxV2Len()+64 {
			return // longer inputs only repeat what the limit already covers
		}
		client, server := net.Pipe()
		defer server.Close()
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			_, _ = client.Write(data)
			if !keepOpen {
				client.Close()
			}
		}()
		wait := 2 * time.Second
		if keepOpen {
			wait = 20 * time.Millisecond
		}
		type result struct {
			h   Header
			err error
		}
		done := make(chan result, 1)
		go func() {
			h, err := ReadHeader(server, time.Now().Add(wait))
			done <- result{h, err}
		}()
		var res result
		select {
		case res = <-done:
		case <-time.After(wait + 30*time.Second):
			t.Fatalf("ReadHeader did not return within its deadline (%v) plus 30s", wait)
		}
		if res.err != nil {
			if Reason(res.err) == "error" && !errors.Is(res.err, io.ErrClosedPipe) {
				t.Fatalf("unclassified error: %v", res.err)
			}
			client.Close()
			<-wrote
			return
		}
		h := res.h
		if h.Len < 15 || h.Len > len(data) || h.Len > MaxV2Len() {
			t.Fatalf("header length %d for %d bytes of input", h.Len, len(data))
		}
		if h.Version == 1 && (h.Len > MaxV1Len || !bytes.HasSuffix(data[:h.Len], []byte("\r\n"))) {
			t.Fatalf("v1 header of %d bytes: %q", h.Len, data[:h.Len])
		}
		if !h.Local && !h.Source.IsValid() {
			t.Fatalf("non-local header without a source: %+v", h)
		}
		// Everything after the header is still in the connection.
		rest := make([]byte, len(data)-h.Len)
		_ = server.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(server, rest); err != nil {
			t.Fatalf("reading the %d bytes after the header: %v", len(rest), err)
		}
		if !bytes.Equal(rest, data[h.Len:]) {
			t.Fatalf("bytes after the header: got %q, want %q", rest, data[h.Len:])
		}
		<-wrote
		client.Close()
	})
}
