package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Authenticated sessions are relayed by event loops rather than by two
// goroutines each. A select through the gateway is one small message each
// way; with goroutines each costs a read, a write, a read that returns
// EAGAIN before the goroutine parks, and a trip through the scheduler to
// wake it. A loop on level-triggered epoll reads once per readiness event,
// handles every session that became ready in one epoll_wait, and keeps no
// goroutine or buffer per idle session. Measured on a 2-core VM with pgbench
// -S through a plain TCP relay: about 26 µs of proxy CPU per select with
// goroutines, about 16 µs with one loop (see README, Performance).
//
// The descriptors are duplicates taken from the Go conns, which are then
// closed, so the runtime's poller no longer watches (and wakes for) them.

// relayBufSize is the loop's read buffer, shared by all its sessions.
const relayBufSize = 32 << 10

// loopPool is the set of event loops shared by every Server in the process.
// It starts with the first relayed session and stops when the last Server
// using it shuts down.
var loopPool struct {
	mu    sync.Mutex
	users int
	loops []*eventLoop
}

// loopCount is how many loops to run: one per two cores. A loop is one
// thread doing all its sessions' socket work, most of it in the kernel
// (about 20 µs per query on our 2-core VM), so one loop tops out around
// 50,000 queries a second and a larger machine needs several. Fewer loops
// batch better: on 2 cores one loop cost less CPU per query than two
// (plain-TCP prototype, 16 vs 23 µs).
func loopCount() int { return max(1, runtime.GOMAXPROCS(0)/2) }

// acquireLoops starts the pool if needed and counts the caller as a user.
func acquireLoops() error {
	loopPool.mu.Lock()
	defer loopPool.mu.Unlock()
	if loopPool.users == 0 {
		for range loopCount() {
			l, err := newEventLoop()
			if err != nil {
				for _, l := range loopPool.loops {
					l.stop()
				}
				loopPool.loops = nil
				return err
			}
			loopPool.loops = append(loopPool.loops, l)
		}
	}
	loopPool.users++
	return nil
}

// releaseLoops undoes acquireLoops; the last user stops the loops. Their
// sessions must have ended.
func releaseLoops() {
	loopPool.mu.Lock()
	defer loopPool.mu.Unlock()
	if loopPool.users--; loopPool.users == 0 {
		for _, l := range loopPool.loops {
			l.stop()
		}
		loopPool.loops = nil
	}
}

// pickLoop returns the loop with the fewest sessions.
func pickLoop() *eventLoop {
	loopPool.mu.Lock()
	defer loopPool.mu.Unlock()
	var best *eventLoop
	for _, l := range loopPool.loops {
		if best == nil || l.load() < best.load() {
			best = l
		}
	}
	return best
}

// relayInLoop hands an authenticated session to an event loop and waits for
// it to end. It returns false, having changed nothing, when the session
// cannot be relayed that way (a conn that is not a socket); pipe does it then.
func (s *Server) relayInLoop(sess *session, up net.Conn) bool {
	if sess.clientIO == nil || s.noLoops || !s.useLoops() {
		return false
	}
	cfd, err := dupFD(sess.raw)
	if err != nil {
		return false
	}
	ufd, err := dupFD(up)
	if err != nil {
		_ = unix.Close(cfd)
		return false
	}
	// From here the duplicates own the sockets. Closing the Go conns takes
	// them out of the runtime's poller; the sockets stay open.
	sess.clientIO.handOff(cfd)
	_ = sess.raw.Close()
	_ = up.Close()

	ls := &loopSession{
		srv:    s,
		sess:   sess,
		tls:    sess.tls,
		client: sess.clientIO,
		cfd:    cfd,
		ufd:    ufd,
		done:   make(chan struct{}),
	}
	s.mu.Lock()
	if sess.closed {
		// A drain closed the session while it was being handed over.
		s.mu.Unlock()
		_ = unix.Close(cfd)
		_ = unix.Close(ufd)
		return true
	}
	sess.relay = ls
	ls.loop = pickLoop()
	ls.loop.post(loopCmd{add: ls})
	s.mu.Unlock()

	<-ls.done
	return true
}

// useLoops acquires the loop pool for this Server on first use.
func (s *Server) useLoops() bool {
	s.loopsOnce.Do(func() {
		if err := acquireLoops(); err != nil {
			s.log.Warn("event loops unavailable; relaying with goroutines", zap.Error(err))
			return
		}
		s.loopsAcquired = true
	})
	return s.loopsAcquired
}

// stopLoops releases the pool if this Server used it. Called by Shutdown
// once every session has ended.
func (s *Server) stopLoops() {
	s.loopsOnce.Do(func() {}) // no acquisition after this point
	if s.loopsAcquired {
		s.loopsAcquired = false
		releaseLoops()
	}
}

// closeRelay asks the loop to end a relayed session (drain timeout). A
// session that has ended is left alone: its loop may be gone.
func (sess *session) closeRelay() {
	if sess.relay == nil {
		return
	}
	select {
	case <-sess.relay.done:
	default:
		sess.relay.loop.post(loopCmd{close: sess.relay})
	}
}

// dupFD returns a close-on-exec duplicate of c's socket descriptor. The
// duplicate shares the open file, so it is non-blocking like the original.
func dupFD(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("%T is not a socket", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, os.NewSyscallError("fcntl", derr)
	}
	return nfd, nil
}

// loopCmd is a request from another goroutine to a loop.
type loopCmd struct {
	add, close *loopSession
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
		if isBenignNetErr(err) {
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
// relayInLoop.
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
	ls.sess.relayErr = err
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

// loopSession is one authenticated session inside a loop: the client's
// socket under crypto/tls, postgres's socket in plaintext.
type loopSession struct {
	srv    *Server
	sess   *session
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
	done               chan struct{}
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
		// Whatever crypto/tls writes during this Read is its own
		// (clientguard.go): the loop's tls.Writes happen elsewhere.
		guard.ownWrites = true
		n, err := ls.tls.Read(buf)
		guard.ownWrites = false
		if guard.err != nil {
			// A refused reply or alert; crypto/tls itself would only
			// report it at the next tls.Write.
			return guard.err
		}
		if n > 0 {
			ls.sess.bytesToUpstream += int64(n)
			ls.srv.bytesUp.Add(float64(n))
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
	ls.sess.bytesToClient += int64(n)
	ls.srv.bytesDown.Add(float64(n))
	_, err = ls.tls.Write(buf[:n])
	return err
}

func (ls *loopSession) startGrace() {
	if ls.graceUntil.IsZero() {
		ls.graceUntil = time.Now().Add(closeGrace)
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
