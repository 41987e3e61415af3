package acl

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestPeerAddr(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		addr   net.Addr
		want   string
		wantOK bool
	}{
		{name: "tcp v4", addr: &net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 1}, want: "10.1.2.3", wantOK: true},
		{name: "tcp v4 in 16 bytes", addr: &net.TCPAddr{IP: net.ParseIP("10.1.2.3").To16(), Port: 1}, want: "10.1.2.3", wantOK: true},
		{name: "tcp mapped", addr: &net.TCPAddr{IP: net.ParseIP("::ffff:10.1.2.3"), Port: 1}, want: "10.1.2.3", wantOK: true},
		{name: "tcp v6 zone", addr: &net.TCPAddr{IP: net.ParseIP("fe80::1"), Zone: "eth0", Port: 1}, want: "fe80::1", wantOK: true},
		{name: "udp", addr: &net.UDPAddr{IP: net.ParseIP("2001:db8::1"), Port: 1}, want: "2001:db8::1", wantOK: true},
		{name: "string mapped", addr: stringAddr("[::ffff:192.0.2.1]:5432"), want: "192.0.2.1", wantOK: true},
		{name: "string zone", addr: stringAddr("[fe80::1%eth0]:5432"), want: "fe80::1", wantOK: true},
		{name: "string hostname", addr: stringAddr("localhost:5432")},
		{name: "string garbage", addr: stringAddr("nope")},
		{name: "unix", addr: &net.UnixAddr{Name: "/tmp/s", Net: "unix"}},
		{name: "nil", addr: nil},
		{name: "typed nil tcp", addr: (*net.TCPAddr)(nil)},
		{name: "tcp no ip", addr: &net.TCPAddr{Port: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, ok := PeerAddr(tc.addr)
			if ok != tc.wantOK {
				t.Fatalf("PeerAddr(%v) ok = %v, want %v", tc.addr, ok, tc.wantOK)
			}
			if ok && got.String() != tc.want {
				t.Fatalf("PeerAddr(%v) = %s, want %s", tc.addr, got, tc.want)
			}
		})
	}
}

type stringAddr string

func (s stringAddr) Network() string { return "tcp" }
func (s stringAddr) String() string  { return string(s) }

func TestDecisionString(t *testing.T) {
	t.Parallel()
	for d, want := range map[Decision]string{Admit: "admitted", RejectNotAllowed: "not_allowed", RejectBanned: "banned", Decision(9): "unknown"} {
		if d.String() != want {
			t.Errorf("Decision(%d).String() = %q, want %q", int(d), d.String(), want)
		}
	}
	if !errors.Is(RejectBanned.Err(), ErrBanned) || !errors.Is(RejectNotAllowed.Err(), ErrNotAllowed) || Admit.Err() != nil {
		t.Error("Decision.Err mismatch")
	}
}

func TestNewListenerRequiresAllowlist(t *testing.T) {
	t.Parallel()
	ln := listen(t, "tcp4", "127.0.0.1:0")
	_, err := NewListener(ln, ListenerConfig{})
	require.ErrorIs(t, err, ErrNoAllowlist)
	_, err = NewListener(nil, ListenerConfig{Allowlist: mustAllow(t, "127.0.0.1")})
	require.Error(t, err)
}

// TestListenerRejectsAtAccept drives real sockets: a client bound to
// 127.0.0.2 is outside the allowlist and must see a reset with zero bytes,
// while 127.0.0.1 gets through Accept.
func TestListenerRejectsAtAccept(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.DebugLevel)
	var (
		mu      sync.Mutex
		rejects []string
	)
	l, err := NewListener(listen(t, "tcp4", "127.0.0.1:0"), ListenerConfig{
		Allowlist: mustAllow(t, "127.0.0.1/32"),
		OnReject: func(d Decision, ip netip.Addr) {
			mu.Lock()
			defer mu.Unlock()
			rejects = append(rejects, d.String()+" "+ip.String())
		},
		Logger: zap.New(core),
	})
	require.NoError(t, err)
	accepted := acceptAll(t, l)

	// Denied: the kernel completes the handshake, then Accept resets it.
	assertDenied(t, "127.0.0.2", l.Addr().String())
	if na, b := l.Rejected(); na != 1 || b != 0 {
		t.Fatalf("Rejected() = %d, %d; want 1, 0", na, b)
	}

	// Allowed: Accept returns it, unchanged (still a *net.TCPConn).
	ok := dialFrom(t, "127.0.0.1", l.Addr().String())
	got := waitConn(t, accepted)
	if _, isTCP := got.(*net.TCPConn); !isTCP {
		t.Fatalf("admitted conn is %T, want *net.TCPConn", got)
	}
	if got.RemoteAddr().String() != ok.LocalAddr().String() {
		t.Fatalf("Accept returned %s, want the 127.0.0.1 client %s", got.RemoteAddr(), ok.LocalAddr())
	}
	select {
	case extra := <-accepted:
		t.Fatalf("the rejected conn from %s leaked out of Accept", extra.RemoteAddr())
	default:
	}

	mu.Lock()
	defer mu.Unlock()
	if len(rejects) != 1 || rejects[0] != "not_allowed 127.0.0.2" {
		t.Fatalf("OnReject calls = %v", rejects)
	}
	lines := logs.FilterMessage("connection rejected").All()
	if len(lines) != 1 || lines[0].ContextMap()["reason"] != "not_allowed" || lines[0].Level != zapcore.DebugLevel {
		t.Fatalf("rejection log lines = %v, want one debug line with reason not_allowed", lines)
	}
}

func TestListenerBannedAndReload(t *testing.T) {
	t.Parallel()
	var banned sync.Map
	l, err := NewListener(listen(t, "tcp4", "127.0.0.1:0"), ListenerConfig{
		Allowlist: mustAllow(t, "127.0.0.0/8"),
		Banned:    func(ip netip.Addr) bool { _, ok := banned.Load(ip); return ok },
	})
	require.NoError(t, err)
	accepted := acceptAll(t, l)

	banned.Store(netip.MustParseAddr("127.0.0.3"), true)
	assertDenied(t, "127.0.0.3", l.Addr().String())
	if na, b := l.Rejected(); na != 0 || b != 1 {
		t.Fatalf("Rejected() = %d, %d; want 0, 1", na, b)
	}

	// A reload that drops 127.0.0.4 applies to the next connection.
	dialFrom(t, "127.0.0.4", l.Addr().String())
	waitConn(t, accepted)
	l.SetAllowlist(mustAllow(t, "127.0.0.1"))
	l.SetAllowlist(nil) // ignored: never leave the listener without a list
	assertDenied(t, "127.0.0.4", l.Addr().String())
	if na, b := l.Rejected(); na != 1 || b != 1 {
		t.Fatalf("Rejected() = %d, %d; want 1, 1", na, b)
	}
	// Outside the allowlist wins over banned in the label.
	banned.Store(netip.MustParseAddr("127.0.0.5"), true)
	if d := l.Decide(netip.MustParseAddr("127.0.0.5")); d != RejectNotAllowed {
		t.Fatalf("Decide = %s, want not_allowed", d)
	}
}

// TestListenerDualStack checks the IPv4-mapped case for real: on a
// dual-stack [::] socket an IPv4 client appears as ::ffff:127.0.0.x and must
// be judged by the IPv4 rule.
func TestListenerDualStack(t *testing.T) {
	t.Parallel()
	inner, err := net.Listen("tcp", "[::]:0")
	if err != nil {
		t.Skipf("no dual-stack IPv6 listener here: %v", err)
	}
	t.Cleanup(func() { inner.Close() })
	l, err := NewListener(inner, ListenerConfig{Allowlist: mustAllow(t, "127.0.0.1/32")})
	require.NoError(t, err)
	accepted := acceptAll(t, l)
	port := inner.Addr().(*net.TCPAddr).Port

	dialFrom(t, "127.0.0.1", net.JoinHostPort("127.0.0.1", itoa(port)))
	got := waitConn(t, accepted)
	raw := got.RemoteAddr().(*net.TCPAddr).AddrPort().Addr()
	t.Logf("dual-stack peer seen as %s", raw)

	assertDenied(t, "127.0.0.2", net.JoinHostPort("127.0.0.1", itoa(port)))

	// IPv6 loopback is not in an IPv4-only list.
	if probe, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		probe.Close()
		assertDenied(t, "::1", net.JoinHostPort("::1", itoa(port)))
	} else {
		t.Logf("no IPv6 loopback, skipping the ::1 case: %v", err)
	}
}

func TestSampler(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	s := newSampler(3, 10, func() time.Time { return now })
	logged, suppressedTotal := 0, uint64(0)
	for range 1000 {
		if ok, n := s.sample(); ok {
			logged++
			suppressedTotal += n
		}
	}
	// 3 + (997 / 10) = 3 + 99 logged; the rest reported as suppressed.
	if logged != 102 {
		t.Fatalf("logged %d of 1000 in one second, want 102", logged)
	}
	now = now.Add(time.Second)
	ok, n := s.sample()
	if !ok || suppressedTotal+n != 1000-102 {
		t.Fatalf("next window: ok=%v suppressed=%d (+%d earlier), want all %d accounted", ok, n, suppressedTotal, 1000-102)
	}
}

// TestListenerSamplesFloodLog sends many denied connections and checks the
// log does not get one line each while the counter does.
func TestListenerSamplesFloodLog(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.DebugLevel)
	l, err := NewListener(listen(t, "tcp4", "127.0.0.1:0"), ListenerConfig{
		Allowlist: mustAllow(t, "127.0.0.1"),
		Logger:    zap.New(core),
	})
	require.NoError(t, err)
	frozen := time.Unix(5000, 0)
	l.gate.sampler.now = func() time.Time { return frozen } // one window for the whole flood
	acceptAll(t, l)
	const n = 60
	for range n {
		assertDenied(t, "127.0.0.9", l.Addr().String())
	}
	if na, _ := l.Rejected(); na != n {
		t.Fatalf("counted %d rejections, want %d", na, n)
	}
	if got := logs.FilterMessage("connection rejected").Len(); got != sampleFirst {
		t.Fatalf("logged %d lines for %d rejections, want %d", got, n, sampleFirst)
	}
}

func TestListenerReturnsAcceptErrors(t *testing.T) {
	t.Parallel()
	ln := listen(t, "tcp4", "127.0.0.1:0")
	l, err := NewListener(ln, ListenerConfig{Allowlist: mustAllow(t, "127.0.0.1")})
	require.NoError(t, err)
	require.NoError(t, l.Close())
	_, err = l.Accept()
	require.ErrorIs(t, err, net.ErrClosed)
}

// --- helpers ---

func mustAllow(t testing.TB, entries ...string) *Allowlist {
	t.Helper()
	a, err := ParseAllowlist(entries)
	require.NoError(t, err)
	return a
}

func listen(t testing.TB, network, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen(network, addr)
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	return ln
}

// acceptAll runs Accept in a goroutine and delivers admitted conns.
func acceptAll(t testing.TB, l *Listener) <-chan net.Conn {
	t.Helper()
	ch := make(chan net.Conn, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			ch <- c
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		close(ch)
		for c := range ch {
			c.Close()
		}
	})
	return ch
}

func waitConn(t testing.TB, ch <-chan net.Conn) net.Conn {
	t.Helper()
	select {
	case c := <-ch:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("Accept did not return the allowed connection")
		return nil
	}
}

func dialFrom(t testing.TB, src, dst string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", dst)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// assertDenied dials src→dst and checks the connection is reset without a
// byte: on loopback the RST can beat connect(2)'s return, so a dial error of
// ECONNRESET counts too.
func assertDenied(t testing.TB, src, dst string) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", dst)
	if err != nil {
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("dialing %s from %s: %v, want success or ECONNRESET", dst, src, err)
		}
		return
	}
	defer c.Close()
	assertResetNoBytes(t, c)
}

// assertResetNoBytes reads from a denied client: it must end (RST, or EOF
// if the reset raced) without receiving a single byte.
func assertResetNoBytes(t testing.TB, c net.Conn) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if n != 0 {
		t.Fatalf("denied client received %d bytes: %q", n, buf[:n])
	}
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.EOF) {
		t.Fatalf("denied client read error = %v, want ECONNRESET or EOF", err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
