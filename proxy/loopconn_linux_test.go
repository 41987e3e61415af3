package proxy

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
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
			require.ErrorIs(t, err, errQueueFull)
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
