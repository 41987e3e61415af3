package acl

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"go.uber.org/zap"
)

// Authentication slots.
//
// Counting failures after the fact is not enough to cap guesses: a source
// that opens many connections, takes each to the last step of SCRAM and then
// sends every proof at once gets all of them checked by postgres before the
// first failure comes back. So the jail also admits authentications: a
// source may have at most as many in progress as it has retries left before
// a ban, under each of its keys (the address, and for IPv6 its aggregate
// prefix):
//
//	in progress(key) + failures in FindTime(key) ≤ MaxRetry
//
// A failure moves one unit from "in progress" to "failures" in one critical
// section, and a success or an abandoned attempt frees its unit. So however
// the attempts are timed, at most MaxRetry of them can fail before the ban,
// and when the ban comes none of the source's own attempts is still in
// progress. Bans that cover running attempts anyway (a manual ban, or a ban
// of a prefix around them) revoke them: their contexts are cancelled and the
// caller ends the connections.
//
// An attempt that finds no slot waits for one (a connection pool opening
// more connections at once than MaxRetry is legitimate), until its context
// is done. Because failures below MaxRetry never ban and a ban clears the
// failure counts, a key with no slot free always has an attempt in progress,
// whose end wakes the waiters; nothing needs a timer. The caller bounds how
// many attempts can wait (the proxy's per-source startup cap) and how long.
//
// Ignored sources (JailConfig.Ignore) are never banned, so they are not
// limited either; their attempts are still tracked, so a manual ban ends
// them.
//
// With a Shared store the failures counted are the larger of the jail's own
// and the fleet's (read once per admission), so a source that failed on
// other gateways has fewer retries here too. Attempts in progress are
// counted per gateway, and a gateway with none in progress for a key always
// admits one: a fleet count at MaxRetry means a ban is on its way (or its
// maker died before publishing it), and nothing here would ever wake a
// waiter. So the fleet-wide guesses before a ban are at most MaxRetry plus
// one per other gateway racing at the same instant.

// authSlots is the jail's state of authentications in progress, guarded by
// Jail.mu. Every map is bounded by the attempts in progress, which the
// caller bounds.
type authSlots struct {
	inflight map[netip.Prefix]int           // attempts holding a slot, per key
	attempts map[*AuthAttempt]struct{}      // every attempt in progress, for revocation
	wake     map[netip.Prefix]chan struct{} // closed when a slot of that key frees
}

func newAuthSlots() authSlots {
	return authSlots{
		inflight: map[netip.Prefix]int{},
		attempts: map[*AuthAttempt]struct{}{},
		wake:     map[netip.Prefix]chan struct{}{},
	}
}

// wakeChan returns the channel closed when a slot of key frees.
func (s *authSlots) wakeChan(key netip.Prefix) chan struct{} {
	if !key.IsValid() {
		return nil // a nil channel never fires in a select
	}
	ch, ok := s.wake[key]
	if !ok {
		ch = make(chan struct{})
		s.wake[key] = ch
	}
	return ch
}

// wakeKey wakes the attempts waiting for a slot of key.
func (s *authSlots) wakeKey(key netip.Prefix) {
	if ch, ok := s.wake[key]; ok {
		close(ch)
		delete(s.wake, key)
	}
}

// wakeCovered wakes every waiter whose key overlaps ban, so it sees the ban.
func (s *authSlots) wakeCovered(ban netip.Prefix) {
	for k := range s.wake {
		if ban.Overlaps(k) {
			s.wakeKey(k)
		}
	}
}

// wakeAll wakes every waiter (the jail is closing).
func (s *authSlots) wakeAll() {
	for k := range s.wake {
		s.wakeKey(k)
	}
}

// AuthAttempt is one authentication the jail admitted. End it exactly once,
// with Failed or End, whatever happens to the connection: until then it
// holds one of its source's slots.
type AuthAttempt struct {
	j         *Jail
	ip        netip.Addr   // normalised; invalid for an untracked attempt
	host, agg netip.Prefix // the ban keys it holds a slot under
	holds     bool         // it holds slots (not ignored, jail open); guarded by j.mu
	ended     bool         // guarded by j.mu
	ctx       context.Context
	cancel    context.CancelCauseFunc
}

// Context is cancelled, with a cause wrapping ErrBanned, when a ban covering
// the attempt's source is imposed while it is in progress. The caller then
// ends the connection at once, so nothing more of it reaches postgres.
func (a *AuthAttempt) Context() context.Context { return a.ctx }

// Failed counts the attempt as a failed authentication (see Jail.Failed) and
// frees its slot, atomically. It returns whether the source is banned now
// and until when.
func (a *AuthAttempt) Failed(f Failure) (banned bool, until time.Time) {
	return a.j.failed(a, a.ip, f)
}

// End frees the attempt's slot without counting a failure: it succeeded,
// the client left, or it ended for a reason that is not a guess. Ending an
// attempt twice, or a nil one, does nothing.
func (a *AuthAttempt) End() {
	if a == nil {
		return
	}
	a.j.mu.Lock()
	a.j.endLocked(a)
	a.j.mu.Unlock()
}

// BeginAuth admits one authentication from ip, waiting while the source has
// as many in progress as it has retries left (see the comment at the top of
// this file). It returns an error wrapping ErrBanned if the source is banned,
// now or while it waits, and one wrapping ctx's error if ctx ends first. An
// invalid address, an ignored source, or a closed jail is admitted at once.
func (j *Jail) BeginAuth(ctx context.Context, ip netip.Addr) (*AuthAttempt, error) {
	a := &AuthAttempt{j: j}
	a.ctx, a.cancel = context.WithCancelCause(context.Background())
	if ip.IsValid() {
		a.ip = normalize(ip)
		a.host, a.agg = j.keys(a.ip)
	}
	limited := a.ip.IsValid() && !j.ignored(a.ip)
	waited := false
	for {
		var fleetHost, fleetAgg int
		if limited {
			fleetHost, fleetAgg = j.fleetFailures(a.host, a.agg)
		}
		now := j.config().Now()
		j.mu.Lock()
		if !a.ip.IsValid() || j.closed {
			// Untracked: nothing to count, nothing to revoke.
			a.ended = true
			j.mu.Unlock()
			return a, nil
		}
		if key, b, ok := j.activeBanLocked(a.ip, now); ok {
			j.mu.Unlock()
			return nil, fmt.Errorf("admitting an authentication from %s: %w (%s until %s)",
				a.ip, ErrBanned, keyString(key), b.Until.UTC().Format(time.RFC3339))
		}
		hostFull, aggFull := limited && j.fullLocked(a.host, now, fleetHost), limited && j.fullLocked(a.agg, now, fleetAgg)
		if !hostFull && !aggFull {
			j.admitLocked(a, limited)
			j.mu.Unlock()
			if waited {
				j.log.Debug("authentication slot granted", zap.String("source", a.ip.String()))
			}
			return a, nil
		}
		// Wait only on the keys that are full: each has an attempt in
		// progress whose end removes the channel, so channels of waiters
		// that give up do not pile up (an address rotating inside a /64
		// never makes one for each address).
		var wakeHost, wakeAgg chan struct{}
		if hostFull {
			wakeHost = j.auths.wakeChan(a.host)
		}
		if aggFull {
			wakeAgg = j.auths.wakeChan(a.agg)
		}
		inflight, failures := j.auths.inflight[a.host], j.tracker.count(a.host, now, j.config().FindTime)
		j.mu.Unlock()
		if !waited {
			waited = true
			j.log.Debug("authentication waiting for a slot", zap.String("source", a.ip.String()),
				zap.Int("in_progress", inflight), zap.Int("failures", failures))
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for an authentication slot for %s (%d in progress, %d failures): %w",
				a.ip, inflight, failures, context.Cause(ctx))
		case <-wakeHost:
		case <-wakeAgg:
		}
	}
}

// fullLocked reports whether key (if valid) has no retry left that an
// attempt in progress is not already using. fleet is key's fleet-wide
// failure count; it counts only while an attempt is in progress here (see
// the comment at the top of this file).
func (j *Jail) fullLocked(key netip.Prefix, now time.Time, fleet int) bool {
	if !key.IsValid() {
		return false
	}
	failures, inflight := j.tracker.count(key, now, j.config().FindTime), j.auths.inflight[key]
	if inflight > 0 {
		failures = max(failures, fleet)
	}
	return failures+inflight >= j.config().MaxRetry
}

// admitLocked registers a as in progress, holding a slot when limited.
func (j *Jail) admitLocked(a *AuthAttempt, limited bool) {
	j.auths.attempts[a] = struct{}{}
	if !limited {
		return
	}
	a.holds = true
	for _, k := range [2]netip.Prefix{a.host, a.agg} {
		if k.IsValid() {
			j.auths.inflight[k]++
		}
	}
}

// endLocked ends a (if not nil and not ended) and frees its slots, waking
// the attempts waiting for them.
func (j *Jail) endLocked(a *AuthAttempt) {
	if a == nil || a.ended {
		return
	}
	a.ended = true
	delete(j.auths.attempts, a)
	if !a.holds {
		return
	}
	for _, k := range [2]netip.Prefix{a.host, a.agg} {
		if !k.IsValid() {
			continue
		}
		if j.auths.inflight[k]--; j.auths.inflight[k] <= 0 {
			delete(j.auths.inflight, k)
		}
		j.auths.wakeKey(k)
	}
}

// revokeLocked collects the attempts in progress that a new ban on key
// covers (an automatic ban spares ignored sources, as Banned does) and wakes
// the waiters it covers so they see the ban. The caller cancels the
// collected attempts with revoke after unlocking.
func (j *Jail) revokeLocked(key netip.Prefix, manual bool) []*AuthAttempt {
	var out []*AuthAttempt
	for a := range j.auths.attempts {
		if key.Contains(a.ip) && (manual || !j.ignored(a.ip)) {
			out = append(out, a)
		}
	}
	j.auths.wakeCovered(key)
	return out
}

// revoke cancels the contexts of revoked attempts. Their slots stay held
// until the caller ends them; the source is banned, so nothing waits for
// them.
func revoke(attempts []*AuthAttempt) {
	for _, a := range attempts {
		a.cancel(fmt.Errorf("source %s: %w", a.ip, ErrBanned))
	}
}
