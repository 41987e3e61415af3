package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Admission of authentications.
//
// A connection that reaches the authentication phase costs postgres a
// backend, and a backend still authenticating holds one of max_connections'
// slots, the superuser-reserved ones included (postgres checks the reserve
// only after authentication). Two limits bound what reaches postgres, and
// both are taken before it is dialed:
//
//   - the AuthGate (the ban jail) admits per source: at most as many
//     authentications in progress as the source has retries left, so
//     guesses sent in parallel cannot outrun a ban, and a ban revokes the
//     source's authentications in progress;
//   - the UpstreamLimiter caps the connections to one upstream that are
//     still authenticating, whatever their source.
//
// A connection over either limit waits (first come, first served) until a
// slot frees or the authentication deadline passes; then it gets 53300. The
// waiting is bounded by the per-source and global startup caps, which the
// connection holds while it waits. Each wait for the client's answer to an
// authentication request is bounded by AuthStepTimeout, and a client that
// runs out of time after postgres was contacted counts toward a ban
// (AuthTimedOut), so holding a slot costs an attacker retries.

// Defaults for the admission limits.
const (
	// DefaultAuthStepTimeout bounds each wait for the client's answer to
	// an authentication request: libpq and pgx answer in milliseconds.
	DefaultAuthStepTimeout = 10 * time.Second
	// DefaultMaxUpstreamStartups keeps connections still authenticating
	// to a third of postgres's default max_connections (100, of which
	// superuser_reserved_connections takes 3): the other 65 stay free for
	// sessions whatever unauthenticated clients do. Logins only queue at
	// the cap, for the few milliseconds a SCRAM exchange takes.
	DefaultMaxUpstreamStartups = 32
)

// AuthGate admits authentications per source before postgres is dialed,
// and learns how each ended. The ban jail plugs in here (package banpolicy),
// without the relay knowing about its policy. Implementations must be safe
// for concurrent use.
type AuthGate interface {
	// BeginAuth returns once remote may start one more authentication. It
	// must return when ctx is done, with an error. An error wrapping
	// ErrSourceBanned ends the connection with FATAL 28000; any other
	// error (the wait ran out) with FATAL 53300.
	BeginAuth(ctx context.Context, remote netip.Addr) (AuthTicket, error)
}

// AuthTicket is one authentication an AuthGate admitted.
type AuthTicket interface {
	// Context is cancelled when the gate revokes the admission (the source
	// was banned): the proxy then ends the connection at once, and nothing
	// more of it reaches postgres.
	Context() context.Context
	// Done reports how the authentication ended and frees its slot. The
	// proxy calls it exactly once per ticket, as soon as the outcome is
	// known (at AuthenticationOk, not at ReadyForQuery). Outcomes with
	// Result AuthError include connections that never reached postgres.
	Done(AuthOutcome)
}

// ErrSourceBanned is wrapped by AuthGate errors for a banned source.
var ErrSourceBanned = errors.New("source banned")

// UpstreamLimiter caps, per upstream, the connections that are dialed and
// not yet authenticated. Routes of one process share it, so several routes
// in front of one postgres share its cap.
type UpstreamLimiter struct {
	max  int
	mu   sync.Mutex
	sems map[Upstream]chan struct{} // one per upstream: bounded by the configuration
}

// NewUpstreamLimiter returns a limiter allowing max authenticating
// connections per upstream (DefaultMaxUpstreamStartups if max <= 0).
func NewUpstreamLimiter(max int) *UpstreamLimiter {
	if max <= 0 {
		max = DefaultMaxUpstreamStartups
	}
	return &UpstreamLimiter{max: max, sems: make(map[Upstream]chan struct{})}
}

// SetMax changes the cap (a reload; max <= 0 means the default). Logins
// that hold or wait for a slot under the old cap finish under it, so for
// at most one authentication timeout both caps are in use.
func (l *UpstreamLimiter) SetMax(max int) {
	if max <= 0 {
		max = DefaultMaxUpstreamStartups
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if max != l.max {
		l.max = max
		l.sems = make(map[Upstream]chan struct{})
	}
}

// Max is the cap in force.
func (l *UpstreamLimiter) Max() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.max
}

// acquire takes a slot for up, waiting until one frees or ctx is done.
// Waiters are served in arrival order: a channel's blocked senders are
// queued first in, first out, so a steady stream of newcomers cannot starve
// a legitimate login that is already waiting.
func (l *UpstreamLimiter) acquire(ctx context.Context, up Upstream, onWait func()) (release func(), err error) {
	l.mu.Lock()
	sem, ok := l.sems[up]
	if !ok {
		sem = make(chan struct{}, l.max)
		l.sems[up] = sem
	}
	l.mu.Unlock()
	select {
	case sem <- struct{}{}:
	default:
		onWait()
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
	var once sync.Once
	return func() { once.Do(func() { <-sem }) }, nil
}

// authState is a session's admitted authentication: its ticket, its
// upstream slot, and how it ended.
type authState struct {
	ticket    AuthTicket
	release   func()      // frees the upstream slot; nil until taken
	stopWatch func() bool // stops the revocation watch
	contacted bool        // the startup packet was sent to postgres
	ended     bool
	result    AuthResult
}

// revoked reports whether the gate revoked the ticket.
func (a *authState) revoked() bool {
	return a != nil && a.ticket.Context().Err() != nil
}

// openTicket is the ticket when no AuthGate is configured: never revoked.
type openTicket struct{}

func (openTicket) Context() context.Context { return context.Background() }
func (openTicket) Done(AuthOutcome)         {}

var (
	errBanned = refuse(OutcomeBanned, codeInvalidAuthorization,
		"authentication refused: this address is banned after repeated failed logins", "", nil)
	errSourceBusy = refuse(OutcomeAuthThrottled, codeTooManyConnections,
		"too many authentications in progress from this address",
		"Authentications from one address are limited while earlier ones are in progress; try again later.", nil)
	errUpstreamBusy = refuse(OutcomeTooManyUpstreamStartups, codeTooManyConnections,
		"too many connections are authenticating with the database server",
		"The gateway limits the connections still authenticating with the database server; try again later.", nil)
)

// withCause copies a fixed refusal with the cause for the log.
func withCause(e *clientError, cause error) *clientError {
	c := *e
	c.cause = cause
	return &c
}

// authenticate takes an admitted connection from its StartupMessage to
// ReadyForQuery: the gate's admission, an upstream slot, the dial and the
// authentication exchange. It returns what authExchange returns; sess.upstream is
// set when the dial succeeded.
func (s *Server) authenticate(ctx context.Context, sess *session, p *startupPacket, deadline time.Time) (unregister func(), err error) {
	defer func() {
		// Whatever ended the authentication (a panic included) frees its
		// slots; a revocation turns into the client's FATAL unless
		// postgres had already answered.
		s.endAuth(sess, AuthError, "")
		if err != nil && sess.auth != nil && sess.auth.result == AuthBanned {
			err = withCause(errBanned, context.Cause(sess.auth.ticket.Context()))
		}
	}()
	actx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	if err := s.admitAuth(actx, sess); err != nil {
		return nil, err
	}

	up, err := s.dialUpstream(ctx, deadline)
	if err != nil {
		return nil, err
	}
	s.setUpstream(sess, up)
	if sess.auth.revoked() {
		// Revoked while dialing: postgres gets nothing but the close.
		return nil, silent(OutcomeBanned, nil)
	}
	_ = up.SetDeadline(deadline)
	sess.auth.contacted = true
	return s.authExchange(sess, up, p)
}

// admitAuth takes the gate's ticket and an upstream slot, in that order (a
// source's waiting connections then queue at the gate, where a ban ends
// them, and hold no upstream slot), and starts watching for revocation.
func (s *Server) admitAuth(ctx context.Context, sess *session) error {
	var ticket AuthTicket = openTicket{}
	if s.cfg.AuthGate != nil {
		t, err := s.cfg.AuthGate.BeginAuth(ctx, sess.remote)
		switch {
		case errors.Is(err, ErrSourceBanned):
			return withCause(errBanned, err)
		case err != nil:
			return withCause(errSourceBusy, err)
		}
		ticket = t
	}
	sess.auth = &authState{ticket: ticket}
	sess.auth.stopWatch = context.AfterFunc(ticket.Context(), func() { s.interruptAuth(sess) })

	// The upstream wait also ends when the ticket is revoked.
	uctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(ticket.Context(), func() { cancel(context.Cause(ticket.Context())) })
	defer stop()
	release, err := s.cfg.UpstreamLimiter.acquire(uctx, s.cfg.Upstream, func() {
		s.log.Debug("authentication waiting for an upstream slot", zap.Uint64("conn_id", sess.id),
			zap.String("source", sess.source))
	})
	if err != nil {
		return withCause(errUpstreamBusy, fmt.Errorf("waiting for an upstream slot: %w", err))
	}
	sess.auth.release = release
	return nil
}

// interruptAuth ends a revoked authentication at once: postgres's side is
// closed, so nothing more reaches it, and a pending read of the client's
// answer returns. Only the read deadline is moved: an interrupted TLS write
// would leave the connection unable to carry the FATAL that follows.
func (s *Server) interruptAuth(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sess.upstream != nil {
		_ = sess.upstream.Close()
	}
	_ = sess.raw.SetReadDeadline(time.Now())
}

// awaitClient arms the deadline for the client's answer to an
// authentication request: AuthStepTimeout from now, never past the
// authentication deadline (libpq and pgx answer in milliseconds; psql hangs
// up rather than prompt with a connection open). Arming it could undo the
// deadline a revocation just set, so it checks for one afterwards.
func (s *Server) awaitClient(sess *session) error {
	d := time.Now().Add(sess.tun.AuthStepTimeout)
	if end := sess.start.Add(sess.tun.AuthTimeout); end.Before(d) {
		d = end
	}
	_ = sess.raw.SetReadDeadline(d)
	if sess.auth.revoked() {
		s.endAuth(sess, AuthBanned, "")
		return silent(OutcomeBanned, nil)
	}
	return nil
}

// endAuth ends the session's authentication once: it tells the Observer
// (once postgres was contacted) and the gate's ticket, and frees the
// upstream slot. An authentication cut short by a revocation ends as
// AuthBanned, unless postgres had already answered it.
func (s *Server) endAuth(sess *session, r AuthResult, sqlstate string) {
	a := sess.auth
	if a == nil || a.ended {
		return
	}
	a.ended = true
	a.stopWatch()
	if r != AuthSucceeded && r != AuthFailed && a.revoked() {
		r = AuthBanned
	}
	a.result = r
	o := AuthOutcome{
		Remote:          sess.remote,
		User:            sess.user,
		Database:        sess.database,
		ApplicationName: sess.appName,
		Result:          r,
		SQLState:        sqlstate,
		Mechanism:       sess.mechanism,
	}
	if a.contacted && s.cfg.Observer != nil {
		s.cfg.Observer.ObserveAuth(o)
	}
	a.ticket.Done(o)
	if a.release != nil {
		a.release()
	}
}
