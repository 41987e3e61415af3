package acl

import (
	"context"
	"net/netip"
	"time"

	"go.uber.org/zap"
)

// Sharing the jail with other gateways.
//
// Several gateways behind one load balancer must judge a source together:
// otherwise an attacker spreading guesses over them gets MaxRetry tries per
// gateway, and a ban on one does not stop the others. With a Shared store
// (package fleet, on Redis) the jail
//
//   - counts every failure in the fleet-wide window of its keys as well as
//     in its own, and bans when either reaches MaxRetry;
//   - admits authentications by the fleet-wide count too (authslots.go);
//   - escalates a ban from the larger of the fleet's and its own history;
//   - publishes its bans and unbans, and applies the ones other gateways
//     publish (ApplyBan, ApplyUnban), ending the source's authentications
//     in progress exactly as its own bans do.
//
// The store is an accelerator, never the source of truth: every call may
// fail (at once while it is known to be down), and the jail then decides
// from its own state, which it keeps and persists either way. Bans it made
// meanwhile reach the fleet when the store comes back (SharedBans is what
// the caller pushes then).

// Shared is the fleet-wide state the jail consults and publishes to.
// Implementations must be safe for concurrent use and bound every call.
type Shared interface {
	// RecordFailure counts one failure of key in its fleet-wide window
	// and returns the window's count (this failure included) and key's
	// fleet-wide ban count.
	RecordFailure(ctx context.Context, key netip.Prefix, window time.Duration) (failures, bans int, err error)
	// FailureCounts returns the fleet-wide failures within window of each
	// key, recording none; an invalid key reads 0.
	FailureCounts(ctx context.Context, window time.Duration, keys ...netip.Prefix) ([]int, error)
	// Ban publishes a ban of key for d from now, resetting the failure
	// windows of key and of clear, and returns the ban the fleet holds
	// now (an automatic ban never shortens one in force).
	Ban(ctx context.Context, key netip.Prefix, d time.Duration, failures int, manual bool, clear []netip.Prefix) (SharedBan, error)
	// Unban lifts the fleet's ban on exactly key, and reports whether the
	// fleet held one.
	Unban(ctx context.Context, key netip.Prefix) (bool, error)
	// BanHistory returns key's fleet-wide ban count.
	BanHistory(ctx context.Context, key netip.Prefix) (int, error)
}

// SharedBan is a ban as the fleet holds it.
type SharedBan struct {
	Key      netip.Prefix
	Until    time.Time
	Failures int
	Bans     int
	Manual   bool
	// At is when the ban was made; zero for a ban restored from a state
	// file written before bans carried it, which counts as older than any
	// unban.
	At time.Time
}

// sharedTimeout bounds one call to the Shared store from the jail, on top
// of the store's own bounds.
const sharedTimeout = 5 * time.Second

func sharedCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), sharedTimeout)
}

// fleetCount is what the fleet said about one key; ok is false when it
// said nothing (no store, an invalid key, or an error).
type fleetCount struct {
	failures, bans int
	ok             bool
}

// shareFailure records a failure of key in the fleet, if there is one.
func (j *Jail) shareFailure(key netip.Prefix) fleetCount {
	if j.config().Shared == nil || !key.IsValid() {
		return fleetCount{}
	}
	ctx, cancel := sharedCtx()
	defer cancel()
	n, bans, err := j.config().Shared.RecordFailure(ctx, key, j.config().FindTime)
	if err != nil {
		j.log.Debug("sharing a failure failed; counting locally", zap.String("key", keyString(key)), zap.Error(err))
		return fleetCount{}
	}
	return fleetCount{failures: n, bans: bans, ok: true}
}

// fleetFailures reads the fleet-wide failure counts of host and agg; zero
// when there is no store or it does not answer.
func (j *Jail) fleetFailures(host, agg netip.Prefix) (hostN, aggN int) {
	if j.config().Shared == nil {
		return 0, 0
	}
	ctx, cancel := sharedCtx()
	defer cancel()
	n, err := j.config().Shared.FailureCounts(ctx, j.config().FindTime, host, agg)
	if err != nil || len(n) != 2 {
		return 0, 0
	}
	return n[0], n[1]
}

// fleetHistory is key's fleet-wide ban count, 0 without an answer.
func (j *Jail) fleetHistory(key netip.Prefix) int {
	if j.config().Shared == nil {
		return 0
	}
	ctx, cancel := sharedCtx()
	defer cancel()
	n, err := j.config().Shared.BanHistory(ctx, key)
	if err != nil {
		return 0
	}
	return n
}

// publishBan tells the fleet about a ban the jail just made, lasting until
// b.Until, and adopts what the fleet holds then: its end (by the store's
// clock, so every gateway lifts it at once) and the larger ban count. When
// the store does not answer, the local ban stands and reaches the fleet
// with the next resynchronisation.
func (j *Jail) publishBan(key netip.Prefix, b banRecord, clear []netip.Prefix) banRecord {
	if j.config().Shared == nil {
		return b
	}
	d := b.Until.Sub(j.config().Now())
	if d <= 0 {
		return b
	}
	ctx, cancel := sharedCtx()
	defer cancel()
	fb, err := j.config().Shared.Ban(ctx, key, d, b.Failures, b.Manual, clear)
	if err != nil {
		j.log.Debug("publishing a ban failed; it stands locally and is pushed when the fleet store is back",
			zap.String("source", keyString(key)), zap.Error(err))
		return b
	}
	now := j.config().Now()
	j.mu.Lock()
	cur, ok := j.bans[key]
	if ok && cur.At.Equal(b.At) && fb.Until.After(now) {
		// A manual ban is exactly what the operator asked for; an
		// automatic one never gets shorter here than the jail made it.
		cur.Until = fb.Until
		if !b.Manual {
			cur.Until = later(b.Until, fb.Until)
		}
		cur.Bans = max(cur.Bans, fb.Bans)
		j.bans[key] = cur
		h := j.history[key]
		h.Bans = max(h.Bans, fb.Bans)
		j.history[key] = h
		b = cur
	}
	j.mu.Unlock()
	j.persist(key)
	return b
}

// ApplyBan merges a ban the fleet holds (another gateway's, or one read at
// a resynchronisation) into the jail: an automatic ban never shortens the
// ban in force here, a manual one replaces it, the history takes the larger
// count. The source's authentications in progress are revoked, as for a ban
// of the jail's own. Applying the same ban again changes nothing, so events
// may repeat. The state file is written in the background (persistLater):
// this runs on the fleet watcher's goroutine, which must not wait for an
// fsync per event.
func (j *Jail) ApplyBan(b SharedBan) {
	key := b.Key
	if !key.IsValid() || key != key.Masked() {
		return
	}
	now := j.config().Now()
	if !b.Until.After(now) {
		return
	}
	nb := banRecord{Until: b.Until, Failures: b.Failures, Bans: b.Bans, Manual: b.Manual, At: b.At}
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return
	}
	old, existed := j.bans[key]
	active := existed && old.Until.After(now)
	if active && !b.Manual {
		nb.Until = later(nb.Until, old.Until)
		nb.Manual = old.Manual
		nb.Bans = max(nb.Bans, old.Bans)
		nb.At = later(nb.At, old.At)
	}
	h := j.history[key]
	if active && nb == old && h.Bans >= b.Bans {
		j.mu.Unlock()
		return // nothing new: a repeated event or a resynchronisation
	}
	h.Bans = max(h.Bans, b.Bans)
	h.Last = later(h.Last, nb.At)
	j.bans[key] = nb
	j.history[key] = h
	if !existed {
		j.reindexLocked()
	}
	j.tracker.remove(key)
	revoked := j.revokeLocked(key, nb.Manual)
	j.mu.Unlock()
	revoke(revoked)
	j.persistLater(key)
	j.log.Info("fleet ban applied", zap.String("source", keyString(key)), zap.Time("until", nb.Until),
		zap.Int("bans", nb.Bans), zap.Bool("manual", nb.Manual), zap.Int("revoked", len(revoked)))
}

// ApplyUnban lifts the ban on exactly key because the fleet lifted it (an
// unban on another gateway, or a ban the fleet lifted while this gateway
// could not hear it). Its failure count is reset and its history kept, as
// Unban does. Lifting a ban that is not there does nothing.
func (j *Jail) ApplyUnban(key netip.Prefix) {
	if !key.IsValid() {
		return
	}
	j.mu.Lock()
	b, ok := j.bans[key]
	if !ok || j.closed {
		j.mu.Unlock()
		return
	}
	delete(j.bans, key)
	j.reindexLocked()
	j.tracker.remove(key)
	j.mu.Unlock()
	j.persistLater(key)
	j.log.Info("source unbanned", zap.String("source", keyString(key)),
		zap.Int("bans", b.Bans), zap.String("reason", "fleet"))
}

// SharedBans returns the jail's active bans, for pushing to the fleet
// after an outage.
func (j *Jail) SharedBans() []SharedBan {
	now := j.config().Now()
	j.mu.RLock()
	defer j.mu.RUnlock()
	out := make([]SharedBan, 0, len(j.bans))
	for k, b := range j.bans {
		if b.Until.After(now) {
			out = append(out, SharedBan{Key: k, Until: b.Until, Failures: b.Failures, Bans: b.Bans, Manual: b.Manual, At: b.At})
		}
	}
	return out
}

// maxDirty bounds the keys waiting to be written by persistLater; past it
// the caller writes them itself, so a flood of fleet events slows down its
// reader instead of growing the set.
const maxDirty = 4096

// persistLater queues keys for the state file; the sweeper goroutine writes
// every queued key in one transaction (one fsync for a burst of events).
func (j *Jail) persistLater(keys ...netip.Prefix) {
	j.dirtyMu.Lock()
	for _, k := range keys {
		j.dirty[k] = struct{}{}
	}
	full := len(j.dirty) >= maxDirty
	j.dirtyMu.Unlock()
	if full {
		j.flushDirty()
		return
	}
	select {
	case j.flush <- struct{}{}:
	default: // a flush is pending; it takes these keys too
	}
}

// flushDirty writes the queued keys.
func (j *Jail) flushDirty() {
	j.dirtyMu.Lock()
	if len(j.dirty) == 0 {
		j.dirtyMu.Unlock()
		return
	}
	keys := make([]netip.Prefix, 0, len(j.dirty))
	for k := range j.dirty {
		keys = append(keys, k)
	}
	clear(j.dirty)
	j.dirtyMu.Unlock()
	j.persist(keys...)
}

// otherKeys lists the ban keys of a failure other than the one banned, for
// the fleet to reset their windows with the ban.
func otherKeys(banned netip.Prefix, keys ...netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, k := range keys {
		if k.IsValid() && k != banned {
			out = append(out, k)
		}
	}
	return out
}
