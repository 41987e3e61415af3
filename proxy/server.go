package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/internal/netconn"
	"github.com/pgwarden/pgwarden/proxy/internal/relay"
)

// Server relays admitted connections for one route. Serve may be called for
// several listeners; Shutdown stops them all and drains the sessions.
type Server struct {
	cfg  Config
	tun  atomic.Pointer[Tunables] // what a reload may change (tunables.go)
	log  *zap.Logger
	logs *logSampler // for connection lines (logsample.go)

	bytesUp, bytesDown Counter

	// ctx is every connection's context until authentication; a forced
	// end of a drain cancels it, so connections waiting for an
	// authentication slot or a dial stop too.
	ctx       context.Context
	cancelCtx context.CancelFunc

	mu           sync.Mutex
	shuttingDown bool
	listeners    map[net.Listener]*acceptLoop
	sessions     map[*session]struct{}
	startups     int
	startupsByIP map[netip.Addr]int
	handlers     sync.WaitGroup

	// relay moves authenticated sessions' bytes (relay.go).
	relay relay.Relay
}

// New checks cfg and returns a Server ready to Serve.
func New(cfg Config) (*Server, error) {
	if err := cfg.checkAndSetDefaults(); err != nil {
		return nil, err
	}
	rl, err := newRelay(cfg.Relay, cfg.Logger)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		relay:        rl,
		ctx:          ctx,
		cancelCtx:    cancel,
		cfg:          cfg,
		log:          cfg.Logger,
		logs:         newLogSampler(cfg.LogSampling, cfg.Logger, cfg.Name),
		bytesUp:      cfg.Metrics.BytesCounter(cfg.Name, true),
		bytesDown:    cfg.Metrics.BytesCounter(cfg.Name, false),
		listeners:    make(map[net.Listener]*acceptLoop),
		sessions:     make(map[*session]struct{}),
		startupsByIP: make(map[netip.Addr]int),
	}
	tun := cfg.tunables()
	s.tun.Store(&tun)
	return s, nil
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("proxy: server closed")

// Serve accepts connections from ln until Shutdown. ln is expected to apply
// the accept-time policy (acl.Listener): every conn it returns is admitted.
// Temporary accept errors (EMFILE and the like) back off from 5 ms to 1 s
// rather than spin.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.shuttingDown {
		s.mu.Unlock()
		_ = ln.Close()
		return ErrServerClosed
	}
	loop := newAcceptLoop(ln)
	s.listeners[ln] = loop
	s.mu.Unlock()

	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.closing() {
				return ErrServerClosed
			}
			if loop.answer(err) {
				continue // a liveness poke (alive.go), not a failure
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || !errors.Is(err, net.ErrClosed) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; backing off", zap.Error(err), zap.Duration("backoff", backoff))
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		s.mu.Lock()
		if s.shuttingDown {
			s.mu.Unlock()
			netconn.ResetClose(conn)
			return ErrServerClosed
		}
		s.handlers.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.handlers.Done()
			s.handle(s.ctx, conn)
		}()
	}
}

func (s *Server) closing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shuttingDown
}

// Shutdown closes the listeners at once, so new connections are refused,
// and lets sessions in flight run until they end or ctx is done; then it
// closes what is left and waits for the handlers to return. It returns
// ctx.Err() if sessions had to be cut.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shuttingDown = true
	for ln := range s.listeners {
		_ = ln.Close()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() { s.handlers.Wait(); close(done) }()
	select {
	case <-done:
		s.cancelCtx()
		s.relay.Stop()
		s.logs.stop()
		return nil
	case <-ctx.Done():
	}
	s.cancelCtx()
	s.mu.Lock()
	n := len(s.sessions)
	for sess := range s.sessions {
		s.closeConnsLocked(sess)
	}
	s.mu.Unlock()
	s.log.Warn("drain timeout: closed sessions still open", zap.Int("sessions", n))
	<-done
	s.relay.Stop()
	s.logs.stop()
	return ctx.Err()
}

// Sessions reports the connections being handled now.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// startupSlot is a connection's place under the pre-authentication caps:
// first under MaxStartups, taken at once, then under MaxStartupsPerIP once
// the connection's source is known (after a load balancer's PROXY header,
// so clients behind one balancer each get their own cap, and a balancer
// slow to send headers still counts toward the global one).
type startupSlot struct {
	s      *Server
	ip     netip.Addr
	source bool // counted under ip
	once   sync.Once
}

// acquireStartup takes a global pre-authentication slot without waiting.
// The session is tracked from here on so Shutdown can close it.
func (s *Server) acquireStartup() (*startupSlot, bool) {
	limit := s.tun.Load().MaxStartups
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.startups >= limit {
		return nil, false
	}
	s.startups++
	return &startupSlot{s: s}, true
}

// bindSource counts the slot under its source ip too, without waiting.
func (sl *startupSlot) bindSource(ip netip.Addr) bool {
	s := sl.s
	limit := s.tun.Load().MaxStartupsPerIP
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.startupsByIP[ip] >= limit {
		return false
	}
	s.startupsByIP[ip]++
	sl.ip, sl.source = ip, true
	return true
}

// release frees the slot; calls after the first do nothing.
func (sl *startupSlot) release() {
	sl.once.Do(func() {
		s := sl.s
		s.mu.Lock()
		defer s.mu.Unlock()
		s.startups--
		if !sl.source {
			return
		}
		if s.startupsByIP[sl.ip]--; s.startupsByIP[sl.ip] <= 0 {
			delete(s.startupsByIP, sl.ip)
		}
	})
}

// track registers a session for forced close at the end of a drain.
func (s *Server) track(sess *session) {
	s.mu.Lock()
	s.sessions[sess] = struct{}{}
	s.mu.Unlock()
}

// setUpstream records the upstream conn so a forced close reaches it too.
// If a drain already closed the session, the new conn is closed at once.
func (s *Server) setUpstream(sess *session, up net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess.upstream = up
	if sess.closed {
		_ = up.Close()
	}
}

// closeConns closes both sides of a finished session and forgets it.
func (s *Server) closeConns(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closeConnsLocked(sess)
	delete(s.sessions, sess)
}

func (s *Server) closeConnsLocked(sess *session) {
	sess.closed = true
	_ = sess.raw.Close()
	if sess.upstream != nil {
		_ = sess.upstream.Close()
	}
	if sess.relayed != nil {
		sess.relayed.Close()
	}
}
