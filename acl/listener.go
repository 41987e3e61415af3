package acl

import (
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Decision is the accept-time verdict on a peer address.
type Decision int

const (
	// Admit lets the connection through to the gateway.
	Admit Decision = iota
	// RejectNotAllowed closes a peer outside the allowlist (or without an IP).
	RejectNotAllowed
	// RejectBanned closes a peer the jail has banned.
	RejectBanned
)

// String returns the metric/log label: "admitted", "not_allowed" or "banned".
func (d Decision) String() string {
	switch d {
	case Admit:
		return "admitted"
	case RejectNotAllowed:
		return "not_allowed"
	case RejectBanned:
		return "banned"
	default:
		return "unknown"
	}
}

// Err returns ErrNotAllowed or ErrBanned for a rejection, nil for Admit.
func (d Decision) Err() error {
	switch d {
	case Admit:
		return nil
	case RejectBanned:
		return ErrBanned
	default:
		return ErrNotAllowed
	}
}

// Rejection log sampling: per second, the first few lines, then every Mth.
const (
	sampleFirst      = 10
	sampleThereafter = 100
)

// ListenerConfig configures NewListener.
type ListenerConfig struct {
	// Allowlist is required: peers outside it are closed at accept.
	Allowlist *Allowlist
	// Banned, if set, is consulted for allowed peers (normally Jail.Banned).
	// It runs on the accept path for every connection, so it must be cheap.
	Banned func(netip.Addr) bool
	// OnReject, if set, is called for every rejected connection (metrics).
	// ip is the zero Addr when the peer had no IP (e.g. a unix socket).
	OnReject func(d Decision, ip netip.Addr)
	// Logger receives the sampled rejection lines; nil means none.
	Logger *zap.Logger
	// RejectLogInfo logs the sampled rejection lines at info instead of
	// debug (STYLE.md puts accept-time rejections at debug).
	RejectLogInfo bool
}

// Listener wraps a net.Listener and applies the allowlist and the ban jail
// at accept, so that nothing later in the gateway can forget the check.
// Accept returns only admitted connections, unchanged (a *net.TCPConn stays
// one). Rejected ones are reset and never seen by the caller.
type Listener struct {
	inner      net.Listener
	allow      atomic.Pointer[Allowlist]
	banned     func(netip.Addr) bool
	onReject   func(Decision, netip.Addr)
	log        *zap.Logger
	level      zapcore.Level
	sampler    *sampler
	notAllowed atomic.Uint64
	bannedN    atomic.Uint64
}

// NewListener wraps inner. cfg.Allowlist is required.
func NewListener(inner net.Listener, cfg ListenerConfig) (*Listener, error) {
	if inner == nil {
		return nil, errors.New("creating acl listener: inner listener is nil")
	}
	if cfg.Allowlist == nil {
		return nil, ErrNoAllowlist
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	l := &Listener{
		inner:    inner,
		banned:   cfg.Banned,
		onReject: cfg.OnReject,
		log:      cfg.Logger,
		level:    zapcore.DebugLevel,
		sampler:  newSampler(sampleFirst, sampleThereafter, time.Now),
	}
	if cfg.RejectLogInfo {
		l.level = zapcore.InfoLevel
	}
	l.allow.Store(cfg.Allowlist)
	return l, nil
}

// Accept waits for the next admitted connection. Denied peers are closed
// with an RST before any byte is read or written, counted, logged at a
// sampled rate, and Accept keeps waiting. Errors from the inner listener,
// temporary ones included, are returned as they are: the caller backs off.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.inner.Accept()
		if err != nil {
			return nil, err
		}
		ip, ok := PeerAddr(c.RemoteAddr())
		d := RejectNotAllowed // no IP (unix socket, odd wrapper): fail closed
		if ok {
			d = l.Decide(ip)
		}
		if d == Admit {
			return c, nil
		}
		l.reject(c, d, ip)
	}
}

// Decide returns the verdict for a peer address, allowlist first: a source
// outside the allowlist is "not_allowed" whether or not it is also banned.
func (l *Listener) Decide(ip netip.Addr) Decision {
	ip = normalize(ip)
	if !l.allow.Load().Allows(ip) {
		return RejectNotAllowed
	}
	if l.banned != nil && l.banned(ip) {
		return RejectBanned
	}
	return Admit
}

// reject counts, resets and logs one denied connection. The counter is
// bumped before the close, so anyone who observed the reset sees the count.
func (l *Listener) reject(c net.Conn, d Decision, ip netip.Addr) {
	if d == RejectBanned {
		l.bannedN.Add(1)
	} else {
		l.notAllowed.Add(1)
	}
	if l.onReject != nil {
		l.onReject(d, ip)
	}
	remote := c.RemoteAddr()
	// SO_LINGER 0 makes close send RST instead of FIN: the peer learns
	// nothing about what listens here, and no TIME_WAIT state is kept for
	// a flood of denied sources.
	if lc, ok := c.(interface{ SetLinger(sec int) error }); ok {
		_ = lc.SetLinger(0)
	}
	_ = c.Close()

	if ce := l.log.Check(l.level, "connection rejected"); ce != nil {
		if log, suppressed := l.sampler.sample(); log {
			ce.Write(
				zap.Stringer("reason", d),
				zap.Stringer("remote", remote),
				zap.Uint64("suppressed", suppressed),
			)
		}
	}
}

// Close closes the inner listener; a blocked Accept returns its error.
func (l *Listener) Close() error { return l.inner.Close() }

// Addr is the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Rejected returns how many connections were closed for each reason.
func (l *Listener) Rejected() (notAllowed, banned uint64) {
	return l.notAllowed.Load(), l.bannedN.Load()
}

// SetAllowlist atomically replaces the allowlist (SIGHUP reload); the next
// accepted connection is judged by the new list. A nil list is ignored, so
// a failed reload can never leave the listener without one.
func (l *Listener) SetAllowlist(a *Allowlist) {
	if a != nil {
		l.allow.Store(a)
	}
}

// Allowlist returns the list currently in force.
func (l *Listener) Allowlist() *Allowlist { return l.allow.Load() }
