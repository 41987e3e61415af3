package proxy

import (
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/pgwarden/pgwarden/certs/certstest"
)

// loopFixture is one session inside an event loop, with the test holding
// the client's TLS end and postgres's end (a socketpair whose buffers are
// tiny, so back-pressure comes at once).
type loopFixture struct {
	client   *tls.Conn
	upstream net.Conn // the "postgres" end
	done     chan struct{}
	srv      *Server
	sess     *session
}

// loop returns the loop relaying the session.
func (f *loopFixture) loop() *eventLoop {
	f.srv.mu.Lock()
	defer f.srv.mu.Unlock()
	return f.sess.relay.loop
}

func startLoopSession(t *testing.T) *loopFixture {
	t.Helper()
	ca := certstest.NewCA(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	rawClient, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	rawServer, err := ln.Accept()
	require.NoError(t, err)

	lc := newLoopConn(rawServer)
	srvTLS := tls.Server(lc, &tls.Config{Certificates: []tls.Certificate{ca.ServerCertificate(t, "localhost")}})
	client := tls.Client(rawClient, &tls.Config{ServerName: "localhost", RootCAs: ca.CertPool()})
	errc := make(chan error, 1)
	go func() { errc <- srvTLS.Handshake() }()
	require.NoError(t, client.Handshake())
	require.NoError(t, <-errc)

	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	require.NoError(t, unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF, 4096))
	ours := fileConn(t, fds[0])
	theirs := fileConn(t, fds[1])

	s := &Server{log: zap.NewNop(), bytesUp: nopCounter{}, bytesDown: nopCounter{}, sessions: map[*session]struct{}{}}
	t.Cleanup(s.stopLoops)
	sess := &session{raw: rawServer, tls: srvTLS, clientIO: lc}
	f := &loopFixture{client: client, upstream: theirs, done: make(chan struct{}), srv: s, sess: sess}
	go func() {
		defer close(f.done)
		if !s.relayInLoop(sess, ours) {
			t.Error("session not taken by an event loop")
		}
	}()
	t.Cleanup(func() {
		client.Close()
		theirs.Close()
		<-f.done
	})
	return f
}

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
	require.NoError(t, f.sess.relayErr)
	require.EqualValues(t, 5, f.sess.bytesToUpstream)
	require.EqualValues(t, 3, f.sess.bytesToClient)
}

// TestSessionsSpreadOverLoops runs with four Ps, so two loops, and checks
// that two sessions land on different loops and both relay.
func TestSessionsSpreadOverLoops(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
	loopPool.mu.Lock()
	users := loopPool.users
	loopPool.mu.Unlock()
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
	loopPool.mu.Lock()
	loops := len(loopPool.loops)
	loopPool.mu.Unlock()
	require.Equal(t, 2, loops)
	require.NotSame(t, a.loop(), b.loop(), "both sessions on one loop")
	for _, l := range []*eventLoop{a.loop(), b.loop()} {
		require.Equal(t, 1, l.load())
	}
}
