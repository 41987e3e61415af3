//go:build linux

package eventloop

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pgwarden/pgwarden/internal/netconn"
)

// relayBufSize is the loop's read buffer, shared by all its sessions.
const relayBufSize = 32 << 10

// The descriptors a loop watches are duplicates taken from the Go conns,
// which are then closed, so the runtime's poller no longer watches (and
// wakes for) them.

// loopCmd is a request from another goroutine to a loop.
type loopCmd struct {
	add, close *loopSession
	// do runs on the loop's goroutine: a liveness ping (see alive).
	do func()
}

// eventLoop relays sessions on one goroutine over level-triggered epoll.
// Only the loop's goroutine touches its sessions; other goroutines talk to
// it through post.
type eventLoop struct {
	epfd, wakefd int

	mu       sync.Mutex
	cmds     []loopCmd
	sessions int // for pickLoop, under mu
	stopping bool

	// Owned by the loop goroutine.
	ends    map[int32]*loopSession // by descriptor
	grace   map[*loopSession]struct{}
	buf     []byte
	nextID  uint32
	stopped chan struct{}
}

func newEventLoop() (*eventLoop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		_ = unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wakefd)}); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(wakefd)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	l := &eventLoop{
		epfd:    epfd,
		wakefd:  wakefd,
		ends:    make(map[int32]*loopSession),
		grace:   make(map[*loopSession]struct{}),
		buf:     make([]byte, relayBufSize),
		stopped: make(chan struct{}),
	}
	go l.run()
	return l, nil
}

func (l *eventLoop) load() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sessions
}

// post queues a command and wakes the loop.
func (l *eventLoop) post(c loopCmd) {
	l.mu.Lock()
	l.cmds = append(l.cmds, c)
	if c.add != nil {
		l.sessions++
	}
	l.mu.Unlock()
	l.wake()
}

func (l *eventLoop) wake() {
	var one = [8]byte{1}
	_, _ = unix.Write(l.wakefd, one[:]) // EAGAIN: the counter is already non-zero
}

// stop ends the loop goroutine and waits for it.
func (l *eventLoop) stop() {
	l.mu.Lock()
	l.stopping = true
	l.mu.Unlock()
	l.wake()
	<-l.stopped
}

func (l *eventLoop) run() {
	// The loop blocks in epoll_wait, not in the Go scheduler; keep it on
	// one thread so that thread's wakeups are the only ones it causes.
	runtime.LockOSThread()
	defer close(l.stopped)
	defer unix.Close(l.wakefd)
	defer unix.Close(l.epfd)

	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(l.epfd, events, l.timeout())
		if err != nil && err != unix.EINTR {
			// Cannot happen with a valid epfd and buffer; end every session
			// rather than spin.
			l.failAll(os.NewSyscallError("epoll_wait", err))
			return
		}
		woken := false
		for _, ev := range events[:max(n, 0)] {
			if int(ev.Fd) == l.wakefd {
				woken = true
				continue
			}
			// Pad carries the session's id: a descriptor number reused
			// within this batch cannot reach the wrong session.
			if ls := l.ends[ev.Fd]; ls != nil && ls.id == uint32(ev.Pad) {
				l.dispatch(ls, int(ev.Fd), ev.Events)
			}
		}
		l.expireGrace()
		// Commands run after the batch, so a session added now cannot
		// receive an event meant for a closed descriptor of the same number.
		if woken {
			var cnt [8]byte
			_, _ = unix.Read(l.wakefd, cnt[:])
			if l.runCommands() {
				return
			}
		}
	}
}

// runCommands applies queued adds and closes; it reports whether to stop.
func (l *eventLoop) runCommands() (stop bool) {
	l.mu.Lock()
	cmds := l.cmds
	l.cmds = nil
	stop = l.stopping
	l.mu.Unlock()
	for _, c := range cmds {
		switch {
		case c.add != nil:
			l.add(c.add)
		case c.close != nil:
			if c.close.id != 0 && !c.close.ended {
				l.end(c.close, nil)
			}
		case c.do != nil:
			c.do()
		}
	}
	if stop {
		l.failAll(errors.New("proxy: relay stopped"))
	}
	return stop
}

// add registers a session and relays whatever crypto/tls already holds.
func (l *eventLoop) add(ls *loopSession) {
	l.nextID++
	if l.nextID == 0 {
		l.nextID = 1
	}
	ls.id = l.nextID
	for _, fd := range []int{ls.cfd, ls.ufd} {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd), Pad: int32(ls.id)}
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			l.end(ls, os.NewSyscallError("epoll_ctl", err))
			return
		}
		l.ends[int32(fd)] = ls
	}
	ls.cEvents, ls.uEvents = unix.EPOLLIN, unix.EPOLLIN
	// The authentication relay may have left a pipelined query decrypted
	// (or as a whole record) inside crypto/tls: relay it without waiting
	// for the socket, which may never become readable again for it.
	l.dispatch(ls, ls.cfd, 0)
}

// dispatch handles one epoll event for one of a session's descriptors. A
// panic here costs this session, not the loop and every session on it.
func (l *eventLoop) dispatch(ls *loopSession, fd int, ev uint32) {
	defer func() {
		if r := recover(); r != nil {
			l.end(ls, fmt.Errorf("panic in relay: %v\n%s", r, debug.Stack()))
		}
	}()
	var err error
	if fd == ls.cfd {
		err = ls.onClient(ev)
	} else {
		err = ls.onUpstream(ev)
	}
	if err == nil && !ls.ended {
		err = ls.updateInterest(l.epfd)
	}
	if err != nil || ls.finished() {
		if netconn.IsBenign(err) {
			err = nil
		}
		l.end(ls, err)
		return
	}
	if ls.graceUntil.IsZero() {
		delete(l.grace, ls)
	} else {
		l.grace[ls] = struct{}{}
	}
}

// timeout is epoll_wait's timeout: until the nearest grace deadline.
func (l *eventLoop) timeout() int {
	if len(l.grace) == 0 {
		return -1
	}
	var next time.Time
	for ls := range l.grace {
		if next.IsZero() || ls.graceUntil.Before(next) {
			next = ls.graceUntil
		}
	}
	return max(0, int(time.Until(next)/time.Millisecond)+1)
}

func (l *eventLoop) expireGrace() {
	if len(l.grace) == 0 {
		return
	}
	now := time.Now()
	for ls := range l.grace {
		if !now.Before(ls.graceUntil) {
			l.end(ls, nil)
		}
	}
}

// end closes both sides of a session and wakes the goroutine waiting in
// Relay.Run.
func (l *eventLoop) end(ls *loopSession, err error) {
	if ls.ended {
		return
	}
	ls.ended = true
	for _, fd := range []int{ls.cfd, ls.ufd} {
		if l.ends[int32(fd)] == ls {
			delete(l.ends, int32(fd))
			_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
		}
	}
	delete(l.grace, ls)
	_ = unix.Close(ls.cfd)
	_ = unix.Close(ls.ufd)
	ls.client.out.release()
	ls.toUp.release()
	ls.err = err
	l.mu.Lock()
	l.sessions--
	l.mu.Unlock()
	close(ls.done)
}

// failAll ends every session (the loop is stopping).
func (l *eventLoop) failAll(err error) {
	seen := make(map[*loopSession]bool)
	for _, ls := range l.ends {
		if !seen[ls] {
			seen[ls] = true
			l.end(ls, err)
		}
	}
	l.mu.Lock()
	cmds := l.cmds
	l.cmds = nil
	l.mu.Unlock()
	for _, c := range cmds {
		if c.add != nil {
			l.end(c.add, err)
		}
	}
}
