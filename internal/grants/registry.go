package grants

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// key identifies the grant a new request extends.
type key struct {
	source netip.Prefix
	route  string
}

// Registry holds the active grants. All methods are safe for concurrent
// use; Covering never takes a lock.
type Registry struct {
	cfg Config
	log *zap.Logger

	// mu guards byID, byKey and closed, and serialises writers (including
	// their Store writes, so the file and memory change in the same
	// order). Readers use snap.
	mu     sync.Mutex
	byID   map[string]*Grant
	byKey  map[key]*Grant
	closed bool

	snap atomic.Pointer[snapshot]
	// maxTTL is Config.MaxTTL in force (SetMaxTTL).
	maxTTL atomic.Int64

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

// AddRequest asks for a grant.
type AddRequest struct {
	// Source is the prefix admitted; normalise it with ParseSource or
	// HostPrefix.
	Source netip.Prefix
	// Route limits the grant to one route; "" means every route.
	Route string
	// Users and Databases limit the startup's user and database; empty
	// means any.
	Users, Databases []string
	// TTL is the length asked for; 0 means as long as allowed.
	TTL time.Duration
	// MaxTTL is the rule's cap (an OIDC rule's max-ttl); 0 means only
	// Config.MaxTTL applies.
	MaxTTL time.Duration
	// Reason justifies the grant (required).
	Reason string
	// CreatedBy is "admin" or the token's sub (required).
	CreatedBy string
	// Via is ViaAdmin or ViaOIDC.
	Via string
	// Rule names what allowed it, for messages: `oidc rule "deploy"`.
	Rule string
	// Claims are the token claims the rule matched.
	Claims map[string]string
}

// AddResult is what Add did.
type AddResult struct {
	Grant    Grant
	Extended bool          // an existing grant of Source and Route was extended
	TTL      time.Duration // the effective TTL of this request
}

// RevokeOptions qualifies a revocation.
type RevokeOptions struct {
	// KeepSessions is passed to OnRevoke: leave the sessions the grant
	// admitted running.
	KeepSessions bool
	// By names who revoked, for the audit line (default "admin").
	By string
	// Remote marks a revocation made on another gateway (Change.Remote).
	Remote bool
}

// New validates cfg, restores persisted grants (dropping those that
// expired while the gateway was down) and starts the expiry sweeper.
// Close it when done.
func New(cfg Config) (*Registry, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, err
	}
	r := &Registry{
		cfg:   cfg,
		log:   cfg.Logger,
		byID:  map[string]*Grant{},
		byKey: map[key]*Grant{},
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	r.maxTTL.Store(int64(cfg.MaxTTL))
	if cfg.Store != nil {
		if err := r.restore(); err != nil {
			return nil, err
		}
	}
	r.publishLocked()
	go r.sweepLoop()
	return r, nil
}

// SetMaxTTL changes Config.MaxTTL (a reload; 0 means DefaultMaxTTL) for
// grants made or extended from now on; grants keep the end they have.
func (r *Registry) SetMaxTTL(d time.Duration) error {
	c := r.cfg
	c.MaxTTL = d
	if err := c.CheckAndSetDefaults(); err != nil {
		return err
	}
	r.maxTTL.Store(int64(c.MaxTTL))
	return nil
}

// MaxTTL is the cap in force.
func (r *Registry) MaxTTL() time.Duration { return time.Duration(r.maxTTL.Load()) }

// restore loads the store's grants. Expired ones are deleted with an
// "expired" audit line; of two grants for one source and route (which
// Add never writes) the later-ending one is kept.
func (r *Registry) restore() error {
	stored, err := r.cfg.Store.Load()
	var corrupt *CorruptRecordsError
	switch {
	case errors.As(err, &corrupt):
		r.log.Error("grant state: unreadable records dropped", zap.Error(err))
	case err != nil:
		return fmt.Errorf("restoring grants: %w", err)
	}
	now := r.cfg.Now()
	var drop []Grant
	for i := range stored {
		g := stored[i]
		if !g.Active(now) {
			drop = append(drop, g)
			continue
		}
		k := key{g.Source, g.Route}
		if old, ok := r.byKey[k]; ok {
			if !g.Until.After(old.Until) {
				drop = append(drop, g)
				continue
			}
			delete(r.byID, old.ID)
			drop = append(drop, *old)
		}
		g.used = new(atomic.Bool)
		r.byID[g.ID] = &g
		r.byKey[k] = &g
	}
	for _, g := range drop {
		if err := r.cfg.Store.Delete(g.ID); err != nil {
			r.log.Error("grant state: deleting a stale grant failed", zap.String("grant_id", g.ID), zap.Error(err))
		}
		if !g.Active(now) {
			r.audit("grant expired", g, zap.Bool("while_down", true))
		}
	}
	r.log.Info("grants restored", zap.Int("active", len(r.byID)), zap.Int("dropped", len(drop)))
	return nil
}

// publishLocked swaps in a snapshot of byID. Callers hold mu (or own r).
func (r *Registry) publishLocked() {
	r.snap.Store(buildSnapshot(r.byID))
}

// Covering returns the active grant of route (or of every route) whose
// source contains ip, the most specific one first. It is the accept-path
// check: one atomic load, then a map probe per distinct prefix length; no
// lock. The grant is shared: do not modify it.
func (r *Registry) Covering(route string, ip netip.Addr) (*Grant, bool) {
	s := r.snap.Load()
	if len(s.byPrefix) == 0 || !ip.IsValid() {
		return nil, false
	}
	ip = ip.Unmap().WithZone("")
	now := r.cfg.Now()
	var found *Grant
	s.covering(route, ip, func(g *Grant) bool {
		if g.Active(now) {
			found = g
			return false
		}
		return true
	})
	return found, found != nil
}

// Admits is Covering and Permits together, for the startup check: of the
// active grants covering ip on route it returns the first that permits
// user and database. When grants cover ip but none permits, the error is
// the most specific grant's *NotPermittedError; when none covers ip it is
// ErrNotFound.
func (r *Registry) Admits(route string, ip netip.Addr, user, database string) (*Grant, error) {
	s := r.snap.Load()
	if len(s.byPrefix) == 0 || !ip.IsValid() {
		return nil, ErrNotFound
	}
	ip = ip.Unmap().WithZone("")
	now := r.cfg.Now()
	var found *Grant
	var first error
	s.covering(route, ip, func(g *Grant) bool {
		if !g.Active(now) {
			return true
		}
		err := Permits(g, user, database)
		if err == nil {
			found = g
			return false
		}
		if first == nil {
			first = err
		}
		return true
	})
	switch {
	case found != nil:
		return found, nil
	case first != nil:
		return nil, first
	default:
		return nil, ErrNotFound
	}
}

// MarkUsed records that g admitted a connection from remote; the first
// use of each grant (extensions included) gets an audit line.
func (r *Registry) MarkUsed(g *Grant, remote netip.Addr) {
	if g == nil || g.used == nil || !g.used.CompareAndSwap(false, true) {
		return
	}
	r.audit("grant first used", *g, zap.String("remote", remote.String()))
}

// Add grants req, or extends the grant that Source and Route already have.
// The TTL is EffectiveTTL(req.TTL, req.MaxTTL, Config.MaxTTL). The grant
// is written to the Store before it takes effect; a Store error fails Add
// and changes nothing.
func (r *Registry) Add(req AddRequest) (AddResult, error) {
	ttl, err := EffectiveTTL(req.TTL, req.MaxTTL, time.Duration(r.maxTTL.Load()))
	if err != nil {
		return AddResult{}, err
	}
	users, databases, err := r.checkRequest(&req)
	if err != nil {
		return AddResult{}, err
	}
	now := r.cfg.Now()
	// Whole seconds, rounded up: the API shows until as plain RFC 3339
	// (2026-08-01T10:00:00Z, as bans do), and what it shows is what is
	// enforced; rounding up never ends a grant before the time asked.
	until := ceilSecond(now.Add(ttl))

	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return AddResult{}, ErrClosed
	}
	// Expire first: a lapsed grant of this key is not extended (its
	// expiry gets its own audit line and OnExpire), and lapsed grants do
	// not count against MaxGrants.
	expired := r.expireLocked(now)
	k := key{req.Source, req.Route}
	old, extending := r.byKey[k]
	var g Grant
	if extending {
		g = old.clone()
		if until.After(g.Until) {
			g.Until = until
		}
		g.Users = union(g.Users, users)
		g.Databases = union(g.Databases, databases)
		g.Reason, g.CreatedBy, g.Via, g.Rule, g.Claims = req.Reason, req.CreatedBy, req.Via, req.Rule, maps.Clone(req.Claims)
		g.Extensions++
	} else {
		if len(r.byID) >= r.cfg.MaxGrants {
			r.mu.Unlock()
			r.fireExpired(expired)
			return AddResult{}, fmt.Errorf("%w (limit %d): revoke some or wait for them to expire", ErrFull, r.cfg.MaxGrants)
		}
		id, err := newID()
		if err != nil {
			r.mu.Unlock()
			r.fireExpired(expired)
			return AddResult{}, err
		}
		g = Grant{
			ID: id, Source: req.Source, Route: req.Route, Users: users, Databases: databases,
			Until: until, Reason: req.Reason, CreatedBy: req.CreatedBy, Via: req.Via, Rule: req.Rule,
			Claims: maps.Clone(req.Claims), Created: now.UTC().Truncate(time.Second), used: new(atomic.Bool),
		}
	}
	if r.cfg.Store != nil {
		if err := r.cfg.Store.Save(g); err != nil {
			r.mu.Unlock()
			r.fireExpired(expired)
			return AddResult{}, fmt.Errorf("saving grant for %s: %w", g.Source, err)
		}
	}
	stored := g
	r.byID[g.ID] = &stored
	r.byKey[k] = &stored
	r.publishLocked()
	r.mu.Unlock()

	r.fireExpired(expired)
	if extending {
		r.announce(Change{Kind: ChangeExtended, Grant: g}, zap.Duration("ttl", ttl), zap.Time("previous_until", old.Until))
	} else {
		r.announce(Change{Kind: ChangeCreated, Grant: g}, zap.Duration("ttl", ttl))
	}
	return AddResult{Grant: g.clone(), Extended: extending, TTL: ttl}, nil
}

// Revoke removes the grant with id target ("g-…"), or every grant whose
// source is exactly the IP or CIDR target, and calls OnRevoke for each.
// Revocation takes effect in memory even when the Store fails; the error
// then says the state file still holds the grant.
func (r *Registry) Revoke(target string, opts RevokeOptions) ([]Grant, error) {
	if opts.By == "" {
		opts.By = ViaAdmin
	}
	match, err := revokeMatcher(target)
	if err != nil {
		return nil, err
	}
	now := r.cfg.Now()
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, ErrClosed
	}
	expired := r.expireLocked(now)
	var revoked []Grant
	for id, g := range r.byID {
		if match(g) {
			revoked = append(revoked, *g)
			delete(r.byID, id)
			delete(r.byKey, key{g.Source, g.Route})
		}
	}
	if len(revoked) > 0 {
		r.publishLocked()
	}
	var errs []error
	if r.cfg.Store != nil {
		for _, g := range revoked {
			if err := r.cfg.Store.Delete(g.ID); err != nil {
				errs = append(errs, fmt.Errorf("grant %s is revoked but still in the state file (it would return after a restart): %w", g.ID, err))
			}
		}
	}
	r.mu.Unlock()

	r.fireExpired(expired)
	if len(revoked) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, target)
	}
	slices.SortFunc(revoked, func(a, b Grant) int { return strings.Compare(a.ID, b.ID) })
	for _, g := range revoked {
		r.announce(Change{Kind: ChangeRevoked, Grant: g, KeepSessions: opts.KeepSessions, By: opts.By, Remote: opts.Remote})
	}
	return revoked, errors.Join(errs...)
}

// ceilSecond is t in UTC, rounded up to the second.
func ceilSecond(t time.Time) time.Time {
	t = t.UTC().Round(0)
	if tr := t.Truncate(time.Second); tr.Before(t) {
		return tr.Add(time.Second)
	}
	return t
}

// Get returns the active grant with id.
func (r *Registry) Get(id string) (Grant, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	g, ok := r.byID[id]
	if !ok || !g.Active(r.cfg.Now()) {
		return Grant{}, false
	}
	return g.clone(), true
}

// List returns the active grants, soonest to expire first.
func (r *Registry) List() []Grant {
	now := r.cfg.Now()
	r.mu.Lock()
	out := make([]Grant, 0, len(r.byID))
	for _, g := range r.byID {
		if g.Active(now) {
			out = append(out, g.clone())
		}
	}
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b Grant) int {
		if c := a.Until.Compare(b.Until); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

// Active is the number of grants in force now (pgwarden_grants_active).
func (r *Registry) Active() int {
	now := r.cfg.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, g := range r.byID {
		if g.Active(now) {
			n++
		}
	}
	return n
}

// Len is the number of grants held, expired ones the sweeper has not
// removed yet included (for the grants_active gauge, call after Sweep or
// count List).
func (r *Registry) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.byID)
}

// Close stops the sweeper; Add and Revoke fail afterwards. The Store is
// not closed (its owner closes it, after this).
func (r *Registry) Close() error {
	r.closeOnce.Do(func() {
		r.mu.Lock()
		r.closed = true
		r.mu.Unlock()
		close(r.stop)
		<-r.done
	})
	return nil
}
