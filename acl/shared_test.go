package acl

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// errFleetDown is what fakeFleet answers while it is down.
var errFleetDown = errors.New("fleet store down")

// fakeFleet is a Shared store in memory, as several gateways would see it:
// failure counts per key (no window: tests advance no time), ban history,
// bans. It records what the jail published and can be taken down.
type fakeFleet struct {
	mu        sync.Mutex
	down      bool
	failures  map[netip.Prefix]int
	history   map[netip.Prefix]int
	bans      map[netip.Prefix]SharedBan
	published []publishedBan
	unbans    []netip.Prefix
	now       func() time.Time
}

type publishedBan struct {
	key      netip.Prefix
	d        time.Duration
	failures int
	manual   bool
	clear    []netip.Prefix
}

func newFakeFleet(now func() time.Time) *fakeFleet {
	return &fakeFleet{failures: map[netip.Prefix]int{}, history: map[netip.Prefix]int{},
		bans: map[netip.Prefix]SharedBan{}, now: now}
}

func (f *fakeFleet) setDown(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = down
}

// setFailures says how many failures other gateways counted for key.
func (f *fakeFleet) setFailures(key string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failures[netip.MustParsePrefix(key)] = n
}

func (f *fakeFleet) setHistory(key string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.history[netip.MustParsePrefix(key)] = n
}

func (f *fakeFleet) publishedBans() []publishedBan {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]publishedBan(nil), f.published...)
}

func (f *fakeFleet) unbanned() []netip.Prefix {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]netip.Prefix(nil), f.unbans...)
}

func (f *fakeFleet) RecordFailure(_ context.Context, key netip.Prefix, _ time.Duration) (int, int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return 0, 0, errFleetDown
	}
	f.failures[key]++
	return f.failures[key], f.history[key], nil
}

func (f *fakeFleet) FailureCounts(_ context.Context, _ time.Duration, keys ...netip.Prefix) ([]int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return nil, errFleetDown
	}
	out := make([]int, len(keys))
	for i, k := range keys {
		out[i] = f.failures[k]
	}
	return out, nil
}

func (f *fakeFleet) Ban(_ context.Context, key netip.Prefix, d time.Duration, failures int, manual bool, clear []netip.Prefix) (SharedBan, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return SharedBan{}, errFleetDown
	}
	f.published = append(f.published, publishedBan{key, d, failures, manual, clear})
	f.history[key]++
	delete(f.failures, key)
	for _, c := range clear {
		delete(f.failures, c)
	}
	// The fleet's clock runs a little ahead of the gateway's.
	b := SharedBan{Key: key, Until: f.now().Add(d + time.Second), Failures: failures, Bans: f.history[key], Manual: manual, At: f.now()}
	f.bans[key] = b
	return b, nil
}

func (f *fakeFleet) Unban(_ context.Context, key netip.Prefix) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return false, errFleetDown
	}
	f.unbans = append(f.unbans, key)
	_, had := f.bans[key]
	delete(f.bans, key)
	return had, nil
}

func (f *fakeFleet) BanHistory(_ context.Context, key netip.Prefix) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return 0, errFleetDown
	}
	return f.history[key], nil
}

// sharedJail is a jail (MaxRetry 5, no jitter, fake clock) on a fakeFleet.
func sharedJail(t *testing.T, mods ...func(*JailConfig)) (*Jail, *fakeFleet, *fakeClock) {
	t.Helper()
	clock := newFakeClock()
	fleet := newFakeFleet(clock.Now)
	cfg := testJailConfig(clock)
	cfg.Shared = fleet
	for _, m := range mods {
		m(&cfg)
	}
	return newTestJail(t, cfg), fleet, clock
}

// TestSharedFailuresBanFleetWide: failures other gateways counted bring
// the ban sooner, the ban is published with the windows to clear, and its
// length escalates from the fleet's history.
func TestSharedFailuresBanFleetWide(t *testing.T) {
	t.Parallel()
	j, fleet, clock := sharedJail(t)
	src := ip("192.0.2.40")
	fleet.setFailures("192.0.2.40/32", 3) // three on other gateways
	fleet.setHistory("192.0.2.40/32", 2)  // banned twice before, elsewhere
	banned, _ := j.Failed(src, badPassword)
	require.False(t, banned, "4 of 5")
	banned, until := j.Failed(src, badPassword)
	require.True(t, banned, "the 5th fleet-wide failure bans, though only 2 were seen here")

	pub := fleet.publishedBans()
	require.Len(t, pub, 1)
	require.Equal(t, netip.MustParsePrefix("192.0.2.40/32"), pub[0].key)
	require.Equal(t, 5, pub[0].failures)
	require.False(t, pub[0].manual)
	// Ban number 3: ban-time × factor², as the fleet's history says.
	require.Equal(t, 4*DefaultBanTime, pub[0].d)
	// The fleet's end (by its clock) is adopted.
	require.Equal(t, clock.Now().Add(4*DefaultBanTime+time.Second), until)
	l := j.List()
	require.Len(t, l, 1)
	require.Equal(t, 3, l[0].Bans)
	require.Equal(t, 5, l[0].Failures)
}

// TestSharedIPv6BanClearsTheOtherKey: an IPv6 source's ban publishes the
// other key of the failure to clear.
func TestSharedIPv6BanClearsTheOtherKey(t *testing.T) {
	t.Parallel()
	j, fleet, _ := sharedJail(t)
	fleet.setFailures("2001:db8:5::/64", 4)
	banned, _ := j.Failed(ip("2001:db8:5::1"), badPassword)
	require.True(t, banned)
	pub := fleet.publishedBans()
	require.Len(t, pub, 1)
	require.Equal(t, netip.MustParsePrefix("2001:db8:5::/64"), pub[0].key)
	require.Equal(t, []netip.Prefix{netip.MustParsePrefix("2001:db8:5::1/128")}, pub[0].clear)
}

// TestSharedDownCountsLocally: while the store fails, the jail counts and
// bans on its own, and the ban is pushed later (SharedBans has it).
func TestSharedDownCountsLocally(t *testing.T) {
	t.Parallel()
	j, fleet, clock := sharedJail(t)
	fleet.setDown(true)
	src := ip("192.0.2.41")
	for i := 1; i <= DefaultBanMaxRetry; i++ {
		banned, until := j.Failed(src, badPassword)
		require.Equal(t, i == DefaultBanMaxRetry, banned, "failure %d", i)
		if banned {
			require.Equal(t, clock.Now().Add(DefaultBanTime), until)
		}
	}
	require.True(t, j.Banned(src))
	require.Empty(t, fleet.publishedBans())
	sb := j.SharedBans()
	require.Len(t, sb, 1)
	require.Equal(t, netip.MustParsePrefix("192.0.2.41/32"), sb[0].Key)
	require.Equal(t, clock.Now(), sb[0].At)
	require.Equal(t, 1, sb[0].Bans)
}

// TestSharedApplyBan: a ban from the fleet is enforced at once, revokes
// the source's authentications in progress and wakes its waiters, merges
// without shortening, and applying it again changes nothing.
func TestSharedApplyBan(t *testing.T) {
	t.Parallel()
	j, _, clock := sharedJail(t, func(c *JailConfig) { c.MaxRetry = 1 })
	const src = "192.0.2.42"
	a := begin(t, j, src)
	w := beginAsync(j, context.Background(), src)
	key := netip.MustParsePrefix(src + "/32")
	b := SharedBan{Key: key, Until: clock.Now().Add(time.Hour), Failures: 5, Bans: 4, At: clock.Now()}
	j.ApplyBan(b)
	require.True(t, j.Banned(ip(src)))
	require.ErrorIs(t, context.Cause(a.Context()), ErrBanned, "a login in flight outlived a fleet ban")
	require.ErrorIs(t, receive(t, w).err, ErrBanned)
	a.End()
	requireNoAttempts(t, j)

	l := j.List()
	require.Len(t, l, 1)
	require.Equal(t, 4, l[0].Bans)

	// A shorter automatic ban does not shorten it; a manual one replaces it.
	j.ApplyBan(SharedBan{Key: key, Until: clock.Now().Add(time.Minute), Bans: 4, At: clock.Now()})
	require.Equal(t, clock.Now().Add(time.Hour), j.List()[0].Until)
	j.ApplyBan(SharedBan{Key: key, Until: clock.Now().Add(time.Minute), Bans: 5, Manual: true, At: clock.Now()})
	require.Equal(t, clock.Now().Add(time.Minute), j.List()[0].Until)
	require.Equal(t, 5, j.List()[0].Bans)

	// An expired or malformed one is ignored.
	j.ApplyBan(SharedBan{Key: netip.MustParsePrefix("192.0.2.43/32"), Until: clock.Now().Add(-time.Second)})
	j.ApplyBan(SharedBan{Key: netip.PrefixFrom(ip("192.0.2.44"), 24), Until: clock.Now().Add(time.Hour)})
	require.Len(t, j.List(), 1)

	// The next local ban of the source escalates from the fleet's count.
	j.ApplyUnban(key)
	require.False(t, j.Banned(ip(src)))
	j.ApplyUnban(key) // twice: nothing
	banned, _ := j.Failed(ip(src), badPassword)
	require.True(t, banned)
	require.Equal(t, 6, j.List()[0].Bans)
}

// TestSharedApplyBanPersists: fleet bans are written to the state file in
// the background and survive a restart, with their creation time.
func TestSharedApplyBanPersists(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "bans.db")
	clock := newFakeClock()
	cfg := testJailConfig(clock)
	cfg.StatePath = path
	cfg.Shared = newFakeFleet(clock.Now)
	j, err := NewJail(cfg)
	require.NoError(t, err)
	at := clock.Now().Add(-time.Minute)
	addr := ip("192.0.2.50")
	for i := range 10 {
		addr = addr.Next()
		j.ApplyBan(SharedBan{Key: netip.PrefixFrom(addr, 32), Until: clock.Now().Add(time.Hour), Bans: i + 1, At: at})
	}
	j.ApplyBan(SharedBan{Key: netip.MustParsePrefix("198.51.100.0/24"), Until: clock.Now().Add(time.Hour), Bans: 1, Manual: true, At: at})
	require.NoError(t, j.Close())

	j2, err := NewJail(cfg)
	require.NoError(t, err)
	defer j2.Close()
	require.True(t, j2.Banned(ip("192.0.2.51")))
	require.True(t, j2.Banned(ip("198.51.100.9")))
	require.True(t, j2.Banned(ip("192.0.2.60")))
	sb := j2.SharedBans()
	require.Len(t, sb, 11)
	for _, b := range sb {
		require.Equal(t, at, b.At, "the creation time survives a restart")
	}
}

// TestSharedAuthSlotsUseFleetCounts: failures on other gateways leave a
// source fewer authentications here, but one is always admitted when none
// is in progress.
func TestSharedAuthSlotsUseFleetCounts(t *testing.T) {
	t.Parallel()
	j, fleet, _ := sharedJail(t)
	const src = "192.0.2.45"
	fleet.setFailures(src+"/32", 3) // 2 retries left fleet-wide
	a := begin(t, j, src)
	b := begin(t, j, src)
	require.False(t, slotFree(t, j, src), "a 3rd authentication with 2 retries left fleet-wide")
	a.End()
	b.End()

	fleet.setFailures(src+"/32", 5) // a ban is on its way from elsewhere
	c := begin(t, j, src)
	require.False(t, slotFree(t, j, src), "only one attempt while the fleet count is at the limit")
	c.End()

	fleet.setDown(true) // the local count alone, MaxRetry in flight
	var all []*AuthAttempt
	for range DefaultBanMaxRetry {
		all = append(all, begin(t, j, src))
	}
	require.False(t, slotFree(t, j, src))
	for _, x := range all {
		x.End()
	}
	requireNoAttempts(t, j)
}

// TestSharedManualBanAndUnban: a manual ban without a length escalates
// from the fleet's history and is published; an unban goes to the fleet
// even when this jail holds no such ban, and succeeds if the fleet had one.
func TestSharedManualBanAndUnban(t *testing.T) {
	t.Parallel()
	j, fleet, clock := sharedJail(t)
	fleet.setHistory("203.0.113.0/24", 1)
	info, err := j.Ban("203.0.113.0/24", 0)
	require.NoError(t, err)
	require.Equal(t, 2, info.Bans)
	pub := fleet.publishedBans()
	require.Len(t, pub, 1)
	require.True(t, pub[0].manual)
	require.Equal(t, 2*DefaultBanTime, pub[0].d)
	require.Equal(t, ceilSecond(clock.Now().Add(2*DefaultBanTime+time.Second)), info.Until, "the fleet's end is adopted")

	// Held only elsewhere: this jail has none, the fleet has one.
	other := netip.MustParsePrefix("192.0.2.60/32")
	fleet.mu.Lock()
	fleet.bans[other] = SharedBan{Key: other, Until: clock.Now().Add(time.Hour)}
	fleet.mu.Unlock()
	require.NoError(t, j.Unban("192.0.2.60"))
	require.Contains(t, fleet.unbanned(), other)
	require.ErrorIs(t, j.Unban("192.0.2.60"), ErrNotBanned, "neither holds it now")

	require.NoError(t, j.Unban("203.0.113.0/24"))
	require.Contains(t, fleet.unbanned(), netip.MustParsePrefix("203.0.113.0/24"))

	// Store down: a local unban still works; none anywhere is reported so.
	fleet.setDown(true)
	_, err = j.Ban("192.0.2.61", time.Hour)
	require.NoError(t, err)
	require.NoError(t, j.Unban("192.0.2.61"))
	err = j.Unban("192.0.2.62")
	require.ErrorIs(t, err, ErrNotBanned)
	require.ErrorContains(t, err, "fleet store did not answer")
}
