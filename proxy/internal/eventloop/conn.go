//go:build linux

package eventloop

import (
	"net"
	"time"

	"github.com/pgwarden/pgwarden/proxy/internal/relay"
)

// loopConn is the client's connection as crypto/tls sees it. Until the
// session is authenticated it passes everything through to the accepted
// conn, blocking, under the pre-authentication deadlines; the goroutine
// relay goes on using it that way, through its guard (a session that
// cannot be handed to a loop is relayed by relay.Pipe). Once the session is
// handed to an event loop (handOff), it reads and writes the socket itself,
// without blocking:
//
//   - Read makes at most one read(2) per readiness event (the loop arms it
//     with allowRead) and reports "would block" as a temporary net.Error.
//     crypto/tls keeps a partial record across a temporary error and
//     resumes it on the next Read, exactly as it does for a read deadline.
//   - Write never blocks and never fails for a full socket buffer: what the
//     kernel does not take waits in out until the loop sees the socket
//     writable again. crypto/tls makes every write error permanent, so this
//     is the only correct way to give it a non-blocking socket. The loop
//     keeps out small (it reads neither side while out holds anything) and
//     out refuses to grow past outBufMax.
//   - Deadlines and Close are no-ops: the loop owns the descriptor.
type loopConn struct {
	net.Conn
	fd      int // -1 until handOff
	mayRead bool
	out     outBuf
	guard   relay.Guard
}

func newLoopConn(c net.Conn) *loopConn { return &loopConn{Conn: c, fd: -1} }

// Guard is the guard of crypto/tls's own writes (relay.Guarded).
func (c *loopConn) Guard() *relay.Guard { return &c.guard }

// handOff switches the conn to non-blocking use of fd, a descriptor of the
// same socket that the Go runtime's poller does not know.
func (c *loopConn) handOff(fd int) { c.fd = fd }

// allowRead permits the next Read one read(2): the loop calls it when epoll
// reports the socket readable.
func (c *loopConn) allowRead() { c.mayRead = true }

func (c *loopConn) Read(p []byte) (int, error) {
	if c.fd < 0 {
		return c.guard.Read(c.Conn, p)
	}
	if !c.mayRead {
		return 0, errWouldBlock
	}
	c.mayRead = false
	return readSocket(c.fd, p)
}

func (c *loopConn) Write(p []byte) (int, error) {
	if c.fd < 0 {
		return c.guard.Write(c.Conn, p)
	}
	if err := c.guard.CheckWrite(); err != nil {
		return 0, err
	}
	if err := c.out.write(c.fd, p); err != nil {
		return 0, c.guard.Fail(err)
	}
	return len(p), nil
}

func (c *loopConn) Close() error {
	if c.fd < 0 {
		return c.Conn.Close()
	}
	return nil
}

func (c *loopConn) SetDeadline(t time.Time) error {
	if c.fd < 0 {
		return c.Conn.SetDeadline(t)
	}
	return nil
}

func (c *loopConn) SetReadDeadline(t time.Time) error {
	if c.fd < 0 {
		return c.Conn.SetReadDeadline(t)
	}
	return nil
}

func (c *loopConn) SetWriteDeadline(t time.Time) error {
	if c.fd < 0 {
		return c.Conn.SetWriteDeadline(t)
	}
	return nil
}

// wouldBlock is the temporary error a loopConn returns when the socket has
// nothing more to read for now. It must satisfy net.Error with Temporary()
// true: that is what tells crypto/tls not to make the error sticky.
type wouldBlock struct{}

func (wouldBlock) Error() string   { return "proxy: read would block" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

var errWouldBlock net.Error = wouldBlock{}
