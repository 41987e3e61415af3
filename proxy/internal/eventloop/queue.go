//go:build linux

package eventloop

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/pgwarden/pgwarden/proxy/internal/relay"
)

// outBufSize is the capacity of a pooled pending-output buffer, and
// outBufMax the most one queue may hold: the buffer is never grown.
//
// Why 64 KiB is ample. The loop reads neither side while the client's queue
// holds anything, nor the client while postgres's does, so a queue takes
// the output of one tls.Read or tls.Write at most before it drains:
//   - toward postgres, one tls.Read: at most one record's plaintext, 16 KiB;
//   - toward the client, either one relayed read from postgres
//     (relayBufSize, 32 KiB) encrypted by tls.Write, which adds at most
//     about 1 KiB of record overhead (a record per 1 KiB or more, 21 to 29
//     bytes each with the AEAD suites we allow), or what crypto/tls writes
//     on its own during one tls.Read: at most 16 KeyUpdate replies of 26
//     bytes (it allows 16 records without data in a row) and one alert.
//
// So a queue holds at most about 34 KiB. Anything that would take it past
// outBufMax is a broken assumption, and ends the session (relay.ErrQueueFull)
// rather than grow it.
const (
	outBufSize = 64 << 10
	outBufMax  = outBufSize
)

var outBufs = sync.Pool{New: func() any { b := make([]byte, 0, outBufSize); return &b }}

// queuePeak is the most any queue has held since the process started:
// tests read it to check the bound above under attack.
var queuePeak atomic.Int64

// QueueMax is the most a loop's queue toward one socket may hold.
const QueueMax = outBufMax

// QueuePeak is the most any loop's queue has held since ResetQueuePeak.
func QueuePeak() int64 { return queuePeak.Load() }

// ResetQueuePeak starts a new QueuePeak measurement.
func ResetQueuePeak() { queuePeak.Store(0) }

// outBuf holds bytes the kernel has not yet taken for one socket. It is
// empty, and holds no memory, whenever the socket keeps up, which is the
// usual case; a pooled buffer is borrowed only while a peer reads slower
// than the other side writes.
type outBuf struct {
	buf *[]byte
	off int
}

func (o *outBuf) empty() bool { return o.buf == nil }

// write sends p to fd, or queues what the socket does not take now. Once
// something is queued, later bytes queue behind it: order is preserved.
// It refuses, queueing nothing, what would take the queue past outBufMax.
func (o *outBuf) write(fd int, p []byte) error {
	if o.buf == nil {
		n, err := writeSome(fd, p)
		if err != nil {
			return err
		}
		p = p[n:]
		if len(p) == 0 {
			return nil
		}
		if len(p) > outBufMax {
			return fmt.Errorf("queueing %d bytes: %w", len(p), relay.ErrQueueFull)
		}
		o.buf = outBufs.Get().(*[]byte)
		o.off = 0
	}
	queued := len(*o.buf) - o.off
	if queued+len(p) > outBufMax {
		return fmt.Errorf("queueing %d bytes behind %d: %w", len(p), queued, relay.ErrQueueFull)
	}
	if o.off > 0 && len(*o.buf)+len(p) > cap(*o.buf) {
		// Reuse the part already sent rather than grow.
		*o.buf = (*o.buf)[:copy(*o.buf, (*o.buf)[o.off:])]
		o.off = 0
	}
	*o.buf = append(*o.buf, p...)
	for q := int64(queued + len(p)); ; {
		if peak := queuePeak.Load(); q <= peak || queuePeak.CompareAndSwap(peak, q) {
			return nil
		}
	}
}

// flush sends as much of the queue as fd takes now.
func (o *outBuf) flush(fd int) error {
	if o.buf == nil {
		return nil
	}
	n, err := writeSome(fd, (*o.buf)[o.off:])
	if err != nil {
		return err
	}
	o.off += n
	if o.off == len(*o.buf) {
		o.release()
	}
	return nil
}

// release drops whatever is queued and returns the buffer to the pool.
func (o *outBuf) release() {
	if o.buf == nil {
		return
	}
	if cap(*o.buf) == outBufSize {
		*o.buf = (*o.buf)[:0]
		outBufs.Put(o.buf)
	}
	o.buf, o.off = nil, 0
}

// writeSome writes what the non-blocking socket takes now; a full socket
// buffer is n == 0 and no error.
func writeSome(fd int, p []byte) (int, error) {
	for {
		n, err := rawIO(unix.SYS_WRITE, fd, p)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return 0, nil
		case err != nil:
			return 0, os.NewSyscallError("write", err)
		}
		return n, nil
	}
}

// readSocket makes one read(2) on a non-blocking socket: errWouldBlock
// when nothing is waiting, io.EOF at the end of the stream.
func readSocket(fd int, p []byte) (int, error) {
	for {
		n, err := rawIO(unix.SYS_READ, fd, p)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return 0, errWouldBlock
		case err != nil:
			return 0, os.NewSyscallError("read", err)
		case n == 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

// rawIO is read(2) or write(2) (trap) on a non-blocking socket without the
// Go scheduler's syscall bookkeeping: it never blocks, and the loop that
// calls it owns its thread, so there is no P to hand off.
func rawIO(trap uintptr, fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, errno := unix.RawSyscall(trap, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
