package acl

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"go.uber.org/zap"
)

// BanInfo describes one active ban, for the admin API and logs. It
// marshals as {"ip": "...", "until": "RFC3339", "failures": N, "bans": N},
// Until in UTC and rounded up to the second.
type BanInfo struct {
	// IP is the banned address, or the prefix in CIDR form for an
	// aggregate (IPv6 /64) or manual prefix ban.
	IP string `json:"ip"`
	// Until is when the ban lifts, in UTC, rounded up to the second.
	Until time.Time `json:"until"`
	// Failures is how many failures within FindTime caused it (0 if manual).
	Failures int `json:"failures"`
	// Bans is how many times this key has been banned, this one included.
	Bans int `json:"bans"`
}

// MarshalJSON writes Until in UTC, rounded up to the second whatever it
// holds, so the API never claims a ban lifts sooner than it does.
func (b BanInfo) MarshalJSON() ([]byte, error) {
	type plain BanInfo // without this method
	p := plain(b)
	p.Until = ceilSecond(b.Until)
	return json.Marshal(p)
}

func banInfo(key netip.Prefix, b banRecord) BanInfo {
	return BanInfo{IP: keyString(key), Until: ceilSecond(b.Until), Failures: b.Failures, Bans: b.Bans}
}

// ceilSecond gives a UTC, whole-second time no earlier than t, so the JSON
// reads "2026-08-01T10:00:00Z" and never claims a ban lifts sooner than it
// does.
func ceilSecond(t time.Time) time.Time {
	t = t.UTC().Round(0)
	if tr := t.Truncate(time.Second); tr.Before(t) {
		return tr.Add(time.Second)
	}
	return t
}

// List returns the active bans, sorted by address (IPv4 first).
func (j *Jail) List() []BanInfo {
	now := j.config().Now()
	j.mu.RLock()
	keys := make([]netip.Prefix, 0, len(j.bans))
	for k, b := range j.bans {
		if b.Until.After(now) {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, comparePrefix)
	out := make([]BanInfo, len(keys))
	for i, k := range keys {
		out[i] = banInfo(k, j.bans[k])
	}
	j.mu.RUnlock()
	return out
}

// ActiveBans is the number of unexpired bans (for a gauge).
func (j *Jail) ActiveBans() int {
	now := j.config().Now()
	j.mu.RLock()
	defer j.mu.RUnlock()
	n := 0
	for _, b := range j.bans {
		if b.Until.After(now) {
			n++
		}
	}
	return n
}

// Ban bans an address or prefix by hand for exactly d or, when d is 0, for
// the escalated (and jittered) length of the key's next ban. It replaces
// any ban on the same key and counts in the key's ban history (the larger
// of its own and, with a Shared store, the fleet's). The ignore list does
// not apply: an operator's explicit ban wins, even over ignored addresses
// inside a banned prefix. Authentications in progress from the sources it
// covers are revoked (see AuthAttempt.Context). With a Shared store the
// ban is published to the fleet.
func (j *Jail) Ban(prefixOrIP string, d time.Duration) (BanInfo, error) {
	key, err := parseKey(prefixOrIP)
	if err != nil {
		return BanInfo{}, fmt.Errorf("banning %q: %w", prefixOrIP, err)
	}
	if d < 0 {
		return BanInfo{}, fmt.Errorf("banning %s: duration %s is negative", key, d)
	}
	fleetBans := 0
	if d == 0 {
		fleetBans = j.fleetHistory(key)
	}
	now := j.config().Now()
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return BanInfo{}, fmt.Errorf("banning %s: %w", key, ErrJailClosed)
	}
	b := j.banLocked(key, now, d, 0, true, fleetBans)
	j.tracker.remove(key)
	revoked := j.revokeLocked(key, true)
	j.mu.Unlock()
	revoke(revoked)
	j.persist(key)
	b = j.publishBan(key, b, nil)
	j.announceBan(key, b, nil, true)
	return banInfo(key, b), nil
}

// Unban lifts the ban on exactly this address or prefix. The key's failure
// count is reset, so one more failure does not re-ban it at once; its ban
// history is kept, so a later ban still escalates. An address that is only
// covered by a prefix ban is an error naming that prefix. With a Shared
// store the unban is published to the fleet even when this jail holds no
// such ban (another gateway may), and succeeds if the fleet held one.
// Every error when there is no such ban wraps ErrNotBanned.
func (j *Jail) Unban(prefixOrIP string) error {
	key, err := parseKey(prefixOrIP)
	if err != nil {
		return fmt.Errorf("unbanning %q: %w", prefixOrIP, err)
	}
	now := j.config().Now()
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return fmt.Errorf("unbanning %s: %w", key, ErrJailClosed)
	}
	b, ok := j.bans[key]
	if ok && b.Until.After(now) {
		delete(j.bans, key)
		j.reindexLocked()
		j.tracker.remove(key)
		j.mu.Unlock()
		j.persist(key)
		fleetHad, _ := j.publishUnban(key)
		j.log.Info("source unbanned", zap.String("source", keyString(key)),
			zap.Int("bans", b.Bans), zap.String("reason", "manual"), zap.Bool("fleet", fleetHad))
		j.announceUnban(key)
		return nil
	}
	cover, _, covered := j.activeBanLocked(key.Addr(), now)
	j.mu.Unlock()
	fleetHad, ferr := j.publishUnban(key)
	if ferr == nil && fleetHad {
		j.log.Info("source unbanned", zap.String("source", keyString(key)),
			zap.String("reason", "manual"), zap.Bool("fleet", true))
		j.announceUnban(key)
		return nil
	}
	if ferr != nil {
		return fmt.Errorf("unbanning %s: %w here, and the fleet store did not answer (other gateways may hold a ban; it is lifted there when the store is back): %w",
			keyString(key), ErrNotBanned, ferr)
	}
	if covered && key.IsSingleIP() {
		return fmt.Errorf("unbanning %s: %w itself; it is covered by the ban on %s, unban that",
			keyString(key), ErrNotBanned, keyString(cover))
	}
	return fmt.Errorf("unbanning %s: %w", keyString(key), ErrNotBanned)
}

// announceUnban calls OnLocalUnban, outside the locks.
func (j *Jail) announceUnban(key netip.Prefix) {
	if f := j.config().OnLocalUnban; f != nil {
		f(key)
	}
}

// publishUnban lifts key's ban in the fleet, if there is one, and reports
// whether the fleet held one.
func (j *Jail) publishUnban(key netip.Prefix) (bool, error) {
	if j.config().Shared == nil {
		return false, nil
	}
	ctx, cancel := sharedCtx()
	defer cancel()
	had, err := j.config().Shared.Unban(ctx, key)
	if err != nil {
		j.log.Warn("publishing an unban failed; it reaches the other gateways when the fleet store is back",
			zap.String("source", keyString(key)), zap.Error(err))
	}
	return had, err
}

// parseKey reads an operator-supplied address or CIDR with the same strict
// rules as --allow (no templates: a ban names one thing).
func parseKey(s string) (netip.Prefix, error) {
	if isTemplate(s) {
		return netip.Prefix{}, fmt.Errorf("%w: templates are not accepted here; write an IP address or CIDR", ErrInvalidEntry)
	}
	p, _, perr := parseToken(s)
	if perr != nil {
		perr.Field, perr.Entry = FieldAddress, s
		return netip.Prefix{}, perr
	}
	return p, nil
}
