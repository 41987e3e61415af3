//go:build linux

package eventloop

import (
	"crypto/tls"
	"errors"
	"net"
	"strings"

	"bytes"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/pgwarden/pgwarden/internal/certstest"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/pgwarden/pgwarden/proxy/internal/relay"
)

// TestOutBufKeepsOrderUnderBackPressure writes random chunks into a
// non-blocking socket with a small buffer, queueing what it does not take,
// while the reader drains it in bursts; every byte must arrive, in order,
// the queue must never hold more than outBufMax (a chunk that would take it
// past is refused whole), and it must hold memory only while something is
// queued.
func TestOutBufKeepsOrderUnderBackPressure(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	w, r := fds[0], fds[1]
	defer unix.Close(w)
	defer unix.Close(r)
	require.NoError(t, unix.SetsockoptInt(w, unix.SOL_SOCKET, unix.SO_SNDBUF, 4096))

	rng := rand.New(rand.NewPCG(1, 2))
	var sent, got bytes.Buffer
	var out outBuf
	drain := func(max int) {
		buf := make([]byte, 8192)
		for max > 0 {
			n, err := unix.Read(r, buf[:min(len(buf), max)])
			if err == unix.EAGAIN || n <= 0 {
				return
			}
			got.Write(buf[:n])
			max -= n
		}
	}
	queued, refused := 0, 0
	for range 800 {
		chunk := make([]byte, 1+rng.IntN(20000))
		for j := range chunk {
			chunk[j] = byte(rng.Uint32())
		}
		if err := out.write(w, chunk); err != nil {
			require.ErrorIs(t, err, relay.ErrQueueFull)
			refused++
		} else {
			sent.Write(chunk)
		}
		if !out.empty() {
			queued++
			require.LessOrEqual(t, len(*out.buf)-out.off, outBufMax)
			require.Equal(t, outBufSize, cap(*out.buf), "the queue's buffer grew")
		}
		drain(rng.IntN(30000))
		require.NoError(t, out.flush(w))
	}
	for !out.empty() {
		drain(1 << 20)
		require.NoError(t, out.flush(w))
	}
	drain(1 << 30)
	require.Positive(t, queued, "the socket never pushed back: the test did not test queueing")
	require.Positive(t, refused, "the queue never reached its cap: the test did not test it")
	require.Equal(t, sent.Len(), got.Len())
	require.True(t, bytes.Equal(sent.Bytes(), got.Bytes()), "bytes reordered or corrupted")
	require.Nil(t, out.buf, "an empty queue must give its buffer back")
}

// TestLoopConnReadOncePerEvent checks the contract crypto/tls relies on: one
// read(2) per allowRead, then a temporary "would block" error that is not
// mistaken for the end of the stream.
func TestLoopConnReadOncePerEvent(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	c := newLoopConn(nil)
	c.handOff(fds[1])

	buf := make([]byte, 4)
	_, err = c.Read(buf)
	require.ErrorIs(t, err, errWouldBlock, "no read without a readiness event")

	_, err = unix.Write(fds[0], []byte("abcdefgh"))
	require.NoError(t, err)
	c.allowRead()
	n, err := c.Read(buf)
	require.NoError(t, err)
	require.Equal(t, "abcd", string(buf[:n]))
	_, err = c.Read(buf)
	require.ErrorIs(t, err, errWouldBlock, "a second read(2) in one event")
	require.True(t, errWouldBlock.Temporary())

	c.allowRead()
	n, err = c.Read(buf)
	require.NoError(t, err)
	require.Equal(t, "efgh", string(buf[:n]))

	c.allowRead()
	_, err = c.Read(buf)
	require.ErrorIs(t, err, errWouldBlock, "EAGAIN is not the end of the stream")

	require.NoError(t, unix.Shutdown(fds[0], unix.SHUT_WR))
	c.allowRead()
	_, err = c.Read(buf)
	require.ErrorIs(t, err, io.EOF)

	// Deadlines and Close belong to the loop now: no-ops that must not
	// touch the (nil) Go conn.
	require.NoError(t, c.SetDeadline(time.Time{}))
	require.NoError(t, c.Close())
	_, err = unix.FcntlInt(uintptr(fds[1]), unix.F_GETFD, 0)
	require.NoError(t, err, "Close closed the loop's descriptor")
}

// stutterConn hands crypto/tls at most a few bytes per Read, and between
// two reads reports that the socket would block, as a loopConn does when
// a record arrives in pieces. It starts once the handshake is done.
type stutterConn struct {
	net.Conn
	on, blocked bool
	blocks      int
}

func (c *stutterConn) Read(p []byte) (int, error) {
	if !c.on {
		return c.Conn.Read(p)
	}
	if c.blocked = !c.blocked; c.blocked {
		c.blocks++
		return 0, errWouldBlock
	}
	return c.Conn.Read(p[:min(len(p), 7)])
}

// TestTemporaryReadErrorIsResumable checks what the event loop relies on
// and Go does not promise: crypto/tls keeps a partial record across a read
// error that is a net.Error with Temporary() true, and resumes it at the
// next Read (crypto/tls conn.go readRecordOrCCS makes every other error
// sticky). If a Go release changes that, this test fails, and the loop
// must not be used with it: run with --relay goroutines (README,
// Performance) until the loop stops depending on it.
func TestTemporaryReadErrorIsResumable(t *testing.T) {
	ca := certstest.NewCA(t)
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	sc := &stutterConn{Conn: b}
	server := tls.Server(sc, &tls.Config{Certificates: []tls.Certificate{ca.ServerCertificate(t, "localhost")}})
	client := tls.Client(a, &tls.Config{ServerName: "localhost", RootCAs: ca.CertPool()})
	errc := make(chan error, 1)
	go func() { errc <- client.Handshake() }()
	require.NoError(t, server.Handshake())
	require.NoError(t, <-errc)

	sc.on = true
	want := strings.Repeat("one record in pieces; ", 40)
	go func() { _, _ = client.Write([]byte(want)) }()
	var got []byte
	buf := make([]byte, 4096)
	for tries := 0; len(got) < len(want) && tries < 10000; tries++ {
		n, err := server.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil && !errors.Is(err, errWouldBlock) {
			t.Fatalf("crypto/tls turned a Temporary() read error into %v", err)
		}
	}
	if string(got) != want {
		t.Fatalf("crypto/tls no longer resumes a read after a Temporary() net.Error "+
			"(got %d of %d bytes): the event-loop relay cannot run on this Go release; "+
			"use --relay goroutines until proxy/internal/eventloop is adapted (README, Performance)", len(got), len(want))
	}
	require.Greater(t, sc.blocks, 1, "no read was interrupted: the test tested nothing")
}
