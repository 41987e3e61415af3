//go:build linux

package eventloop

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/pgwarden/pgwarden/internal/certstest"
	"github.com/pgwarden/pgwarden/internal/tlsforge"
	"github.com/pgwarden/pgwarden/proxy/internal/relay"
)

// loopFixture is one session inside an event loop, with the test holding
// the client's TLS end and postgres's end (a socketpair whose buffers are
// tiny, so back-pressure comes at once). The client's traffic secrets and
// records are kept, so a TLS13Forger can take its place.
type loopFixture struct {
	client   *tls.Conn
	tap      *tlsforge.Tap
	keyLog   *tlsforge.KeyLog
	upstream net.Conn // the "postgres" end
	done     chan struct{}
	rs       *relay.Session
	ls       chan *loopSession // the session in its loop, once handed over
	err      error             // what Run returned, once done is closed
}

// loop returns the loop relaying the session.
func (f *loopFixture) loop() *eventLoop { return f.relay().loop }

// relay returns the session in its loop, once it has been handed over
// (Run runs on a goroutine of its own).
func (f *loopFixture) relay() *loopSession {
	select {
	case ls := <-f.ls:
		f.ls <- ls
		return ls
	case <-time.After(10 * time.Second):
		return nil
	}
}

// loopOptions vary startLoopSession.
type loopOptions struct {
	// smallClientBuffers makes the client's TCP buffers small, both ends,
	// so that a client that does not read fills them at once.
	smallClientBuffers bool
	// noReplyLimit lifts the limit on crypto/tls's own replies, to test
	// what bounds the queue without it.
	noReplyLimit bool
}

func startLoopSession(t *testing.T) *loopFixture { return startLoopSessionWith(t, loopOptions{}) }

func startLoopSessionWith(t *testing.T, opts loopOptions) *loopFixture {
	t.Helper()
	ca := certstest.NewCA(t)
	// Small buffers are set before the connection exists (on the listener,
	// which the accepted socket inherits, and before connect): shrinking
	// them afterwards leaves TCP with a window larger than the buffer, and
	// it drops and backs off for seconds.
	var control func(network, address string, c syscall.RawConn) error
	if opts.smallClientBuffers {
		control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				for _, opt := range []int{unix.SO_RCVBUF, unix.SO_SNDBUF} {
					if serr == nil {
						serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, 64<<10)
					}
				}
			})
			return errors.Join(err, serr)
		}
	}
	ln, err := (&net.ListenConfig{Control: control}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	rawClient, err := (&net.Dialer{Control: control}).Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	rawServer, err := ln.Accept()
	require.NoError(t, err)

	lc := newLoopConn(rawServer)
	if opts.noReplyLimit {
		lc.guard.SetReplyLimit(rate.NewLimiter(rate.Inf, 0))
	}
	srvTLS := tls.Server(lc, &tls.Config{Certificates: []tls.Certificate{ca.ServerCertificate(t, "localhost")}})
	tap, keyLog := &tlsforge.Tap{Conn: rawClient}, &tlsforge.KeyLog{}
	client := tls.Client(tap, &tls.Config{ServerName: "localhost", RootCAs: ca.CertPool(), KeyLogWriter: keyLog})
	errc := make(chan error, 1)
	go func() { errc <- srvTLS.Handshake() }()
	require.NoError(t, client.Handshake())
	require.NoError(t, <-errc)

	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	require.NoError(t, unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF, 4096))
	ours := fileConn(t, fds[0])
	theirs := fileConn(t, fds[1])

	r, err := New(zap.NewNop())
	require.NoError(t, err)
	f := &loopFixture{client: client, tap: tap, keyLog: keyLog, upstream: theirs, done: make(chan struct{}), ls: make(chan *loopSession, 1)}
	r.added = func(ls *loopSession) { f.ls <- ls }
	t.Cleanup(r.Stop)
	f.rs = &relay.Session{Client: srvTLS, Raw: rawServer, Upstream: ours, Up: nopCounter{}, Down: nopCounter{}}
	go func() {
		defer close(f.done)
		f.err = r.Run(f.rs)
	}()
	if f.relay() == nil {
		t.Fatal("session not taken by an event loop")
	}
	t.Cleanup(func() {
		client.Close()
		theirs.Close()
		<-f.done
	})
	return f
}

type nopCounter struct{}

func (nopCounter) Add(float64) {}

func fileConn(t *testing.T, fd int) net.Conn {
	t.Helper()
	f := os.NewFile(uintptr(fd), "socketpair")
	defer f.Close()
	c, err := net.FileConn(f)
	require.NoError(t, err)
	return c
}

// TestLoopDeliversRecordsHeldByTLS sends many small TLS records while
// postgres is not reading, then waits for them all. When postgres starts
// reading, the last records sit decrypted or whole inside crypto/tls with
// the client's socket empty: no epoll event will announce them, so the loop
// must drain them when postgres takes data again, or the session stalls.
func TestLoopDeliversRecordsHeldByTLS(t *testing.T) {
	f := startLoopSession(t)
	const records, size = 3000, 100
	// Each round is a fresh chance for the last records to be left inside
	// crypto/tls; one round alone misses the window now and then.
	for round := range 4 {
		go func() {
			rec := make([]byte, size)
			for i := range records {
				binary.BigEndian.PutUint32(rec, uint32(i))
				if _, err := f.client.Write(rec); err != nil {
					return
				}
			}
		}()
		time.Sleep(150 * time.Millisecond) // "postgres" does not read yet
		got := make([]byte, records*size)
		require.NoError(t, f.upstream.SetReadDeadline(time.Now().Add(10*time.Second)))
		_, err := io.ReadFull(f.upstream, got)
		require.NoError(t, err, "round %d: the relay stalled with client data inside crypto/tls", round)
		for i := range records {
			require.Equal(t, uint32(i), binary.BigEndian.Uint32(got[i*size:]), "round %d: record %d out of order", round, i)
		}
	}
}

// TestLoopHalfCloseAndEnd checks the end of a session: the client's
// close_notify reaches postgres as EOF; postgres's final bytes and close
// reach the client; the session ends and is reported with its byte counts.
func TestLoopHalfCloseAndEnd(t *testing.T) {
	f := startLoopSession(t)
	_, err := f.client.Write([]byte("X\x00\x00\x00\x04")) // Terminate
	require.NoError(t, err)
	require.NoError(t, f.client.CloseWrite())

	require.NoError(t, f.upstream.SetReadDeadline(time.Now().Add(5*time.Second)))
	got, err := io.ReadAll(f.upstream)
	require.NoError(t, err, "postgres must see EOF after the client's close_notify")
	require.Equal(t, "X\x00\x00\x00\x04", string(got))

	_, err = f.upstream.Write([]byte("bye"))
	require.NoError(t, err)
	require.NoError(t, f.upstream.Close())
	require.NoError(t, f.client.SetReadDeadline(time.Now().Add(5*time.Second)))
	rest, err := io.ReadAll(f.client)
	require.NoError(t, err)
	require.Equal(t, "bye", string(rest))

	select {
	case <-f.done:
	case <-time.After(5 * time.Second):
		t.Fatal("session did not end")
	}
	require.NoError(t, f.err)
	require.EqualValues(t, 5, f.rs.BytesToUpstream)
	require.EqualValues(t, 3, f.rs.BytesToClient)
}

// TestSessionsSpreadOverLoops runs with four Ps, so two loops, and checks
// that two sessions land on different loops and both relay.
func TestSessionsSpreadOverLoops(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
	pool.mu.Lock()
	users := pool.users
	pool.mu.Unlock()
	require.Zero(t, users, "a previous test left the loop pool in use")

	a, b := startLoopSession(t), startLoopSession(t)
	for _, f := range []*loopFixture{a, b} {
		_, err := f.client.Write([]byte("ping"))
		require.NoError(t, err)
		got := make([]byte, 4)
		require.NoError(t, f.upstream.SetReadDeadline(time.Now().Add(5*time.Second)))
		_, err = io.ReadFull(f.upstream, got)
		require.NoError(t, err)
		require.Equal(t, "ping", string(got))
	}
	pool.mu.Lock()
	loops := len(pool.loops)
	pool.mu.Unlock()
	require.Equal(t, 2, loops)
	require.NotSame(t, a.loop(), b.loop(), "both sessions on one loop")
	for _, l := range []*eventLoop{a.loop(), b.loop()} {
		require.Equal(t, 1, l.load())
	}
}

// TestLoopStopsReadingClientWithQueuedOutput floods the loop with TLS 1.3
// KeyUpdates that request an update, each making crypto/tls write a reply,
// from a client that does not read, with the reply limit lifted: what must
// bound the gateway's memory then is that a client with output queued is
// not read. The loop must come to a stop (output queued, neither socket
// read), the queue stay within outBufMax, and, once the client reads, every
// KeyUpdate be answered, every data byte reach postgres, and the session go
// on.
func TestLoopStopsReadingClientWithQueuedOutput(t *testing.T) {
	f := startLoopSessionWith(t, loopOptions{smallClientBuffers: true, noReplyLimit: true})
	forger, err := tlsforge.New(f.client, f.tap, f.keyLog)
	require.NoError(t, err)
	queuePeak.Store(0)

	// Eight KeyUpdates, then one byte of data: crypto/tls ends a connection
	// after 16 records in a row without data. 6000 rounds are 1.4 MB, far
	// more than the client's and the gateway's buffers and the queue hold.
	const rounds, perRound = 6000, 8
	gotData := make(chan error, 1)
	go func() {
		buf := make([]byte, rounds)
		_, err := io.ReadFull(f.upstream, buf)
		if err == nil && !bytes.Equal(buf, bytes.Repeat([]byte("x"), rounds)) {
			err = errors.New("postgres got other bytes than the client sent")
		}
		gotData <- err
	}()
	flooded := make(chan error, 1)
	go func() { flooded <- floodKeyUpdates(forger, rounds, perRound) }()

	// The loop's epoll interest, as the kernel holds it, shows when it has
	// stopped: the client watched only for writability (output queued, not
	// read), postgres not watched at all (nothing to send it, and nothing
	// to read while the client's queue is not empty). Without the rule the
	// client stops being read only while postgres is slow, and then postgres
	// is watched for writability; the loop changes the two interests one
	// after the other, so the stop must be seen several times in a row.
	ls := f.relay()
	require.NotNil(t, ls, "the session was not handed to a loop")
	epfd := ls.loop.epfd
	seen := 0
	waitForLoop(t, "the loop to stop reading a client with queued output", func() bool {
		in := epollInterest(t, epfd)
		c, u := in[ls.cfd]&(unix.EPOLLIN|unix.EPOLLOUT), in[ls.ufd]&(unix.EPOLLIN|unix.EPOLLOUT)
		if c == unix.EPOLLOUT && u == 0 {
			seen++
		} else {
			seen = 0
		}
		return seen == 3
	}, flooded)
	require.Positive(t, queuePeak.Load(), "nothing was queued for the client: the test did not test the queue")

	require.NoError(t, forger.SetDeadline(time.Now().Add(60*time.Second)))
	require.NoError(t, forger.AwaitKeyUpdates(rounds*perRound), "every KeyUpdate must be answered once the client reads")
	require.NoError(t, <-flooded)
	require.NoError(t, <-gotData)
	require.LessOrEqual(t, queuePeak.Load(), int64(outBufMax))

	// The session goes on.
	_, err = f.upstream.Write([]byte("pong"))
	require.NoError(t, err)
	got := make([]byte, 4)
	_, err = io.ReadFull(forger, got)
	require.NoError(t, err)
	require.Equal(t, "pong", string(got))
	select {
	case <-f.done:
		t.Fatalf("session ended: %v", f.err)
	default:
	}
}

// floodKeyUpdates sends rounds of perRound KeyUpdates requesting an update
// and one byte of data ("x"), without reading.
func floodKeyUpdates(f *tlsforge.Forger, rounds, perRound int) error {
	for r := range rounds {
		for range perRound {
			if err := f.KeyUpdate(true); err != nil {
				return err
			}
		}
		f.AppData([]byte("x"))
		if r%64 == 63 || r == rounds-1 {
			if err := f.Flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// waitForLoop polls cond like the e2e tests' waitFor, and fails at once if
// the flood ends with an error (the session was ended).
func waitForLoop(t *testing.T, what string, cond func() bool, flooded chan error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		select {
		case err := <-flooded:
			require.NoError(t, err, "waiting for %s", what)
			flooded <- nil
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// epollInterest reads the events each descriptor is registered for in the
// epoll instance epfd, from /proc/self/fdinfo (Linux 3.8+), in one read.
func epollInterest(t *testing.T, epfd int) map[int]uint32 {
	t.Helper()
	info, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", epfd))
	require.NoError(t, err)
	in := make(map[int]uint32)
	for _, line := range strings.Split(string(info), "\n") {
		var fd int
		var events uint32
		if n, _ := fmt.Sscanf(line, "tfd: %d events: %x", &fd, &events); n == 2 {
			in[fd] = events
		}
	}
	return in
}
