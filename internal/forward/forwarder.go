package forward

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Forwarder accepts local plaintext clients and carries each to the gateway
// over TLS. Serve it on one or more listeners, then Shutdown and Drain.
type Forwarder struct {
	cfg     Config
	log     *zap.Logger
	cancels *cancelRegistry
	slots   chan struct{}
	// refusals bounds the goroutines telling clients past MaxConns why
	// they are refused; past it they are closed without a word.
	refusals chan struct{}
	nextID   atomic.Uint64

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	sessions  map[*session]struct{}
	closing   bool
	wg        sync.WaitGroup
	shutdown  sync.Once
}

// New checks cfg and returns a Forwarder.
func New(cfg Config) (*Forwarder, error) {
	if err := cfg.checkAndSetDefaults(); err != nil {
		return nil, err
	}
	return &Forwarder{
		cfg:       cfg,
		log:       cfg.Logger,
		cancels:   newCancelRegistry(),
		slots:     make(chan struct{}, cfg.MaxConns),
		refusals:  make(chan struct{}, maxRefusals),
		listeners: map[net.Listener]struct{}{},
		sessions:  map[*session]struct{}{},
	}, nil
}

// Serve accepts connections on ln until Shutdown (then it returns nil) or
// a permanent accept error. Temporary errors (out of file descriptors) back
// off from 5 ms to 1 s, as net/http does.
func (f *Forwarder) Serve(ln net.Listener) error {
	f.mu.Lock()
	if f.closing {
		f.mu.Unlock()
		_ = ln.Close()
		return nil
	}
	f.listeners[ln] = struct{}{}
	f.mu.Unlock()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if f.isClosing() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				f.log.Warn("accept failed; retrying", zap.Error(err), zap.Duration("backoff", backoff))
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		select {
		case f.slots <- struct{}{}:
		default:
			// Refuse rather than queue, as cloud-sql-proxy does: the client
			// learns at once, and nothing accumulates.
			f.log.Warn("too many local connections; refusing one", zap.Int("max", f.cfg.MaxConns))
			f.refuse(c)
			continue
		}
		f.wg.Add(1)
		go f.handle(c)
	}
}

// maxRefusals is how many refused clients may be told why at once.
const maxRefusals = 64

// refuse tells a client past MaxConns why it is refused, in a goroutine of
// its own so the accept loop goes on; when too many refusals are already
// being sent, it just closes.
func (f *Forwarder) refuse(c net.Conn) {
	select {
	case f.refusals <- struct{}{}:
		go func() {
			defer func() { <-f.refusals }()
			sendFatal(c, &fatalError{code: codeTooManyConns, message: "pgwarden connect: too many connections"})
		}()
	default:
		_ = c.Close()
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// Shutdown closes every listener: new connections are refused, sessions in
// flight continue. It is safe to call more than once.
func (f *Forwarder) Shutdown() {
	f.shutdown.Do(func() {
		f.mu.Lock()
		f.closing = true
		lns := make([]net.Listener, 0, len(f.listeners))
		for ln := range f.listeners {
			lns = append(lns, ln)
		}
		f.mu.Unlock()
		for _, ln := range lns {
			_ = ln.Close()
		}
	})
}

// Drain waits for the sessions in flight to end; when ctx ends first it
// closes them and waits for their goroutines. It returns the number of
// sessions it had to close.
func (f *Forwarder) Drain(ctx context.Context) int {
	done := make(chan struct{})
	go func() {
		f.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return 0
	case <-ctx.Done():
	}
	f.mu.Lock()
	n := len(f.sessions)
	for s := range f.sessions {
		s.closeAll()
	}
	f.mu.Unlock()
	<-done
	return n
}

// Sessions is the number of local connections being handled.
func (f *Forwarder) Sessions() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sessions)
}

func (f *Forwarder) isClosing() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closing
}

func (f *Forwarder) track(s *session) {
	f.mu.Lock()
	f.sessions[s] = struct{}{}
	f.mu.Unlock()
}

func (f *Forwarder) untrack(s *session) {
	f.mu.Lock()
	delete(f.sessions, s)
	f.mu.Unlock()
}

// Run serves lns until ctx ends or one of them fails, then closes them all
// and lets sessions in flight finish for at most drain before closing them.
// It returns the listener's failure, if one ended it.
func (f *Forwarder) Run(ctx context.Context, lns []net.Listener, drain time.Duration) error {
	serveErr := make(chan error, len(lns))
	for _, ln := range lns {
		go func() { serveErr <- f.Serve(ln) }()
	}
	var err error
	select {
	case <-ctx.Done():
		f.log.Info("shutting down: listeners closed, draining sessions", zap.Int("sessions", f.Sessions()), zap.Duration("drain_timeout", drain))
	case err = <-serveErr:
		f.log.Error("listener failed", zap.Error(err))
	}
	f.Shutdown()
	dctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	if n := f.Drain(dctx); n > 0 {
		f.log.Warn("drain timeout passed; remaining sessions closed", zap.Int("sessions", n))
	}
	return err
}
