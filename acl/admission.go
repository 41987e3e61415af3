package acl

import (
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pgwarden/pgwarden/internal/netconn"
)

// Admission: whether a source may connect at all, decided from its address
// alone before a byte is read.
//
// A Policy combines allow sources and deny sources: a source is admitted
// when one allow source matches it and no deny source refuses it. The
// allowlist is the first allow source (swapped atomically on reload); other
// ones (grants) follow. The jail is a deny source; others (a shared deny
// list) follow. The verdict names the rule that admitted the source, so a
// caller can count hits per rule.
//
// A Gate applies a Policy to connections, and is the one place a connection
// is refused at accept: reset (no byte written), counted, logged at a
// sampled rate. Listener.Accept runs it for peers that connect directly;
// for a connection whose source is known only later (a PROXY protocol
// header from a trusted load balancer), the connection's goroutine runs the
// same Gate with AdmitSource.

// Rule says what admitted a source.
type Rule struct {
	// Source is the allow source that matched: "allowlist", for now.
	Source string
	// Prefix is the allowlist entry that matched.
	Prefix netip.Prefix
	// ID identifies a rule that has one of its own (a grant), else "".
	ID string
}

// Verdict is an admission decision and, for an admitted source, its rule.
type Verdict struct {
	Decision Decision
	Rule     Rule
}

// Allower is a source of admission. Match runs on the accept path for every
// connection: it must be cheap and never block.
type Allower interface {
	Match(ip netip.Addr) (Rule, bool)
}

// Denier refuses sources an Allower admitted. Deny runs on the accept path
// for every admitted connection: it must be cheap and never block.
type Denier interface {
	Deny(ip netip.Addr) (Decision, bool)
}

// BannedFunc is a Denier refusing the sources a function reports banned.
type BannedFunc func(netip.Addr) bool

// Deny refuses ip as RejectBanned if f reports it banned.
func (f BannedFunc) Deny(ip netip.Addr) (Decision, bool) { return RejectBanned, f(ip) }

// Match reports the prefix of a that contains ip (Allower).
func (a *Allowlist) Match(ip netip.Addr) (Rule, bool) {
	if a == nil || !ip.IsValid() {
		return Rule{}, false
	}
	ip = normalize(ip)
	for _, p := range a.prefixes {
		if p.Contains(ip) {
			return Rule{Source: "allowlist", Prefix: p}, true
		}
	}
	return Rule{}, false
}

// Deny refuses a banned ip (Denier).
func (j *Jail) Deny(ip netip.Addr) (Decision, bool) { return RejectBanned, j.Banned(ip) }

// Policy decides admission from allow and deny sources.
type Policy struct {
	allowlist atomic.Pointer[Allowlist]
	allow     []Allower
	deny      []Denier
}

// NewPolicy returns a policy admitting what allowlist or one of allow
// matches, unless one of deny refuses it. The allowlist is required: the
// gateway fails closed.
func NewPolicy(allowlist *Allowlist, allow []Allower, deny []Denier) (*Policy, error) {
	if allowlist == nil {
		return nil, ErrNoAllowlist
	}
	p := &Policy{allow: allow, deny: deny}
	p.allowlist.Store(allowlist)
	return p, nil
}

// Decide returns the verdict for a source, allow sources first: a source
// that none admits is "not_allowed" whether or not it is also banned.
func (p *Policy) Decide(ip netip.Addr) Verdict {
	ip = normalize(ip)
	rule, ok := p.allowlist.Load().Match(ip)
	for _, a := range p.allow {
		if ok {
			break
		}
		rule, ok = a.Match(ip)
	}
	if !ok {
		return Verdict{Decision: RejectNotAllowed}
	}
	for _, d := range p.deny {
		if why, denied := d.Deny(ip); denied {
			return Verdict{Decision: why}
		}
	}
	return Verdict{Decision: Admit, Rule: rule}
}

// SetAllowlist atomically replaces the allowlist (SIGHUP reload); the next
// connection is judged by the new list. A nil list is ignored, so a failed
// reload can never leave the policy without one.
func (p *Policy) SetAllowlist(a *Allowlist) {
	if a != nil {
		p.allowlist.Store(a)
	}
}

// Allowlist returns the list currently in force.
func (p *Policy) Allowlist() *Allowlist { return p.allowlist.Load() }

// Rejection log sampling: per second, the first few lines, then every Mth.
const (
	sampleFirst      = 10
	sampleThereafter = 100
)

// Gate applies a Policy to connections.
type Gate struct {
	policy     *Policy
	onReject   func(Decision, netip.Addr)
	onAdmit    func(Rule)
	log        *zap.Logger
	sampler    *sampler
	notAllowed atomic.Uint64
	banned     atomic.Uint64
}

// NewGate returns a gate applying p. onReject, if set, is told of every
// refusal (metrics); ip is the zero Addr when the peer had no IP. log
// receives the sampled refusal lines, at debug.
func NewGate(p *Policy, onReject func(Decision, netip.Addr), log *zap.Logger) *Gate {
	if log == nil {
		log = zap.NewNop()
	}
	return &Gate{policy: p, onReject: onReject, log: log, sampler: newSampler(sampleFirst, sampleThereafter, time.Now)}
}

// OnAdmit makes the gate tell f the rule that admitted each connection
// (hit counts per rule). f runs on the accept path: it must be cheap and
// never block. Call it before the gate is used.
func (g *Gate) OnAdmit(f func(Rule)) { g.onAdmit = f }

// Policy is the policy the gate applies.
func (g *Gate) Policy() *Policy { return g.policy }

// Admit decides on a connection by its peer address. A refused connection
// has been reset (nothing written), counted and logged; a peer without an
// IP (a unix socket, an odd wrapper) is refused: fail closed.
func (g *Gate) Admit(c net.Conn) Verdict {
	ip, ok := PeerAddr(c.RemoteAddr())
	return g.decide(c, ip, ok, nil)
}

// AdmitSource is Admit for a source learnt otherwise than from the peer
// address (ok false: none): the client a trusted load balancer named in a
// PROXY header. Its refusal line gives the source and the balancer.
func (g *Gate) AdmitSource(c net.Conn, ip netip.Addr, ok bool) Verdict {
	return g.decide(c, ip, ok, c.RemoteAddr())
}

func (g *Gate) decide(c net.Conn, ip netip.Addr, ok bool, balancer net.Addr) Verdict {
	v := Verdict{Decision: RejectNotAllowed}
	if ok {
		v = g.policy.Decide(ip)
	}
	if v.Decision != Admit {
		g.reject(c, v.Decision, ip, balancer)
	} else if g.onAdmit != nil {
		g.onAdmit(v.Rule)
	}
	return v
}

// reject counts, resets and logs one refused connection. The counter is
// bumped before the close, so anyone who observed the reset sees the count.
// balancer is the peer that named ip, nil for a direct peer.
func (g *Gate) reject(c net.Conn, d Decision, ip netip.Addr, balancer net.Addr) {
	if d == RejectNotAllowed {
		g.notAllowed.Add(1)
	} else {
		g.banned.Add(1)
	}
	if g.onReject != nil {
		g.onReject(d, ip)
	}
	remote := c.RemoteAddr()
	// RST instead of FIN: the peer learns nothing about what listens here,
	// and no TIME_WAIT state is kept for a flood of refused sources.
	netconn.ResetClose(c)

	if ce := g.log.Check(zapcore.DebugLevel, "connection rejected"); ce != nil {
		if log, suppressed := g.sampler.sample(); log {
			fields := []zap.Field{zap.Stringer("reason", d), zap.Stringer("remote", remote), zap.Uint64("suppressed", suppressed)}
			if balancer != nil {
				fields[1] = zap.Stringer("remote", ip)
				fields = append(fields, zap.Stringer("balancer", balancer))
			}
			ce.Write(fields...)
		}
	}
}

// Rejected returns how many connections were refused for each reason
// (banned includes bans by other deny sources, such as CrowdSec's).
func (g *Gate) Rejected() (notAllowed, banned uint64) {
	return g.notAllowed.Load(), g.banned.Load()
}
