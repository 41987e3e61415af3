package proxyproto

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	pp "github.com/pires/go-proxyproto"
)

const (
	// MaxV1Len is the longest v1 line the spec allows, CRLF included:
	// "PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n".
	MaxV1Len = 107
	// v2FixedLen is the v2 signature (12 bytes), version and command (1),
	// family and transport (1) and the length of what follows (2).
	v2FixedLen = 16
	// sniffLen is read first: no valid header is shorter (the shortest v1
	// line, "PROXY UNKNOWN\r\n", has 15 bytes, a v2 header 16), and it is
	// exactly the size of the SSLRequest a client sends when it bypassed
	// the balancer, so that case is told apart without waiting.
	sniffLen = 8
)

// sigV1 is the v1 signature: "PROXY" and exactly one space.
var sigV1 = []byte("PROXY ")

// MaxV2Len is the longest v2 header accepted: the fixed part plus
// go-proxyproto's MaxV2HeaderSize (4096 by default) for the addresses and
// TLVs. The length field is checked against it before anything is read.
func MaxV2Len() int { return v2FixedLen + int(pp.MaxV2HeaderSize) }

// ReadHeader reads one PROXY protocol header (v1 or v2) from conn before
// deadline and returns what it says. It reads exactly the header's bytes
// and no more, so everything the client sent after it can still be read
// from conn, by this process or from the raw file descriptor.
//
// It sets conn's read deadline to deadline and clears it (sets the zero
// time) before returning; the caller re-arms its own deadlines. Errors wrap
// ErrTimeout, ErrNoHeader, ErrMalformed, ErrUnsupported or ErrClosed (see
// Reason), or are I/O errors wrapped with context. A returned Header with
// Local set is valid but names no client.
//
// Call it in the connection's own goroutine, never in an accept loop: it
// blocks until the header, the deadline or an error.
func ReadHeader(conn net.Conn, deadline time.Time) (Header, error) {
	if err := conn.SetReadDeadline(deadline); err != nil {
		return Header{}, fmt.Errorf("setting the PROXY header deadline: %w", err)
	}
	// Best effort: a conn the peer already reset may refuse it, and the
	// header (or the error) matters more.
	defer func() { _ = conn.SetReadDeadline(time.Time{}) }()

	r := &exactReader{conn: conn, buf: make([]byte, 0, 128)}
	if err := r.fill(sniffLen); err != nil {
		return Header{}, r.classify(err)
	}
	switch {
	case bytes.HasPrefix(r.buf, sigV1):
		return r.readV1()
	case bytes.Equal(r.buf, pp.SIGV2[:sniffLen]):
		return r.readV2()
	default:
		return Header{}, fmt.Errorf("%w: the connection starts with %q", ErrNoHeader, r.buf)
	}
}

// exactReader accumulates the header's bytes, reading exactly as many as
// the header is known to still contain.
type exactReader struct {
	conn net.Conn
	buf  []byte
}

// errNotSignature stops fill as soon as the bytes read cannot begin a
// header: a direct client gets its answer without waiting for more bytes.
var errNotSignature = errors.New("not a PROXY signature")

// fill reads until buf holds n bytes. It uses plain Reads of at most the
// missing count, so it returns as soon as the bytes stop looking like a
// header, and never asks the connection for more than n bytes in total.
func (r *exactReader) fill(n int) error {
	if cap(r.buf) < n {
		r.buf = append(make([]byte, 0, n), r.buf...)
	}
	for len(r.buf) < n {
		if !r.maybeHeader() {
			return errNotSignature
		}
		m, err := r.conn.Read(r.buf[len(r.buf):n])
		r.buf = r.buf[:len(r.buf)+m]
		if err != nil && len(r.buf) < n {
			return err
		}
	}
	return nil
}

// readSome reads at least one and at most n more bytes.
func (r *exactReader) readSome(n int) error {
	if cap(r.buf) < len(r.buf)+n {
		r.buf = append(make([]byte, 0, len(r.buf)+n), r.buf...)
	}
	for {
		m, err := r.conn.Read(r.buf[len(r.buf) : len(r.buf)+n])
		r.buf = r.buf[:len(r.buf)+m]
		if m > 0 {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// classify turns a read error into the package's error for how far the
// header got: nothing at all, part of a signature, or a mismatch that is
// already certain.
func (r *exactReader) classify(err error) error {
	closed := errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
	switch {
	case len(r.buf) == 0 && closed:
		return fmt.Errorf("%w: %w", ErrClosed, err)
	case !r.maybeHeader():
		// A few bytes of something else, then silence or a close: a direct
		// client, whichever way its connection ended.
		return fmt.Errorf("%w: the connection starts with %q", ErrNoHeader, r.buf)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("%w (got %d bytes): %w", ErrTimeout, len(r.buf), err)
	case closed:
		return fmt.Errorf("%w: truncated after %d bytes: %w", ErrMalformed, len(r.buf), err)
	default:
		return fmt.Errorf("reading PROXY header after %d bytes: %w", len(r.buf), err)
	}
}

// maybeHeader reports whether the bytes read so far can still begin a v1
// or v2 header.
func (r *exactReader) maybeHeader() bool {
	return isPrefix(r.buf, sigV1) || isPrefix(r.buf, pp.SIGV2)
}

// isPrefix reports whether b and sig agree on their common length.
func isPrefix(b, sig []byte) bool {
	n := min(len(b), len(sig))
	return bytes.Equal(b[:n], sig[:n])
}

// readV1 reads the rest of a v1 line. The line ends at the first CRLF and
// contains no other CR or LF, so while the last byte read is not CR at
// least two more bytes belong to it, and after a CR exactly one: reading
// that many at a time never reads past a well-formed line, with half the
// reads of a byte-at-a-time loop. Only a malformed line (an LF without its
// CR) can make it read one byte too many, and that connection is closed.
func (r *exactReader) readV1() (Header, error) {
	scanned := 0
	for {
		for i := scanned; i < len(r.buf); i++ {
			switch r.buf[i] {
			case '\n':
				if i == 0 || r.buf[i-1] != '\r' || i != len(r.buf)-1 {
					return Header{}, fmt.Errorf("%w: v1 line has a bare LF", ErrMalformed)
				}
				return r.parse(1)
			case '\r':
				if i+1 < len(r.buf) && r.buf[i+1] != '\n' {
					return Header{}, fmt.Errorf("%w: v1 line has a bare CR", ErrMalformed)
				}
			}
		}
		scanned = len(r.buf)
		if len(r.buf) >= MaxV1Len {
			return Header{}, fmt.Errorf("%w: v1 line longer than %d bytes", ErrMalformed, MaxV1Len)
		}
		need := 2
		if r.buf[len(r.buf)-1] == '\r' {
			need = 1
		}
		if err := r.readSome(min(need, MaxV1Len-len(r.buf))); err != nil {
			return Header{}, r.classify(err)
		}
	}
}

// readV2 reads the rest of the fixed part, checks the version, command and
// length, and then reads exactly the announced length.
func (r *exactReader) readV2() (Header, error) {
	if err := r.fill(v2FixedLen); err != nil {
		return Header{}, r.classify(err)
	}
	if !bytes.Equal(r.buf[:len(pp.SIGV2)], pp.SIGV2) {
		return Header{}, fmt.Errorf("%w: the connection starts with %q", ErrNoHeader, r.buf)
	}
	// The spec: the high nibble of byte 13 is the version, which must be 2;
	// the low nibble is the command, LOCAL (0) or PROXY (1). "Receivers must
	// drop connections presenting unexpected values here."
	verCmd := r.buf[12]
	if verCmd>>4 != 2 {
		return Header{}, fmt.Errorf("%w: v2 version nibble is %d", ErrMalformed, verCmd>>4)
	}
	if cmd := verCmd & 0x0f; cmd > 1 {
		return Header{}, fmt.Errorf("%w: v2 command %d is neither LOCAL nor PROXY", ErrMalformed, cmd)
	}
	n := int(binary.BigEndian.Uint16(r.buf[14:16]))
	if v2FixedLen+n > MaxV2Len() {
		return Header{}, fmt.Errorf("%w: v2 length %d exceeds %d", ErrMalformed, n, MaxV2Len()-v2FixedLen)
	}
	if err := r.fill(v2FixedLen + n); err != nil {
		return Header{}, r.classify(err)
	}
	return r.parse(2)
}

// parse hands the exact header bytes to go-proxyproto's parser and converts
// its result. The bufio.Reader here reads from a copy in memory, never from
// the connection.
func (r *exactReader) parse(version int) (Header, error) {
	src := bytes.NewReader(r.buf)
	br := bufio.NewReaderSize(src, max(len(r.buf), 16))
	h, err := pp.Read(br)
	if err != nil {
		if errors.Is(err, pp.ErrUnsupportedAddressFamilyAndProtocol) {
			return Header{}, fmt.Errorf("%w: %w", ErrUnsupported, err)
		}
		return Header{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if src.Len() != 0 || br.Buffered() != 0 {
		// The parser must account for every byte the length announced;
		// otherwise the framing here and there disagree.
		return Header{}, fmt.Errorf("%w: %d bytes left after the v%d header", ErrMalformed, src.Len()+br.Buffered(), version)
	}
	out := Header{Version: version, Len: len(r.buf)}
	if h.Command.IsLocal() {
		// v2 LOCAL, or v1 UNKNOWN which go-proxyproto maps to LOCAL.
		out.Local = true
		return out, nil
	}
	switch h.TransportProtocol {
	case pp.TCPv4, pp.TCPv6:
	default:
		return Header{}, fmt.Errorf("%w: PROXY command for transport 0x%02x; only TCP over IPv4 or IPv6 names a client", ErrUnsupported, byte(h.TransportProtocol))
	}
	srcAddr, dstAddr, ok := h.TCPAddrs()
	if !ok {
		return Header{}, fmt.Errorf("%w: no TCP addresses in the header", ErrMalformed)
	}
	out.Source, out.Destination = addrPort(srcAddr), addrPort(dstAddr)
	if !out.Source.Addr().IsValid() || out.Source.Addr().IsUnspecified() {
		return Header{}, fmt.Errorf("%w: source address %s names no client", ErrUnsupported, out.Source.Addr())
	}
	return out, nil
}

// addrPort converts a parsed address the way acl.PeerAddr normalises peers.
func addrPort(a *net.TCPAddr) netip.AddrPort {
	ip, _ := netip.AddrFromSlice(a.IP)
	return netip.AddrPortFrom(ip.Unmap().WithZone(""), uint16(a.Port))
}
