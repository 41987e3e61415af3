package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Liveness, for a supervisor's watchdog (systemd's WatchdogSec): is every
// goroutine that serves many connections still getting round to its work?
// Those are the accept loops (one per listener) and the relay's event
// loops. Each is asked directly and answers from its own goroutine, so a
// loop that is stuck (a deadlock, a livelock, a blocked syscall) fails the
// check however healthy the rest of the process is; a heartbeat from a
// goroutine of its own would keep beating through that.
//
// An accept loop spends its idle time blocked in Accept, so it is poked:
// the listener's deadline is set to now, Accept returns a timeout at once,
// and the loop answers, clears the deadline and accepts again. A listener
// without deadlines cannot be poked; it counts as alive.

// deadliner is a listener whose Accept can be woken by a deadline
// (*net.TCPListener, *net.UnixListener, acl.Listener over either).
type deadliner interface {
	SetDeadline(t time.Time) error
}

// acceptLoop is one Serve loop's side of the liveness check.
type acceptLoop struct {
	ln deadliner // nil when the listener has no deadlines

	mu      sync.Mutex
	pending chan struct{} // closed by the loop when it answers; nil when no poke is pending
}

func newAcceptLoop(ln net.Listener) *acceptLoop {
	d, ok := ln.(deadliner)
	if !ok || d.SetDeadline(time.Time{}) != nil {
		return &acceptLoop{}
	}
	return &acceptLoop{ln: d}
}

// poke wakes the loop and returns a channel closed when it has answered.
func (a *acceptLoop) poke() <-chan struct{} {
	if a.ln == nil {
		done := make(chan struct{})
		close(done)
		return done
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pending == nil {
		a.pending = make(chan struct{})
	}
	// Under the lock, so the loop's answer (which clears the deadline
	// under it too) cannot fall between the pending channel and the
	// deadline that wakes it.
	_ = a.ln.SetDeadline(time.Now())
	return a.pending
}

// answer is the loop's reaction to an Accept error: a timeout on a
// listener with deadlines is a poke (or its late echo), answered here, and
// the loop goes on accepting.
func (a *acceptLoop) answer(err error) bool {
	var ne net.Error
	if a.ln == nil || !errors.As(err, &ne) || !ne.Timeout() {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	_ = a.ln.SetDeadline(time.Time{})
	if a.pending != nil {
		close(a.pending)
		a.pending = nil
	}
	return true
}

// Alive returns nil when every accept loop of the server and every event
// loop of its relay answer before ctx ends; otherwise which did not.
func (s *Server) Alive(ctx context.Context) error {
	s.mu.Lock()
	if s.shuttingDown {
		s.mu.Unlock()
		return nil // the accept loops have ended on purpose
	}
	type waiting struct {
		addr net.Addr
		done <-chan struct{}
	}
	var loops []waiting
	for ln, loop := range s.listeners {
		loops = append(loops, waiting{ln.Addr(), loop.poke()})
	}
	s.mu.Unlock()
	for _, w := range loops {
		select {
		case <-w.done:
		case <-ctx.Done():
			return fmt.Errorf("route %s: the accept loop of %s has not answered: %w", s.cfg.Name, w.addr, context.Cause(ctx))
		}
	}
	if err := s.relay.Alive(ctx); err != nil {
		return fmt.Errorf("route %s: %w", s.cfg.Name, err)
	}
	return nil
}
