package fleet

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/redistest"
)

// TestFailuresAddUpAcrossGateways: 3 failures on A and 2 on B are 5 for
// the fleet, counted per source.
func TestFailuresAddUpAcrossGateways(t *testing.T) {
	srv := redistest.Start(t)
	a, _ := newStore(t, srv, "A")
	b, _ := newStore(t, srv, "B")
	ctx := ctxT(t)
	src, other := pfx("192.0.2.7/32"), pfx("2001:db8:1:2::/64")
	for i := 1; i <= 3; i++ {
		f, err := a.RecordFailure(ctx, src, time.Minute)
		require.NoError(t, err)
		require.Equal(t, i, f.Count)
	}
	f, err := b.RecordFailure(ctx, other, time.Minute)
	require.NoError(t, err)
	require.Equal(t, 1, f.Count, "another source has its own window")
	f, err = b.RecordFailure(ctx, src, time.Minute)
	require.NoError(t, err)
	require.Equal(t, 4, f.Count)
	f, err = b.RecordFailure(ctx, src, time.Minute)
	require.NoError(t, err)
	require.Equal(t, Failures{Count: 5, Bans: 0}, f)
	require.True(t, a.Up())
	require.True(t, b.Up())

	// The window expires with the failures: nothing is left behind.
	raw := rawClient(t, srv)
	ttl, err := raw.PTTL(ctx, "{t}:fail:192.0.2.7/32").Result()
	require.NoError(t, err)
	require.True(t, ttl > 0 && ttl <= time.Minute, "PTTL %v", ttl)
}

// TestFailureCountsReadWithoutRecording: FailureCounts sees every
// gateway's failures within the window and records none itself.
func TestFailureCountsReadWithoutRecording(t *testing.T) {
	srv := redistest.Start(t)
	a, _ := newStore(t, srv, "A")
	b, _ := newStore(t, srv, "B")
	ctx := ctxT(t)
	src, agg, quiet := pfx("2001:db8:9::7/128"), pfx("2001:db8:9::/64"), pfx("192.0.2.99/32")
	for range 2 {
		_, err := a.RecordFailure(ctx, src, time.Minute)
		require.NoError(t, err)
	}
	_, err := a.RecordFailure(ctx, agg, time.Minute)
	require.NoError(t, err)
	for range 2 {
		n, err := b.FailureCounts(ctx, time.Minute, src, agg, quiet, netip.Prefix{})
		require.NoError(t, err)
		require.Equal(t, []int{2, 1, 0, 0}, n)
	}
	f, err := b.RecordFailure(ctx, src, time.Minute)
	require.NoError(t, err)
	require.Equal(t, 3, f.Count, "reading recorded nothing")

	_, err = b.FailureCounts(ctx, time.Minute, pfx("192.0.2.0/24").Masked(), pfx("::ffff:192.0.2.1/128"))
	require.ErrorIs(t, err, ErrInvalid, "a mapped prefix is refused")
	_, err = b.FailureCounts(ctx, 0, src)
	require.ErrorIs(t, err, ErrInvalid)
}

// TestFailureWindowSlides: failures older than the window stop counting.
func TestFailureWindowSlides(t *testing.T) {
	srv := redistest.Start(t)
	a, _ := newStore(t, srv, "A")
	ctx := ctxT(t)
	src := pfx("192.0.2.8/32")
	const window = 300 * time.Millisecond
	for range 3 {
		_, err := a.RecordFailure(ctx, src, window)
		require.NoError(t, err)
	}
	time.Sleep(2 * window)
	f, err := a.RecordFailure(ctx, src, window)
	require.NoError(t, err)
	require.Equal(t, 1, f.Count)
}

// TestFailuresCapped: a flood from one source cannot grow its set past
// MaxFailures; the count saturates there.
func TestFailuresCapped(t *testing.T) {
	srv := redistest.Start(t)
	a, _ := newStore(t, srv, "A", func(c *Config) { c.MaxFailures = 5 })
	ctx := ctxT(t)
	var f Failures
	var err error
	for range 50 {
		f, err = a.RecordFailure(ctx, pfx("192.0.2.9/32"), time.Hour)
		require.NoError(t, err)
	}
	require.Equal(t, 5, f.Count)
	n, err := rawClient(t, srv).ZCard(ctx, "{t}:fail:192.0.2.9/32").Result()
	require.NoError(t, err)
	require.EqualValues(t, 5, n)
}

// TestKeysShareOneHashTag: every key the package writes is under {prefix},
// so the scripts stay in one Cluster slot; two prefixes do not mix.
func TestKeysShareOneHashTag(t *testing.T) {
	srv := redistest.Start(t)
	a, _ := newStore(t, srv, "A")
	other, _ := newStore(t, srv, "O", func(c *Config) { c.Prefix = "fleet2" })
	ctx := ctxT(t)
	_, err := a.RecordFailure(ctx, pfx("192.0.2.1/32"), time.Minute)
	require.NoError(t, err)
	_, err = a.Ban(ctx, BanRequest{Key: pfx("192.0.2.1/32"), Duration: time.Minute, Failures: 5})
	require.NoError(t, err)
	_, err = a.Unban(ctx, pfx("192.0.2.1/32"))
	require.NoError(t, err)
	_, err = a.PutRecord(ctx, Record{Kind: "grant", ID: "g1", Until: time.Now().Add(time.Minute), Data: json.RawMessage(`{}`)})
	require.NoError(t, err)
	_, err = a.RevokeRecord(ctx, RecordRef{"grant", "g1"})
	require.NoError(t, err)
	_, err = a.Ban(ctx, BanRequest{Key: pfx("192.0.2.2/32"), Duration: time.Minute})
	require.NoError(t, err)
	_, err = other.Ban(ctx, BanRequest{Key: pfx("192.0.2.3/32"), Duration: time.Minute})
	require.NoError(t, err)
	rec := newRecorder()
	watch(t, a, rec, nil) // creates the epoch key

	keys, err := rawClient(t, srv).Keys(ctx, "*").Result()
	require.NoError(t, err)
	require.NotEmpty(t, keys)
	for _, k := range keys {
		if !strings.HasPrefix(k, "{t}:") && !strings.HasPrefix(k, "{fleet2}:") {
			t.Errorf("key %q is outside the hash tags", k)
		}
	}
	snap, err := a.Snapshot(ctx)
	require.NoError(t, err)
	require.Len(t, snap.Bans, 1, "the other fleet's ban is not ours")
	require.Equal(t, pfx("192.0.2.2/32"), snap.Bans[0].Key)
}

// TestBanAndUnbanPropagate: a ban published by A reaches B's watch, and
// B's unban reaches A's; nobody receives its own events.
func TestBanAndUnbanPropagate(t *testing.T) {
	srv := redistest.Start(t)
	a, _ := newStore(t, srv, "A")
	b, _ := newStore(t, srv, "B")
	recA, recB := newRecorder(), newRecorder()
	watch(t, a, recA, nil)
	watch(t, b, recB, nil)
	ctx := ctxT(t)
	key := pfx("198.51.100.23/32")

	start := time.Now()
	got, err := a.Ban(ctx, BanRequest{Key: key, Duration: 10 * time.Minute, Failures: 5})
	require.NoError(t, err)
	require.Equal(t, 1, got.Bans)
	require.Equal(t, "A", got.Origin)
	recB.waitFor(t, "B to see A's ban", func(ev []Event, _ []resyncCall) bool {
		return hasEvent(ev, EventBan, func(e Event) bool { return e.Key == key })
	})
	// Logged, not asserted: the tests assert outcomes, not latencies. A
	// watch is already blocked in XREAD, which returns on the XADD.
	t.Logf("ban seen by B after %v", time.Since(start))
	recB.mu.Lock()
	ev := recB.events[0]
	recB.mu.Unlock()
	require.Equal(t, "A", ev.Origin)
	require.Equal(t, got.Until, ev.Ban.Until)
	require.Equal(t, 5, ev.Ban.Failures)
	require.False(t, ev.Ban.Manual)
	require.WithinDuration(t, time.Now().Add(10*time.Minute), ev.Ban.Until, time.Minute)

	had, err := b.Unban(ctx, key)
	require.NoError(t, err)
	require.True(t, had)
	recA.waitFor(t, "A to see B's unban", func(ev []Event, _ []resyncCall) bool {
		return hasEvent(ev, EventUnban, func(e Event) bool { return e.Key == key && e.Origin == "B" })
	})
	recA.mu.Lock()
	for _, e := range recA.events {
		require.NotEqual(t, "A", e.Origin, "A received its own event")
	}
	recA.mu.Unlock()
	snap, err := a.Snapshot(ctx)
	require.NoError(t, err)
	require.Empty(t, snap.Bans)
	// An unban of a key Redis does not hold still goes out (a gateway may
	// hold a ban it made during an outage).
	had, err = b.Unban(ctx, pfx("198.51.100.99/32"))
	require.NoError(t, err)
	require.False(t, had)
	recA.waitFor(t, "A to see the second unban", func(ev []Event, _ []resyncCall) bool {
		return hasEvent(ev, EventUnban, func(e Event) bool { return e.Key == pfx("198.51.100.99/32") })
	})
}

// TestBanHistoryIsFleetWide: bans by A and B count in one history, which
// RecordFailure and BanHistory report for escalation, and which outlives
// the bans but not HistoryTTL.
func TestBanHistoryIsFleetWide(t *testing.T) {
	srv := redistest.Start(t)
	a, _ := newStore(t, srv, "A", func(c *Config) { c.HistoryTTL = time.Hour })
	b, _ := newStore(t, srv, "B", func(c *Config) { c.HistoryTTL = time.Hour })
	ctx := ctxT(t)
	key := pfx("203.0.113.5/32")
	got, err := a.Ban(ctx, BanRequest{Key: key, Duration: time.Minute, Failures: 5})
	require.NoError(t, err)
	require.Equal(t, 1, got.Bans)
	_, err = b.Unban(ctx, key)
	require.NoError(t, err)
	got, err = b.Ban(ctx, BanRequest{Key: key, Duration: time.Minute, Failures: 5})
	require.NoError(t, err)
	require.Equal(t, 2, got.Bans)
	n, err := a.BanHistory(ctx, key)
	require.NoError(t, err)
	require.Equal(t, 2, n)
	f, err := a.RecordFailure(ctx, key, time.Minute)
	require.NoError(t, err)
	require.Equal(t, Failures{Count: 1, Bans: 2}, f, "the ban reset the window; the history stays")
	n, err = a.BanHistory(ctx, pfx("203.0.113.6/32"))
	require.NoError(t, err)
	require.Zero(t, n)
	ttl, err := rawClient(t, srv).PTTL(ctx, "{t}:hist:203.0.113.5/32").Result()
	require.NoError(t, err)
	require.True(t, ttl > 59*time.Minute && ttl <= time.Hour, "PTTL %v", ttl)
}

// TestBanMerging mirrors the jail: an automatic ban never shortens the
// ban in force nor turns a manual one automatic; a manual ban replaces.
func TestBanMerging(t *testing.T) {
	srv := redistest.Start(t)
	a, _ := newStore(t, srv, "A")
	ctx := ctxT(t)
	key := pfx("2001:db8:7::/64")
	manual, err := a.Ban(ctx, BanRequest{Key: key, Duration: time.Hour, Manual: true})
	require.NoError(t, err)
	require.True(t, manual.Manual)
	auto, err := a.Ban(ctx, BanRequest{Key: key, Duration: time.Minute, Failures: 5})
	require.NoError(t, err)
	require.Equal(t, manual.Until, auto.Until)
	require.True(t, auto.Manual)
	require.Equal(t, 2, auto.Bans)
	short, err := a.Ban(ctx, BanRequest{Key: key, Duration: time.Minute, Manual: true})
	require.NoError(t, err)
	require.True(t, short.Until.Before(manual.Until), "a manual ban replaces")
	longer, err := a.Ban(ctx, BanRequest{Key: key, Duration: 2 * time.Hour, Failures: 7})
	require.NoError(t, err)
	require.True(t, longer.Until.After(manual.Until))
	require.True(t, longer.Manual, "an automatic ban keeps the manual flag")
}

// TestBanClearsFailureWindows: a ban resets the windows it names.
func TestBanClearsFailureWindows(t *testing.T) {
	srv := redistest.Start(t)
	a, _ := newStore(t, srv, "A")
	ctx := ctxT(t)
	host, agg := pfx("2001:db8:1:2::7/128"), pfx("2001:db8:1:2::/64")
	for range 3 {
		_, err := a.RecordFailure(ctx, host, time.Minute)
		require.NoError(t, err)
		_, err = a.RecordFailure(ctx, agg, time.Minute)
		require.NoError(t, err)
	}
	_, err := a.Ban(ctx, BanRequest{Key: agg, Duration: time.Minute, Failures: 3, Clear: []netip.Prefix{host}})
	require.NoError(t, err)
	for _, k := range []netip.Prefix{host, agg} {
		f, err := a.RecordFailure(ctx, k, time.Minute)
		require.NoError(t, err)
		require.Equal(t, 1, f.Count, k.String())
	}
}

// TestBansExpire: an expired ban leaves the snapshot, and its keys leave
// Redis.
func TestBansExpire(t *testing.T) {
	srv := redistest.Start(t)
	a, _ := newStore(t, srv, "A")
	ctx := ctxT(t)
	_, err := a.Ban(ctx, BanRequest{Key: pfx("192.0.2.50/32"), Duration: 200 * time.Millisecond})
	require.NoError(t, err)
	snap, err := a.Snapshot(ctx)
	require.NoError(t, err)
	require.Len(t, snap.Bans, 1)
	time.Sleep(400 * time.Millisecond)
	snap, err = a.Snapshot(ctx)
	require.NoError(t, err)
	require.Empty(t, snap.Bans)
	raw := rawClient(t, srv)
	require.Eventually(t, func() bool {
		n, err := raw.Exists(ctx, "{t}:ban", "{t}:ban:exp").Result()
		return err == nil && n == 0
	}, eventually, 50*time.Millisecond, "the ban hash expires with its last ban")
}

// TestInvalidArguments: everything the package refuses, it refuses with
// ErrInvalid and without touching Redis.
func TestInvalidArguments(t *testing.T) {
	srv := redistest.Start(t)
	a, _ := newStore(t, srv, "A", func(c *Config) { c.MaxRecordBytes = 64 })
	ctx := ctxT(t)
	for name, err := range map[string]error{
		"unmasked": func() error {
			_, err := a.RecordFailure(ctx, netip.PrefixFrom(netip.MustParseAddr("10.1.2.3"), 8), time.Minute)
			return err
		}(),
		"mapped": func() error {
			_, err := a.Ban(ctx, BanRequest{Key: pfx("::ffff:10.1.2.3/128"), Duration: time.Minute})
			return err
		}(),
		"invalid":     func() error { _, err := a.Unban(ctx, netip.Prefix{}); return err }(),
		"no window":   func() error { _, err := a.RecordFailure(ctx, pfx("10.1.2.3/32"), 0); return err }(),
		"no duration": func() error { _, err := a.Ban(ctx, BanRequest{Key: pfx("10.1.2.3/32")}); return err }(),
		"kind": func() error {
			_, err := a.PutRecord(ctx, Record{Kind: "Grant!", ID: "x", Until: time.Now().Add(time.Minute), Data: json.RawMessage(`{}`)})
			return err
		}(),
		"id": func() error {
			_, err := a.PutRecord(ctx, Record{Kind: "grant", ID: "", Until: time.Now().Add(time.Minute), Data: json.RawMessage(`{}`)})
			return err
		}(),
		"json": func() error {
			_, err := a.PutRecord(ctx, Record{Kind: "grant", ID: "x", Until: time.Now().Add(time.Minute), Data: json.RawMessage(`{`)})
			return err
		}(),
		"size": func() error {
			_, err := a.PutRecord(ctx, Record{Kind: "grant", ID: "x", Until: time.Now().Add(time.Minute), Data: json.RawMessage(`"` + strings.Repeat("x", 100) + `"`)})
			return err
		}(),
		"expired": func() error {
			_, err := a.PutRecord(ctx, Record{Kind: "grant", ID: "x", Until: time.Now().Add(-time.Minute), Data: json.RawMessage(`{}`)})
			return err
		}(),
	} {
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", name, err)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "URL: a redis:// or rediss:// URL is required"},
		{Config{URL: "http://x"}, `URL scheme "http"`},
		{Config{URL: "redis://u:secret@h:99999999x"}, "URL is not a valid URL"},
		{Config{URL: "redis://h:1/x"}, "URL: redis: invalid database number"},
		{Config{URL: "redis://h:1", Prefix: "a{b}"}, `Prefix "a{b}"`},
		{Config{URL: "redis://h:1", Timeout: -1}, "Timeout must be positive"},
		{Config{URL: "redis://h:1", StreamMaxLen: 5}, "StreamMaxLen must be at least 100"},
	} {
		_, err := New(tc.cfg)
		require.ErrorIs(t, err, ErrConfig)
		require.ErrorContains(t, err, tc.want)
		require.NotContains(t, err.Error(), "secret", "the password never appears in errors")
	}
}
