//go:build linux

package eventloop

import (
	"crypto/tls"
	"errors"
	"io"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pgwarden/pgwarden/proxy/internal/relay"
)

// loopSession is one authenticated session inside a loop: the client's
// socket under crypto/tls, postgres's socket in plaintext.
type loopSession struct {
	s      *relay.Session
	loop   *eventLoop
	id     uint32
	tls    *tls.Conn
	client *loopConn // under tls; holds the client's pending output
	cfd    int
	ufd    int
	toUp   outBuf // plaintext postgres has not taken yet

	cEvents, uEvents uint32 // registered epoll interest

	// clientDone: the client finished sending (close_notify or FIN); the
	// write side toward postgres is shut once toUp drains. upDone: postgres
	// closed; the client gets close_notify and the session ends once the
	// client's output drains. Either starts a grace period after which the
	// session ends regardless, so a silent peer cannot hold it.
	clientDone, upDone bool
	upShut             bool
	graceUntil         time.Time
	ended              bool
	err                error // why the loop ended the session, if it did
	done               chan struct{}
}

// close asks the loop to end the session (Session.Close: a drain ran out of
// time). A session that has ended is left alone: its loop may be gone.
func (ls *loopSession) close() {
	select {
	case <-ls.done:
	default:
		ls.loop.post(loopCmd{close: ls})
	}
}

// onClient handles readiness of the client's socket.
func (ls *loopSession) onClient(ev uint32) error {
	if ev&unix.EPOLLERR != 0 {
		return sockErr(ls.cfd)
	}
	drained := false
	if ev&unix.EPOLLOUT != 0 {
		if err := ls.client.out.flush(ls.cfd); err != nil {
			return err
		}
		// The client was not read while its queue was not empty; crypto/tls
		// may hold its records, decrypted or whole, that no socket event
		// will announce.
		drained = ls.client.out.empty()
	}
	readable := ev == 0 || ev&(unix.EPOLLIN|unix.EPOLLHUP) != 0 && ls.cEvents&unix.EPOLLIN != 0
	if readable || drained {
		if readable && ev != 0 {
			ls.client.allowRead()
		}
		if err := ls.readClient(); err != nil {
			return err
		}
	} else if ev&unix.EPOLLHUP != 0 {
		// Gone both ways while we were not reading it (back-pressure).
		return io.EOF
	}
	return ls.shutUpstreamIfDone()
}

// readClient decrypts what the client sent and passes it to postgres. It
// stops when crypto/tls needs another read(2) (the loop comes back on the
// next readiness event), when postgres stops taking data, or when anything
// waits to go to the client: reading the client can make crypto/tls write
// to it (a KeyUpdate reply, an alert), so a client that does not take its
// output is not read (see outBufMax).
func (ls *loopSession) readClient() error {
	buf := ls.loop.buf
	guard := &ls.client.guard
	for ls.toUp.empty() && ls.client.out.empty() && !ls.clientDone {
		// Whatever crypto/tls writes during this Read is its own (see
		// relay.Guard): the loop's tls.Writes happen elsewhere. A reply the
		// guard refused ends the session here.
		n, err := guard.ReadOwn(ls.tls, buf)
		if refused := guard.Refused(); refused != nil {
			return refused
		}
		if n > 0 {
			ls.s.BytesToUpstream += int64(n)
			ls.s.Up.Add(float64(n))
			if werr := ls.toUp.write(ls.ufd, buf[:n]); werr != nil {
				return werr
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, errWouldBlock):
			return nil
		case errors.Is(err, io.EOF):
			// close_notify, or a FIN at a record boundary: pass the end on
			// as a half-close once postgres has everything.
			ls.clientDone = true
			ls.startGrace()
		default:
			return err
		}
	}
	return nil
}

// shutUpstreamIfDone half-closes toward postgres once the client is done
// and everything it sent has been delivered; postgres answers by closing.
func (ls *loopSession) shutUpstreamIfDone() error {
	if ls.clientDone && !ls.upShut && ls.toUp.empty() {
		ls.upShut = true
		if err := unix.Shutdown(ls.ufd, unix.SHUT_WR); err != nil {
			return os.NewSyscallError("shutdown", err)
		}
	}
	return nil
}

// onUpstream handles readiness of postgres's socket.
func (ls *loopSession) onUpstream(ev uint32) error {
	if ev&unix.EPOLLERR != 0 {
		return sockErr(ls.ufd)
	}
	if ev&unix.EPOLLOUT != 0 {
		if err := ls.toUp.flush(ls.ufd); err != nil {
			return err
		}
		// crypto/tls may hold more of the client's data, decrypted or as
		// whole records, that no socket event will announce.
		if err := ls.readClient(); err != nil {
			return err
		}
		if err := ls.shutUpstreamIfDone(); err != nil {
			return err
		}
	}
	// Read postgres only while the client's queue is empty, even if this
	// event was armed before something was queued in the same batch.
	if ev&(unix.EPOLLIN|unix.EPOLLHUP) != 0 && ls.uEvents&unix.EPOLLIN != 0 && ls.client.out.empty() {
		return ls.readUpstream()
	}
	if ev&unix.EPOLLHUP != 0 {
		return io.EOF
	}
	return nil
}

// readUpstream makes one read(2) from postgres and encrypts it to the
// client. Level-triggered epoll brings the loop back if more is waiting.
func (ls *loopSession) readUpstream() error {
	buf := ls.loop.buf
	n, err := readSocket(ls.ufd, buf)
	switch {
	case errors.Is(err, errWouldBlock):
		return nil
	case errors.Is(err, io.EOF):
		// postgres has closed: the session is over. Tell the client
		// (close_notify) and end once that has been sent.
		ls.upDone = true
		_ = ls.tls.CloseWrite()
		ls.startGrace()
		return nil
	case err != nil:
		return err
	}
	ls.s.BytesToClient += int64(n)
	ls.s.Down.Add(float64(n))
	_, err = ls.tls.Write(buf[:n])
	return err
}

func (ls *loopSession) startGrace() {
	if ls.graceUntil.IsZero() {
		ls.graceUntil = time.Now().Add(relay.CloseGrace)
	}
}

// finished reports a session with nothing left to do.
func (ls *loopSession) finished() bool {
	return ls.upDone && ls.client.out.empty()
}

// updateInterest sets what each socket is watched for: read a side only
// while the other side keeps up (back-pressure), and the client only while
// its own queue is empty too (readClient says why); watch for writability
// only while output is queued.
func (ls *loopSession) updateInterest(epfd int) error {
	var c, u uint32
	if !ls.clientDone && ls.toUp.empty() && ls.client.out.empty() {
		c |= unix.EPOLLIN
	}
	if !ls.client.out.empty() {
		c |= unix.EPOLLOUT
	}
	if !ls.upDone && ls.client.out.empty() {
		u |= unix.EPOLLIN
	}
	if !ls.toUp.empty() {
		u |= unix.EPOLLOUT
	}
	if c != ls.cEvents {
		if err := modInterest(epfd, ls.cfd, ls.id, c); err != nil {
			return err
		}
		ls.cEvents = c
	}
	if u != ls.uEvents {
		if err := modInterest(epfd, ls.ufd, ls.id, u); err != nil {
			return err
		}
		ls.uEvents = u
	}
	return nil
}

func modInterest(epfd, fd int, id uint32, events uint32) error {
	ev := unix.EpollEvent{Events: events, Fd: int32(fd), Pad: int32(id)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_MOD, fd, &ev); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

// sockErr reads a socket's pending error (EPOLLERR).
func sockErr(fd int) error {
	errno, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return os.NewSyscallError("getsockopt", err)
	}
	if errno == 0 {
		return io.EOF
	}
	return os.NewSyscallError("read", syscall.Errno(errno))
}
