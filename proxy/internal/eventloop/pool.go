//go:build linux

package eventloop

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"sync"
	"syscall"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/pgwarden/pgwarden/proxy/internal/relay"
)

// Supported reports whether event loops exist on this system.
const Supported = true

// pool is the set of event loops shared by every Relay in the process. It
// starts with the first relayed session and stops when the last Relay
// using it stops.
var pool struct {
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
	pool.mu.Lock()
	defer pool.mu.Unlock()
	if pool.users == 0 {
		for range loopCount() {
			l, err := newEventLoop()
			if err != nil {
				for _, l := range pool.loops {
					l.stop()
				}
				pool.loops = nil
				return err
			}
			pool.loops = append(pool.loops, l)
		}
	}
	pool.users++
	return nil
}

// releaseLoops undoes acquireLoops; the last user stops the loops. Their
// sessions must have ended.
func releaseLoops() {
	pool.mu.Lock()
	defer pool.mu.Unlock()
	if pool.users--; pool.users == 0 {
		for _, l := range pool.loops {
			l.stop()
		}
		pool.loops = nil
	}
}

// pickLoop returns the loop with the fewest sessions.
func pickLoop() *eventLoop {
	pool.mu.Lock()
	defer pool.mu.Unlock()
	var best *eventLoop
	for _, l := range pool.loops {
		if best == nil || l.load() < best.load() {
			best = l
		}
	}
	return best
}

// Sessions reports how many sessions the event loops relay now.
func Sessions() int {
	pool.mu.Lock()
	defer pool.mu.Unlock()
	n := 0
	for _, l := range pool.loops {
		n += l.load()
	}
	return n
}

// alive posts a command to every loop of the process and waits until each
// has run it, or ctx ends. A loop answers between two epoll_wait batches,
// so one stuck in a session's work (or dead) does not answer, however idle
// the others are; a loop blocked in epoll_wait is woken by the command.
func alive(ctx context.Context) error {
	pool.mu.Lock()
	loops := slices.Clone(pool.loops)
	pool.mu.Unlock()
	answered := make([]chan struct{}, len(loops))
	for i, l := range loops {
		ch := make(chan struct{})
		answered[i] = ch
		l.post(loopCmd{do: func() { close(ch) }})
	}
	for i, ch := range answered {
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("event loop %d of %d has not answered: %w", i+1, len(loops), context.Cause(ctx))
		}
	}
	return nil
}

// Relay is the event-loop relay. It acquires the process's loops with its
// first session and releases them at Stop; if they cannot be created it
// relays with goroutines instead, and says so once.
type Relay struct {
	log      *zap.Logger
	once     sync.Once
	acquired bool
	// added, if set, is told of every session handed to a loop (tests).
	added func(*loopSession)
}

// New returns an event-loop relay; log receives the warning if the loops
// cannot be created.
func New(log *zap.Logger) (*Relay, error) {
	if log == nil {
		log = zap.NewNop()
	}
	return &Relay{log: log}, nil
}

// Wrap returns the conn crypto/tls runs over: pass-through until the
// session is handed to a loop.
func (r *Relay) Wrap(raw net.Conn) net.Conn { return newLoopConn(raw) }

// Run hands an authenticated session to a loop and waits for it to end. A
// session whose conns are not sockets (or that was not wrapped here) is
// relayed by relay.Pipe instead.
func (r *Relay) Run(s *relay.Session) error {
	lc, ok := s.Client.NetConn().(*loopConn)
	if !ok || !r.use() {
		return relay.Pipe(s)
	}
	cfd, err := dupFD(s.Raw)
	if err != nil {
		return relay.Pipe(s)
	}
	ufd, err := dupFD(s.Upstream)
	if err != nil {
		_ = unix.Close(cfd)
		return relay.Pipe(s)
	}
	// From here the duplicates own the sockets. Closing the Go conns takes
	// them out of the runtime's poller (which no longer wakes for them);
	// the sockets stay open.
	lc.handOff(cfd)
	_ = s.Raw.Close()
	_ = s.Upstream.Close()

	ls := &loopSession{
		s:      s,
		tls:    s.Client,
		client: lc,
		cfd:    cfd,
		ufd:    ufd,
		done:   make(chan struct{}),
	}
	started := s.Start(func() func() {
		ls.loop = pickLoop()
		ls.loop.post(loopCmd{add: ls})
		return ls.close
	})
	if !started {
		// The session was closed (a drain) while it was being handed over.
		_ = unix.Close(cfd)
		_ = unix.Close(ufd)
		return nil
	}
	if r.added != nil {
		r.added(ls)
	}
	<-ls.done
	return ls.err
}

// use acquires the loop pool for this Relay on first use.
func (r *Relay) use() bool {
	r.once.Do(func() {
		if err := acquireLoops(); err != nil {
			r.log.Warn("event loops unavailable; relaying with goroutines", zap.Error(err))
			return
		}
		r.acquired = true
	})
	return r.acquired
}

// Alive checks every event loop of the process (they are shared by all
// relays), see alive.
func (r *Relay) Alive(ctx context.Context) error { return alive(ctx) }

// Stop releases the pool if this Relay used it; every session of it has
// ended.
func (r *Relay) Stop() {
	r.once.Do(func() {}) // no acquisition after this point
	if r.acquired {
		r.acquired = false
		releaseLoops()
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
