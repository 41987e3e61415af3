package acl

import (
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	bolt "go.etcd.io/bbolt"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pgwarden/pgwarden/internal/logtext"
)

// Jail is a fail2ban built into the gateway: it counts authentication
// failures per source, bans a source that fails MaxRetry times within
// FindTime, escalates the bans of repeat offenders, and persists bans and
// ban history. Banned is the cheap accept-time check Listener consults.
//
// Keys are normalised peer addresses (see PeerAddr), never anything a
// client sends. IPv6 sources are counted twice, under the address and
// under its IPv6Prefix-long prefix; when the prefix reaches MaxRetry the
// prefix is banned, which bans every address in it (privacy addresses
// rotate within a /64, which usually is one host or one subscriber).
//
// A successful login deliberately does not reset a source's count, unlike
// a per-user lockout: if it did, an attacker holding one valid credential (or
// sharing a NAT with a legitimate client) could interleave good logins to
// brute-force other roles forever. Failures simply age out of FindTime.
type Jail struct {
	// cfg is the configuration in force, replaced whole by Reconfigure;
	// read it through config().
	cfg atomic.Pointer[JailConfig]
	log *zap.Logger

	// mu guards tracker, bans, lens4/6, history, closed and lastPurge.
	// Banned takes it for reading; writers never hold it across disk I/O
	// (see persist), so the accept path never waits for an fsync.
	mu      sync.RWMutex
	tracker *tracker
	bans    map[netip.Prefix]banRecord
	lens4   []int // distinct prefix lengths among IPv4 ban keys
	lens6   []int // and among IPv6 ones
	history map[netip.Prefix]historyRecord
	closed  bool
	auths   authSlots // authentications in progress (authslots.go)

	// active is len(bans), readable without the lock: the common case of
	// no bans at all costs Banned one atomic load.
	active atomic.Int64

	// ignore is JailConfig.Ignore as in force now (SetIgnore replaces it).
	ignore atomic.Pointer[Allowlist]

	storeMu   sync.Mutex // guards store; never taken while holding mu
	store     *store     // nil when StatePath is "" or after Close
	lastPurge time.Time

	// dirty holds keys whose state persistLater queued for the sweeper
	// goroutine to write; flush wakes it.
	dirtyMu sync.Mutex
	dirty   map[netip.Prefix]struct{}
	flush   chan struct{}

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

// NewJail validates cfg, restores persisted bans and history, and starts
// the background sweeper that lifts expired bans. Close it when done.
func NewJail(cfg JailConfig) (*Jail, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, err
	}
	j := &Jail{
		log:     cfg.Logger,
		tracker: newTracker(cfg.MaxTracked, cfg.MaxRetry),
		bans:    map[netip.Prefix]banRecord{},
		history: map[netip.Prefix]historyRecord{},
		auths:   newAuthSlots(),
		dirty:   map[netip.Prefix]struct{}{},
		flush:   make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	j.cfg.Store(&cfg)
	j.ignore.Store(cfg.Ignore)
	if cfg.StatePath != "" {
		s, st, err := openStore(cfg.StatePath, cfg.StateLockTimeout, cfg.Now(), j.log)
		if err != nil {
			return nil, err
		}
		j.store = s
		j.bans, j.history = st.bans, st.history
		j.reindexLocked()
		j.log.Info("ban state restored", zap.String("path", cfg.StatePath),
			zap.Int("bans", len(j.bans)), zap.Int("history", len(j.history)))
		// Drop bans that expired while we were down, and stale history,
		// before the first connection is judged.
		j.sweep(true)
	}
	go j.sweepLoop()
	return j, nil
}

// config is the configuration in force.
func (j *Jail) config() *JailConfig { return j.cfg.Load() }

// Reconfigure puts the ban settings of c in force (a reload): MaxRetry,
// FindTime, BanTime, TimeFactor, MaxTime, Ignore, IPv6Prefix, MaxTracked
// and HistoryTTL; the rest of c (the state file, the clock, the hooks)
// stays as the jail was built. Failures already counted stay counted and
// are judged by the new window and threshold from the next one; bans in
// force keep their end (new ones get the new lengths); IPv6 sources are
// counted under the new prefix length from now on, while bans of prefixes
// of the old length stay in force. c is validated first: an invalid one is
// refused whole.
func (j *Jail) Reconfigure(c JailConfig) error {
	old := j.config()
	next := *old
	next.MaxRetry, next.FindTime, next.BanTime = c.MaxRetry, c.FindTime, c.BanTime
	next.TimeFactor, next.MaxTime, next.Ignore = c.TimeFactor, c.MaxTime, c.Ignore
	next.IPv6Prefix, next.MaxTracked, next.HistoryTTL = c.IPv6Prefix, c.MaxTracked, c.HistoryTTL
	if err := next.CheckAndSetDefaults(); err != nil {
		return err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.tracker.resize(next.MaxTracked, next.MaxRetry)
	j.cfg.Store(&next)
	j.ignore.Store(next.Ignore)
	return nil
}

// Banned reports whether ip, or a banned prefix containing it, is banned
// now. It is the accept-path check: one atomic load when nobody is banned,
// otherwise a read lock and one map lookup per distinct ban-key length. An
// expired ban stops matching at once, before the sweeper removes it.
func (j *Jail) Banned(ip netip.Addr) bool {
	if j.active.Load() == 0 || !ip.IsValid() {
		return false
	}
	ip = normalize(ip)
	now := j.config().Now()
	j.mu.RLock()
	defer j.mu.RUnlock()
	_, _, ok := j.activeBanLocked(ip, now)
	return ok
}

// exempt reports an ignored source inside an automatic ban's prefix: a
// neighbour's failures that banned the /64 must not lock out an address
// the operator said never to ban. Manual bans are not exempt.
func (j *Jail) exempt(ip netip.Addr, b banRecord) bool {
	return !b.Manual && j.ignored(ip)
}

// ignored reports a source the jail never counts or bans automatically.
func (j *Jail) ignored(ip netip.Addr) bool { return j.ignore.Load().Allows(ip) }

// SetIgnore replaces the list of ignored sources (JailConfig.Ignore), e.g.
// when a reload re-reads the host's own addresses; nil ignores none. The
// next failure, authentication and accept-time check see the new list.
func (j *Jail) SetIgnore(a *Allowlist) { j.ignore.Store(a) }

// Failed records one authentication failure from ip and bans the source
// when it reaches MaxRetry within FindTime. It returns whether the source
// is banned now and until when. Ignored sources are logged but never
// counted. A failure from a source that is already banned still counts:
// its connection reached postgres before the ban, and every guess postgres
// checked belongs in the window; reaching MaxRetry again escalates the ban.
func (j *Jail) Failed(ip netip.Addr, f Failure) (banned bool, until time.Time) {
	return j.failed(nil, ip, f)
}

// failed is Failed, also ending attempt a (if not nil) in the same critical
// section as the count, so no waiting authentication can take a's slot
// before its failure is counted.
func (j *Jail) failed(a *AuthAttempt, ip netip.Addr, f Failure) (banned bool, until time.Time) {
	if !ip.IsValid() {
		a.End()
		return false, time.Time{}
	}
	ip = normalize(ip)
	if j.ignored(ip) {
		a.End()
		j.logFailure(zap.InfoLevel, ip, f, zap.Bool("ignored", true))
		return false, time.Time{}
	}
	host, agg := j.keys(ip)
	// The fleet counts first, outside the locks (a network round trip);
	// a's slot is still held meanwhile, so no waiting authentication can
	// slip in before this failure is counted here.
	fleetHost, fleetAgg := j.shareFailure(host), j.shareFailure(agg)
	now := j.config().Now()

	j.mu.Lock()
	j.endLocked(a)
	if j.closed {
		j.mu.Unlock()
		return false, time.Time{}
	}
	prevKey, prev, wasBanned := j.activeBanLocked(ip, now)
	hostN := max(j.tracker.add(host, now, j.config().FindTime), fleetHost.failures)
	aggN := 0
	if agg.IsValid() {
		aggN = max(j.tracker.add(agg, now, j.config().FindTime), fleetAgg.failures)
	}
	var key netip.Prefix
	var n, fleetBans int
	switch {
	case agg.IsValid() && aggN >= j.config().MaxRetry:
		key, n, fleetBans = agg, aggN, fleetAgg.bans // covers host
	case hostN >= j.config().MaxRetry:
		key, n, fleetBans = host, hostN, fleetHost.bans
	}
	var b banRecord
	var revoked []*AuthAttempt
	if key.IsValid() {
		b = j.banLocked(key, now, 0, n, false, fleetBans)
		j.tracker.remove(host)
		if agg.IsValid() {
			j.tracker.remove(agg)
		}
		revoked = j.revokeLocked(key, false)
	}
	j.mu.Unlock()
	revoke(revoked)

	fields := []zap.Field{zap.Int("failures", hostN)}
	if agg.IsValid() {
		fields = append(fields, zap.Stringer("prefix", agg), zap.Int("prefix_failures", aggN))
	}
	if wasBanned {
		fields = append(fields, zap.Bool("already_banned", true),
			zap.String("ban", keyString(prevKey)), zap.Time("until", prev.Until))
	}
	j.logFailure(zap.WarnLevel, ip, f, fields...)
	if !key.IsValid() {
		return wasBanned, prev.Until
	}
	j.persist(key)
	b = j.publishBan(key, b, otherKeys(key, host, agg))
	j.announceBan(key, b, failureFields(f), false)
	return true, b.Until
}

// logFailure writes one "auth failure" line. Fields are only built when the
// level is enabled: under a flood this is the jail's hottest path.
func (j *Jail) logFailure(lvl zapcore.Level, ip netip.Addr, f Failure, extra ...zap.Field) {
	ce := j.log.Check(lvl, "auth failure")
	if ce == nil {
		return
	}
	fields := append([]zap.Field{zap.String("source", ip.String())}, failureFields(f)...)
	ce.Write(append(fields, extra...)...)
}

// failureFields are the client-supplied details of a failure, clipped.
func failureFields(f Failure) []zap.Field {
	fields := []zap.Field{
		zap.String("user", clip(f.User)),
		zap.String("database", clip(f.Database)),
		zap.String("sqlstate", clip(f.SQLState)),
	}
	if f.Reason != "" {
		fields = append(fields, zap.String("reason", f.Reason))
	}
	return fields
}

// DB is the state file (JailConfig.StatePath), or nil when the jail keeps
// its state in memory. Other state of the gateway (grants, rule hits) may
// live in the same file, in buckets of its own: the jail uses "bans",
// "history" and "meta". It is open until Close, which closes it; other
// users must be done with it by then.
func (j *Jail) DB() *bolt.DB {
	j.storeMu.Lock()
	defer j.storeMu.Unlock()
	if j.store == nil {
		return nil
	}
	return j.store.db
}

// Close stops the sweeper and closes the state file. Banned keeps working
// from memory; Failed, Ban and Unban stop recording.
func (j *Jail) Close() error {
	var err error
	j.closeOnce.Do(func() {
		close(j.stop)
		<-j.done
		j.mu.Lock()
		j.closed = true
		j.auths.wakeAll()
		j.mu.Unlock()
		j.flushDirty() // fleet bans applied since the last flush
		j.storeMu.Lock()
		defer j.storeMu.Unlock()
		if j.store != nil {
			err = j.store.close()
			j.store = nil
		}
	})
	return err
}

// keys returns the ban keys of a normalised address: the address itself,
// and for IPv6 its aggregate prefix (invalid when aggregation is off).
func (j *Jail) keys(ip netip.Addr) (host, agg netip.Prefix) {
	host = netip.PrefixFrom(ip, ip.BitLen())
	if ip.Is6() && j.config().IPv6Prefix < 128 {
		agg, _ = ip.Prefix(j.config().IPv6Prefix)
	}
	return host, agg
}

// activeBanLocked finds an unexpired ban covering ip: one lookup per
// distinct key length in use (normally /32, or /128 and /64).
func (j *Jail) activeBanLocked(ip netip.Addr, now time.Time) (netip.Prefix, banRecord, bool) {
	lens := j.lens4
	if ip.Is6() {
		lens = j.lens6
	}
	for _, l := range lens {
		p, err := ip.Prefix(l)
		if err != nil {
			continue
		}
		if b, ok := j.bans[p]; ok && b.Until.After(now) && !j.exempt(ip, b) {
			return p, b, true
		}
	}
	return netip.Prefix{}, banRecord{}, false
}

// banLocked bans key from now, for d or (d == 0) the escalated length of
// its next ban, and records the ban in its history. The ban's number is
// one more than the larger of the key's own history and fleetBans (its
// fleet-wide history, 0 without one). The caller revokes the
// authentications the new ban covers (revokeLocked).
func (j *Jail) banLocked(key netip.Prefix, now time.Time, d time.Duration, failures int, manual bool, fleetBans int) banRecord {
	h := j.history[key]
	h.Bans = max(h.Bans, fleetBans) + 1
	h.Last = now
	if d == 0 {
		d = j.config().banDuration(h.Bans)
	}
	b := banRecord{Until: now.Add(d), Failures: failures, Bans: h.Bans, Manual: manual, At: now}
	old, existed := j.bans[key]
	if !manual && existed && old.Until.After(now) {
		// An automatic re-ban while banned (failures that postgres
		// checked before the ban took effect) escalates but never
		// shortens the ban in force, nor turns a manual one automatic.
		b.Until = later(b.Until, old.Until)
		b.Manual = old.Manual
	}
	j.bans[key] = b
	j.history[key] = h
	if !existed {
		j.reindexLocked()
	}
	return b
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// reindexLocked recomputes the key lengths Banned probes, and the count.
func (j *Jail) reindexLocked() {
	var seen4 [33]bool
	var seen6 [129]bool
	for k := range j.bans {
		if k.Addr().Is4() {
			seen4[k.Bits()] = true
		} else {
			seen6[k.Bits()] = true
		}
	}
	j.lens4, j.lens6 = j.lens4[:0], j.lens6[:0]
	// Longest first: the host key is the likeliest hit.
	for l := 32; l >= 0; l-- {
		if seen4[l] {
			j.lens4 = append(j.lens4, l)
		}
	}
	for l := 128; l >= 0; l-- {
		if seen6[l] {
			j.lens6 = append(j.lens6, l)
		}
	}
	j.lens4, j.lens6 = slices.Clip(j.lens4), slices.Clip(j.lens6)
	j.active.Store(int64(len(j.bans)))
}

// announceBan logs a new ban and calls OnBan, outside the locks.
func (j *Jail) announceBan(key netip.Prefix, b banRecord, why []zap.Field, manual bool) {
	j.log.Warn("source banned", append([]zap.Field{
		zap.String("source", keyString(key)),
		zap.Int("failures", b.Failures),
		zap.Time("until", b.Until),
		zap.Int("bans", b.Bans),
		zap.Bool("manual", manual),
	}, why...)...)
	if j.config().OnBan != nil {
		j.config().OnBan(key.Addr(), b.Until)
	}
	if f := j.config().OnLocalBan; f != nil {
		f(key, b.At, b.Until, b.Failures, manual)
	}
}

// keyString shows a single-address key as the address, a prefix as CIDR.
func keyString(k netip.Prefix) string {
	if k.IsSingleIP() {
		return k.Addr().String()
	}
	return k.String()
}

// clip bounds client-supplied strings in log lines (postgres truncates
// names to 63 bytes anyway; anything longer is noise or an attack).
func clip(s string) string {
	s = logtext.Escape(s) // exact bytes, not U+FFFD
	const maxLen = 128
	if len(s) <= maxLen {
		return s
	}
	cut := maxLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut-- // do not split a multi-byte character
	}
	return s[:cut] + "…"
}
