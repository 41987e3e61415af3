package acl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// fakeClock is a settable clock for the jail.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 8, 1, 10, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// testJailConfig is DefaultJailConfig on a fake clock with no jitter
// (Rand returns 0) and a sweeper that never fires on its own.
func testJailConfig(clock *fakeClock) JailConfig {
	cfg := DefaultJailConfig()
	cfg.MaxTime = 2 * time.Hour
	cfg.Now = clock.Now
	cfg.Rand = func() float64 { return 0 }
	cfg.SweepInterval = time.Hour
	return cfg
}

func newTestJail(t testing.TB, cfg JailConfig) *Jail {
	t.Helper()
	j, err := NewJail(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { j.Close() })
	return j
}

var badPassword = Failure{User: "alice", Database: "app", SQLState: "28P01"}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestJailBansOnMaxRetry(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	j := newTestJail(t, testJailConfig(clock))
	src := ip("192.0.2.10")
	for i := 1; i < DefaultBanMaxRetry; i++ {
		if banned, _ := j.Failed(src, badPassword); banned {
			t.Fatalf("banned after %d failures, want %d", i, DefaultBanMaxRetry)
		}
		clock.Advance(time.Second)
	}
	if j.Banned(src) {
		t.Fatal("banned before the Nth failure")
	}
	banned, until := j.Failed(src, badPassword)
	if !banned || !until.Equal(clock.Now().Add(DefaultBanTime)) {
		t.Fatalf("Nth failure: banned=%v until=%s, want true until %s", banned, until, clock.Now().Add(DefaultBanTime))
	}
	if !j.Banned(src) || j.Banned(ip("192.0.2.11")) || j.ActiveBans() != 1 {
		t.Fatal("want exactly 192.0.2.10 banned")
	}
	// A failure that ends while the source is banned (postgres checked it)
	// still counts: one more keeps the ban as it is...
	if b, u := j.Failed(src, badPassword); !b || !u.Equal(until) {
		t.Fatalf("failure while banned: %v %s", b, u)
	}
	// ...and MaxRetry of them escalate it: the second ban is longer.
	clock.Advance(time.Minute)
	for range DefaultBanMaxRetry - 1 {
		j.Failed(src, badPassword)
	}
	l := j.List()
	want := clock.Now().Add(2 * DefaultBanTime)
	if len(l) != 1 || l[0].Bans != 2 || !l[0].Until.Equal(want) {
		t.Fatalf("after MaxRetry failures while banned: List = %+v, want ban 2 until %s", l, want)
	}
}

func TestJailFindTimeWindow(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	j := newTestJail(t, testJailConfig(clock))
	src := ip("192.0.2.20")
	// One failure every 3 minutes: never 5 within any 10-minute window.
	for range 20 {
		if banned, _ := j.Failed(src, badPassword); banned {
			t.Fatal("failures spread over more than find-time banned the source")
		}
		clock.Advance(3 * time.Minute)
	}
	// Five within 10 minutes do (once the earlier ones have aged out).
	clock.Advance(DefaultBanFindTime)
	for i := range DefaultBanMaxRetry {
		banned, _ := j.Failed(src, badPassword)
		if banned != (i == DefaultBanMaxRetry-1) {
			t.Fatalf("failure %d: banned=%v", i+1, banned)
		}
		clock.Advance(2*time.Minute - time.Second)
	}
}

func TestJailBanLiftsWithJitterBound(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	core, logs := observer.New(zapcore.InfoLevel)
	cfg := testJailConfig(clock)
	cfg.Rand = func() float64 { return 0.999999 } // the longest possible jitter
	cfg.Logger = zap.New(core)
	j := newTestJail(t, cfg)
	src := ip("198.51.100.1")
	start := clock.Now()
	var until time.Time
	for range DefaultBanMaxRetry {
		_, until = j.Failed(src, badPassword)
	}
	maxUntil := start.Add(time.Duration(float64(DefaultBanTime) * (1 + DefaultJitter)))
	if !until.After(start.Add(DefaultBanTime)) || until.After(maxUntil) {
		t.Fatalf("until %s outside (ban-time, ban-time+5%%] = (%s, %s]", until, start.Add(DefaultBanTime), maxUntil)
	}
	clock.Advance(DefaultBanTime)
	if !j.Banned(src) {
		t.Fatal("ban lifted before its jittered end")
	}
	clock.Advance(until.Sub(clock.Now()))
	if j.Banned(src) {
		t.Fatal("ban still matches at its end (lazy lift)")
	}
	j.sweep(false)
	if j.ActiveBans() != 0 || len(j.List()) != 0 {
		t.Fatal("sweep left the expired ban")
	}
	if logs.FilterMessage("source unbanned").FilterField(zap.String("reason", "expired")).Len() != 1 {
		t.Fatalf("want one expired unban log line, got %v", logs.All())
	}
}

func TestJailEscalation(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	cfg := testJailConfig(clock) // 10m ×2, capped at 2h
	j := newTestJail(t, cfg)
	src := ip("203.0.113.5")
	want := []time.Duration{10 * time.Minute, 20 * time.Minute, 40 * time.Minute, 80 * time.Minute, 2 * time.Hour, 2 * time.Hour}
	for n, w := range want {
		var until time.Time
		for range DefaultBanMaxRetry {
			_, until = j.Failed(src, badPassword)
		}
		if got := until.Sub(clock.Now()); got != w {
			t.Fatalf("ban %d lasts %s, want %s", n+1, got, w)
		}
		if l := j.List(); len(l) != 1 || l[0].Bans != n+1 || l[0].Failures != DefaultBanMaxRetry {
			t.Fatalf("ban %d: List = %+v", n+1, l)
		}
		clock.Advance(w)
		j.sweep(false)
	}
	// Huge ban counts must not overflow past the cap.
	if d := cfg.banDuration(10_000); d != 2*time.Hour {
		t.Fatalf("banDuration(10000) = %s, want the 2h cap", d)
	}
}

func TestJailIgnoreList(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	core, logs := observer.New(zapcore.InfoLevel)
	cfg := testJailConfig(clock)
	ignore, err := ParseList(FieldIgnore, []string{"10.0.0.0/8", "2001:db8:ffff::/48"})
	require.NoError(t, err)
	cfg.Ignore, cfg.Logger = ignore, zap.New(core)
	j := newTestJail(t, cfg)
	for _, s := range []string{"10.1.2.3", "::ffff:10.1.2.3", "2001:db8:ffff::1"} {
		for range 50 {
			if banned, _ := j.Failed(ip(s), badPassword); banned {
				t.Fatalf("ignored source %s was banned", s)
			}
		}
		if j.Banned(ip(s)) {
			t.Fatalf("ignored source %s is banned", s)
		}
	}
	if j.tracker.len() != 0 {
		t.Fatalf("ignored sources were counted: %d tracked", j.tracker.len())
	}
	if logs.FilterMessage("auth failure").FilterField(zap.Bool("ignored", true)).Len() != 150 {
		t.Fatal("every ignored failure should still be logged")
	}
}

// TestJailSetIgnoreExactAddresses: the host's own addresses join the
// ignore list as exact addresses (fail2ban's ignoreself), so 127.0.0.1 is
// never banned while 127.0.0.2, in the same /8, still is; SetIgnore swaps
// the list for what comes next.
func TestJailSetIgnoreExactAddresses(t *testing.T) {
	t.Parallel()
	j := newTestJail(t, testJailConfig(newFakeClock()))
	base, err := ParseList(FieldIgnore, []string{"192.0.2.0/24"})
	require.NoError(t, err)
	j.SetIgnore(base.WithAddrs([]netip.Addr{ip("127.0.0.1"), ip("::1"), ip("::ffff:198.51.100.7")}))
	for range 10 {
		j.Failed(ip("127.0.0.1"), badPassword)
		j.Failed(ip("198.51.100.7"), badPassword)
		j.Failed(ip("192.0.2.9"), badPassword)
	}
	require.False(t, j.Banned(ip("127.0.0.1")))
	require.False(t, j.Banned(ip("198.51.100.7")), "a mapped own address is matched unmapped")
	require.False(t, j.Banned(ip("192.0.2.9")), "the --ban-ignore list is kept")
	for range 5 {
		j.Failed(ip("127.0.0.2"), badPassword)
	}
	require.True(t, j.Banned(ip("127.0.0.2")), "another 127.x address stands in for a remote source")

	// A reload that no longer lists 198.51.100.7: it is counted again.
	j.SetIgnore(base.WithAddrs([]netip.Addr{ip("127.0.0.1")}))
	for range 5 {
		j.Failed(ip("198.51.100.7"), badPassword)
	}
	require.True(t, j.Banned(ip("198.51.100.7")))
	require.Equal(t, "127.0.0.1/32, 192.0.2.0/24", base.WithAddrs([]netip.Addr{ip("127.0.0.1"), ip("127.0.0.1")}).String())
}

func TestJailMappedAndPlainIPv4ShareKey(t *testing.T) {
	t.Parallel()
	j := newTestJail(t, testJailConfig(newFakeClock()))
	forms := []string{"192.0.2.77", "::ffff:192.0.2.77"}
	var banned bool
	for i := range DefaultBanMaxRetry {
		banned, _ = j.Failed(ip(forms[i%2]), badPassword)
	}
	if !banned || !j.Banned(ip("192.0.2.77")) || !j.Banned(ip("::ffff:192.0.2.77")) {
		t.Fatal("alternating mapped/plain forms must count and ban as one source")
	}
	if l := j.List(); len(l) != 1 || l[0].IP != "192.0.2.77" {
		t.Fatalf("List = %+v, want one ban on 192.0.2.77", l)
	}
}

func TestJailIPv6PrefixRotation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		prefix     int
		wantBanned bool
		wantKey    string
	}{
		{name: "default /64 aggregates", prefix: 0, wantBanned: true, wantKey: "2001:db8:1:2::/64"},
		{name: "/56 aggregates wider", prefix: 56, wantBanned: true, wantKey: "2001:db8:1::/56"},
		{name: "/128 disables aggregation", prefix: 128, wantBanned: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := testJailConfig(newFakeClock())
			cfg.IPv6Prefix = tc.prefix
			j := newTestJail(t, cfg)
			var banned bool
			for i := range DefaultBanMaxRetry { // a new address every time
				banned, _ = j.Failed(ip(fmt.Sprintf("2001:db8:1:2::%x", i+1)), badPassword)
			}
			if banned != tc.wantBanned {
				t.Fatalf("rotation banned=%v, want %v", banned, tc.wantBanned)
			}
			if !tc.wantBanned {
				return
			}
			if !j.Banned(ip("2001:db8:1:2:ffff::1")) {
				t.Fatal("an unused address inside the banned prefix is not banned")
			}
			if j.Banned(ip("2001:db8:9::1")) {
				t.Fatal("an address outside the banned prefix is banned")
			}
			if l := j.List(); len(l) != 1 || l[0].IP != tc.wantKey {
				t.Fatalf("List = %+v, want one ban on %s", l, tc.wantKey)
			}
		})
	}
}

func TestJailSucceededDoesNotReset(t *testing.T) {
	t.Parallel()
	j := newTestJail(t, testJailConfig(newFakeClock()))
	src := ip("192.0.2.50")
	var banned bool
	for range DefaultBanMaxRetry {
		// A valid login interleaved with the guesses, as the gateway
		// reports one: an admitted attempt that ends without a failure.
		a, err := j.BeginAuth(context.Background(), src)
		if err != nil {
			t.Fatal(err)
		}
		a.End()
		banned, _ = j.Failed(src, badPassword)
	}
	if !banned {
		t.Fatal("interleaved successes hid a brute force")
	}
}

func TestJailManualBanUnban(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	var hooked []string
	cfg := testJailConfig(clock)
	cfg.OnBan = func(a netip.Addr, until time.Time) { hooked = append(hooked, a.String()) }
	j := newTestJail(t, cfg)

	info, err := j.Ban("10.0.0.0/24", time.Hour)
	require.NoError(t, err)
	if info.IP != "10.0.0.0/24" || !info.Until.Equal(clock.Now().Add(time.Hour)) || info.Bans != 1 {
		t.Fatalf("Ban = %+v", info)
	}
	if !j.Banned(ip("10.0.0.7")) || !j.Banned(ip("::ffff:10.0.0.200")) || j.Banned(ip("10.0.1.1")) {
		t.Fatal("manual /24 ban does not cover exactly its addresses")
	}
	err = j.Unban("10.0.0.7")
	require.ErrorIs(t, err, ErrNotBanned)
	require.ErrorContains(t, err, "covered by the ban on 10.0.0.0/24")
	require.NoError(t, j.Unban("10.0.0.0/24"))
	if j.Banned(ip("10.0.0.7")) {
		t.Fatal("still banned after Unban")
	}
	require.ErrorIs(t, j.Unban("10.0.0.0/24"), ErrNotBanned)

	// d == 0: the escalated ban-time of the key's next ban (history kept).
	info, err = j.Ban("10.0.0.0/24", 0)
	require.NoError(t, err)
	if info.Bans != 2 || !info.Until.Equal(clock.Now().Add(2*DefaultBanTime)) {
		t.Fatalf("second manual ban = %+v, want bans=2 for 20m", info)
	}
	_, err = j.Ban("db.example.com", time.Hour)
	require.ErrorIs(t, err, ErrInvalidEntry)
	_, err = j.Ban("{{ GetPrivateIP }}", time.Hour)
	require.ErrorIs(t, err, ErrInvalidEntry)
	_, err = j.Ban("10.0.0.1", -time.Second)
	require.Error(t, err)
	if len(hooked) != 2 || hooked[0] != "10.0.0.0" {
		t.Fatalf("OnBan calls = %v", hooked)
	}
}

func TestBanInfoJSON(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	j := newTestJail(t, testJailConfig(clock))
	clock.Advance(123 * time.Millisecond) // rounded up to the second
	_, err := j.Ban("2001:db8::1", time.Hour)
	require.NoError(t, err)
	got, err := json.Marshal(j.List())
	require.NoError(t, err)
	want := `[{"ip":"2001:db8::1","until":"2026-08-01T11:00:01Z","failures":0,"bans":1}]`
	if string(got) != want {
		t.Fatalf("json = %s\nwant   %s", got, want)
	}
}

func TestJailLogsEvents(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.DebugLevel)
	cfg := testJailConfig(newFakeClock())
	cfg.Logger = zap.New(core)
	j := newTestJail(t, cfg)
	for range DefaultBanMaxRetry {
		j.Failed(ip("192.0.2.99"), Failure{User: "bob\nFAKE from 1.2.3.4", Database: "db", SQLState: "28000"})
	}
	fails := logs.FilterMessage("auth failure").All()
	if len(fails) != DefaultBanMaxRetry {
		t.Fatalf("%d auth failure lines, want %d", len(fails), DefaultBanMaxRetry)
	}
	last := fails[len(fails)-1].ContextMap()
	for k, v := range map[string]any{"source": "192.0.2.99", "user": "bob\nFAKE from 1.2.3.4", "database": "db", "sqlstate": "28000", "failures": int64(5)} {
		if last[k] != v {
			t.Fatalf("auth failure field %s = %#v, want %#v (all: %v)", k, last[k], v, last)
		}
	}
	bans := logs.FilterMessage("source banned").All()
	if len(bans) != 1 || bans[0].Level != zapcore.WarnLevel {
		t.Fatalf("source banned lines = %v", bans)
	}
	m := bans[0].ContextMap()
	for _, k := range []string{"source", "user", "database", "sqlstate", "failures", "until", "bans"} {
		if _, ok := m[k]; !ok {
			t.Fatalf("source banned line lacks %q: %v", k, m)
		}
	}
}

func TestCountsAsFailure(t *testing.T) {
	t.Parallel()
	for code, want := range map[string]bool{"28P01": true, "28000": true, "53300": false, "57P03": false, "08P01": false, "3D000": false, "": false, "28p01": false} {
		if CountsAsFailure(code) != want {
			t.Errorf("CountsAsFailure(%q) = %v, want %v", code, !want, want)
		}
	}
}

func TestJailClosed(t *testing.T) {
	t.Parallel()
	j, err := NewJail(testJailConfig(newFakeClock()))
	require.NoError(t, err)
	require.NoError(t, j.Close())
	require.NoError(t, j.Close())
	if banned, _ := j.Failed(ip("192.0.2.1"), badPassword); banned {
		t.Fatal("closed jail banned")
	}
	_, err = j.Ban("192.0.2.1", time.Hour)
	if !errors.Is(err, ErrJailClosed) {
		t.Fatalf("Ban after Close = %v", err)
	}
}

func TestJailIgnoredAddressInsideBannedPrefix(t *testing.T) {
	t.Parallel()
	cfg := testJailConfig(newFakeClock())
	ignore, err := ParseList(FieldIgnore, []string{"2001:db8:1:2::5"})
	require.NoError(t, err)
	cfg.Ignore = ignore
	j := newTestJail(t, cfg)
	for i := range DefaultBanMaxRetry {
		j.Failed(ip(fmt.Sprintf("2001:db8:1:2::%x", 0x100+i)), badPassword)
	}
	if !j.Banned(ip("2001:db8:1:2::100")) {
		t.Fatal("the rotating /64 was not banned")
	}
	if j.Banned(ip("2001:db8:1:2::5")) {
		t.Fatal("an ignored address was locked out by its neighbours' automatic /64 ban")
	}
	_, err = j.Ban("2001:db8:1:2::/64", time.Hour)
	require.NoError(t, err)
	if !j.Banned(ip("2001:db8:1:2::5")) {
		t.Fatal("a manual ban must apply to ignored addresses too")
	}
}
