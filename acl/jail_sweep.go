package acl

import (
	"net/netip"
	"slices"
	"time"

	"go.uber.org/zap"
)

// historyPurgeEvery spaces out full scans of the ban history.
const historyPurgeEvery = time.Minute

// sweepLoop lifts expired bans every SweepInterval until Close.
func (j *Jail) sweepLoop() {
	defer close(j.done)
	t := time.NewTicker(j.config().SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-j.stop:
			return
		case <-t.C:
			j.sweep(false)
		case <-j.flush:
			j.flushDirty()
		}
	}
}

// sweep removes expired bans (logging "source unbanned" and deleting each
// from the state file in its own transaction), forgets failures older than
// FindTime, and now and then purges ban history older than HistoryTTL or
// beyond MaxTracked entries. purgeNow forces the history purge.
func (j *Jail) sweep(purgeNow bool) {
	now := j.config().Now()
	j.mu.Lock()
	var expired []netip.Prefix
	var expiredBans []banRecord
	for k, b := range j.bans {
		if !b.Until.After(now) {
			expired = append(expired, k)
			expiredBans = append(expiredBans, b)
			delete(j.bans, k)
		}
	}
	if len(expired) > 0 {
		j.reindexLocked()
	}
	j.tracker.expire(now.Add(-j.config().FindTime))
	var purged []netip.Prefix
	if purgeNow || now.Sub(j.lastPurge) >= historyPurgeEvery || len(j.history) > j.config().MaxTracked {
		j.lastPurge = now
		purged = j.purgeHistoryLocked(now)
	}
	j.mu.Unlock()

	for i, k := range expired {
		j.persist(k)
		j.log.Info("source unbanned", zap.String("source", keyString(k)),
			zap.Int("bans", expiredBans[i].Bans), zap.String("reason", "expired"))
	}
	if len(purged) > 0 {
		j.persist(purged...)
		j.log.Debug("ban history purged", zap.Int("entries", len(purged)))
	}
}

// purgeHistoryLocked forgets sources whose last ban is older than
// HistoryTTL and, if the history still exceeds MaxTracked, the ones banned
// longest ago. Keys with an active ban are always kept.
func (j *Jail) purgeHistoryLocked(now time.Time) []netip.Prefix {
	var purged []netip.Prefix
	for k, h := range j.history {
		if _, banned := j.bans[k]; !banned && now.Sub(h.Last) > j.config().HistoryTTL {
			purged = append(purged, k)
			delete(j.history, k)
		}
	}
	if over := len(j.history) - j.config().MaxTracked; over > 0 {
		var idle []netip.Prefix
		for k := range j.history {
			if _, banned := j.bans[k]; !banned {
				idle = append(idle, k)
			}
		}
		slices.SortFunc(idle, func(a, b netip.Prefix) int { return j.history[a].Last.Compare(j.history[b].Last) })
		for _, k := range idle[:min(over, len(idle))] {
			purged = append(purged, k)
			delete(j.history, k)
		}
	}
	return purged
}

// persist writes the current in-memory state of keys to the state file in
// one transaction. It snapshots the state after taking storeMu, so when two
// changes to one key race, whichever write runs last carries the newest
// state: writes never need to be ordered, and mu is never held across the
// fsync. Write errors are logged; the in-memory jail stays authoritative.
func (j *Jail) persist(keys ...netip.Prefix) {
	j.storeMu.Lock()
	defer j.storeMu.Unlock()
	if j.store == nil {
		return
	}
	states := make([]keyState, len(keys))
	j.mu.RLock()
	for i, k := range keys {
		states[i].key = k
		if b, ok := j.bans[k]; ok {
			states[i].ban = &b
		}
		if h, ok := j.history[k]; ok {
			states[i].history = &h
		}
	}
	j.mu.RUnlock()
	if err := j.store.write(states); err != nil {
		j.log.Error("persisting ban state failed; bans still apply until restart",
			zap.Int("keys", len(keys)), zap.Error(err))
	}
}
