package acl

import (
	"errors"
	"net"
	"net/netip"
	"time"

	"go.uber.org/zap"
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
	// RejectCrowdSec closes a peer a CrowdSec decision bans.
	RejectCrowdSec
)

// Rejections lists every refusing Decision, for metrics that pre-register
// their labels.
func Rejections() []Decision { return []Decision{RejectNotAllowed, RejectBanned, RejectCrowdSec} }

// String returns the metric/log label: "admitted", "not_allowed", "banned"
// or "crowdsec".
func (d Decision) String() string {
	switch d {
	case Admit:
		return "admitted"
	case RejectNotAllowed:
		return "not_allowed"
	case RejectBanned:
		return "banned"
	case RejectCrowdSec:
		return "crowdsec"
	default:
		return "unknown"
	}
}

// Err returns ErrNotAllowed or ErrBanned for a rejection, nil for Admit.
func (d Decision) Err() error {
	switch d {
	case Admit:
		return nil
	case RejectBanned, RejectCrowdSec:
		return ErrBanned
	default:
		return ErrNotAllowed
	}
}

// ListenerConfig configures NewListener: a Gate, or the parts of a simple
// one (an allowlist and, optionally, the jail's Banned).
type ListenerConfig struct {
	// Gate, if set, decides admission; the other fields are then unused.
	Gate *Gate
	// Allowlist is required without Gate: peers outside it are closed at
	// accept.
	Allowlist *Allowlist
	// Banned, if set, is consulted for allowed peers (normally Jail.Banned).
	// It runs on the accept path for every connection, so it must be cheap.
	Banned func(netip.Addr) bool
	// OnReject, if set, is called for every rejected connection (metrics).
	// ip is the zero Addr when the peer had no IP (e.g. a unix socket).
	OnReject func(d Decision, ip netip.Addr)
	// Logger receives the sampled rejection lines; nil means none.
	Logger *zap.Logger
	// Defer, if set, names peers whose admission waits until their real
	// source is known: a load balancer that states it in a PROXY protocol
	// header. Accept returns their connections undecided, and the caller
	// runs Gate().AdmitSource on the source the header gives.
	Defer func(peer netip.Addr) bool
}

// Listener wraps a net.Listener and applies the admission Gate at accept,
// so that nothing later in the gateway can forget the check. Accept returns
// only admitted connections, unchanged (a *net.TCPConn stays one). Rejected
// ones are reset and never seen by the caller.
type Listener struct {
	inner   net.Listener
	gate    *Gate
	deferTo func(netip.Addr) bool
}

// NewListener wraps inner.
func NewListener(inner net.Listener, cfg ListenerConfig) (*Listener, error) {
	if inner == nil {
		return nil, errors.New("creating acl listener: inner listener is nil")
	}
	gate := cfg.Gate
	if gate == nil {
		var deny []Denier
		if cfg.Banned != nil {
			deny = []Denier{BannedFunc(cfg.Banned)}
		}
		p, err := NewPolicy(cfg.Allowlist, nil, deny)
		if err != nil {
			return nil, err
		}
		gate = NewGate(p, cfg.OnReject, cfg.Logger)
	}
	return &Listener{inner: inner, gate: gate, deferTo: cfg.Defer}, nil
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
		if l.deferTo != nil {
			if peer, ok := PeerAddr(c.RemoteAddr()); ok && l.deferTo(peer) {
				return c, nil
			}
		}
		if l.gate.Admit(c).Decision == Admit {
			return c, nil
		}
	}
}

// Decide returns the verdict for a peer address (see Policy.Decide).
func (l *Listener) Decide(ip netip.Addr) Decision { return l.gate.policy.Decide(ip).Decision }

// Close closes the inner listener; a blocked Accept returns its error.
func (l *Listener) Close() error { return l.inner.Close() }

// SetDeadline sets the inner listener's accept deadline, so that a
// blocked Accept can be woken (a liveness check); an inner listener
// without deadlines returns errors.ErrUnsupported.
func (l *Listener) SetDeadline(t time.Time) error {
	d, ok := l.inner.(interface{ SetDeadline(time.Time) error })
	if !ok {
		return errors.ErrUnsupported
	}
	return d.SetDeadline(t)
}

// Addr is the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Rejected returns how many connections were closed for each reason.
func (l *Listener) Rejected() (notAllowed, banned uint64) { return l.gate.Rejected() }

// SetAllowlist atomically replaces the allowlist (SIGHUP reload); see
// Policy.SetAllowlist.
func (l *Listener) SetAllowlist(a *Allowlist) { l.gate.policy.SetAllowlist(a) }

// Allowlist returns the list currently in force.
func (l *Listener) Allowlist() *Allowlist { return l.gate.policy.Allowlist() }

// Gate is the listener's admission gate.
func (l *Listener) Gate() *Gate { return l.gate }
