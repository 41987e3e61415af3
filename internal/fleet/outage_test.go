package fleet

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/redistest"
)

// TestFailFastWhileDown: after one failed call the Store is down, warns
// once, and fails further calls with ErrUnavailable without trying Redis
// until RetryInterval has passed; then one call probes and finds it back.
func TestFailFastWhileDown(t *testing.T) {
	srv := redistest.Start(t)
	c, logs := newStore(t, srv, "C", func(cfg *Config) { cfg.RetryInterval = time.Hour })
	ctx := ctxT(t)
	key := pfx("192.0.2.1/32")
	_, err := c.RecordFailure(ctx, key, time.Minute)
	require.NoError(t, err)
	require.True(t, c.Up())

	srv.Kill()
	_, err = c.RecordFailure(ctx, key, time.Minute)
	require.Error(t, err)
	require.NotErrorIs(t, err, ErrUnavailable, "the first call tries Redis")
	require.False(t, c.Up())
	for range 5 {
		_, err = c.Ban(ctx, BanRequest{Key: key, Duration: time.Minute})
		require.ErrorIs(t, err, ErrUnavailable)
		_, err = c.RecordFailure(ctx, key, time.Minute)
		require.ErrorIs(t, err, ErrUnavailable)
	}
	require.Equal(t, 1, logs.FilterMessageSnippet("redis unavailable").Len(), "one warning per outage")

	srv.Restart(t)
	// Still failing fast: the retry interval has not passed.
	_, err = c.RecordFailure(ctx, key, time.Minute)
	require.ErrorIs(t, err, ErrUnavailable)
	// Let the probe through, as an hour later would.
	c.health.nextProbe.Store(0)
	_, err = c.RecordFailure(ctx, key, time.Minute)
	require.NoError(t, err)
	require.True(t, c.Up())
	require.Equal(t, 1, logs.FilterMessageSnippet("redis available again").Len())
}

// localState is a gateway's own ban list, as the jail would hold it.
type localState struct {
	mu   sync.Mutex
	bans []Ban
}

func (l *localState) add(b Ban) {
	l.mu.Lock()
	l.bans = append(l.bans, b)
	l.mu.Unlock()
}

func (l *localState) get() ([]Ban, []Record) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Ban(nil), l.bans...), nil
}

// TestOutageAndRecovery: two gateways on one Redis; Redis dies, A bans a
// source locally meanwhile; Redis comes back empty: both watches
// reconnect and resync, A pushes its ban, B receives it.
func TestOutageAndRecovery(t *testing.T) {
	srv := redistest.Start(t)
	a, logsA := newStore(t, srv, "A")
	b, _ := newStore(t, srv, "B")
	var localA localState
	recA, recB := newRecorder(), newRecorder()
	watch(t, a, recA, localA.get)
	watch(t, b, recB, nil)
	ctx := ctxT(t)
	before := recB.resyncCount()

	srv.Kill()
	require.Eventually(t, func() bool { return !a.Up() && !b.Up() }, eventually, 20*time.Millisecond,
		"both watches notice the outage")
	_, err := a.RecordFailure(ctx, pfx("192.0.2.77/32"), time.Minute)
	require.Error(t, err)

	// The jail keeps working locally: it bans and keeps the ban to push.
	duringOutage := Ban{Key: pfx("192.0.2.77/32"), Until: time.Now().Add(time.Hour), Failures: 5, Bans: 1, At: time.Now()}
	localA.add(duringOutage)

	srv.Restart(t)
	recB.waitFor(t, "B to receive A's outage ban", func(ev []Event, rs []resyncCall) bool {
		if hasEvent(ev, EventBan, func(e Event) bool { return e.Key == duringOutage.Key }) {
			return true
		}
		for _, r := range rs {
			for _, bn := range r.snap.Bans {
				if bn.Key == duringOutage.Key {
					return true
				}
			}
		}
		return false
	})
	require.Eventually(t, func() bool { return a.Up() && b.Up() }, eventually, 20*time.Millisecond)
	require.Greater(t, recB.resyncCount(), before, "B resynchronised after the outage")
	require.Equal(t, 1, logsA.FilterMessageSnippet("redis unavailable").Len(), "one warning per outage")
	require.GreaterOrEqual(t, logsA.FilterMessageSnippet("redis available again").Len(), 1)

	// Sharing works again both ways.
	_, err = b.Ban(ctx, BanRequest{Key: pfx("192.0.2.78/32"), Duration: time.Minute})
	require.NoError(t, err)
	recA.waitFor(t, "A to see B's ban after recovery", func(ev []Event, _ []resyncCall) bool {
		return hasEvent(ev, EventBan, func(e Event) bool { return e.Key == pfx("192.0.2.78/32") })
	})
}

// TestResyncAfterDataLoss: Redis loses its data without dropping the
// connections (FLUSHALL here; a restart between two reads, or a failover
// to an empty replica, look the same): the epoch check notices, and the
// watches push their local state again.
func TestResyncAfterDataLoss(t *testing.T) {
	srv := redistest.Start(t)
	a, _ := newStore(t, srv, "A")
	b, _ := newStore(t, srv, "B")
	var localA localState
	localA.add(Ban{Key: pfx("192.0.2.90/32"), Until: time.Now().Add(time.Hour), Bans: 1, At: time.Now()})
	recA, recB := newRecorder(), newRecorder()
	watch(t, a, recA, localA.get)
	watch(t, b, recB, nil)
	ctx := ctxT(t)
	snap, err := b.Snapshot(ctx)
	require.NoError(t, err)
	require.Len(t, snap.Bans, 1, "A pushed its local ban at start")

	require.NoError(t, rawClient(t, srv).FlushAll(ctx).Err())
	resyncsA := recA.resyncCount()
	recA.waitFor(t, "A to resync", func(_ []Event, rs []resyncCall) bool { return len(rs) > resyncsA })
	require.Eventually(t, func() bool {
		snap, err := b.Snapshot(ctx)
		return err == nil && len(snap.Bans) == 1
	}, eventually, 20*time.Millisecond, "the fleet has A's ban again")
}

// TestResyncAfterTrimmedEvents: a watch that falls further behind than the
// stream keeps resynchronises instead of silently missing events.
func TestResyncAfterTrimmedEvents(t *testing.T) {
	srv := redistest.Start(t)
	a, _ := newStore(t, srv, "A", func(c *Config) { c.StreamMaxLen = 100 })
	b, _ := newStore(t, srv, "B")
	gate := make(chan struct{})
	var once sync.Once
	rec := newRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = b.Watch(ctx, WatchConfig{
			OnEvent:  func(e Event) { <-gate; rec.onEvent(e) },
			OnResync: rec.onResync,
			Block:    100 * time.Millisecond,
		})
	}()
	t.Cleanup(func() { once.Do(func() { close(gate) }); cancel(); <-done })
	rec.waitFor(t, "the first resync", func(_ []Event, rs []resyncCall) bool { return len(rs) == 1 })

	cctx := ctxT(t)
	// B blocks on the first event while A publishes far more than the
	// stream keeps.
	for i := range 1000 {
		_, err := a.Ban(cctx, BanRequest{Key: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 32), Duration: time.Hour})
		require.NoError(t, err)
	}
	once.Do(func() { close(gate) })
	rec.waitFor(t, "a resync after the trimmed events", func(_ []Event, rs []resyncCall) bool {
		return len(rs) >= 2 && len(rs[len(rs)-1].snap.Bans) == 1000
	})
}

// TestWatchEndsWithContext: Watch returns nil when its context ends, also
// during an outage.
func TestWatchEndsWithContext(t *testing.T) {
	srv := redistest.Start(t)
	a, _ := newStore(t, srv, "A")
	srv.Kill()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Watch(ctx, WatchConfig{}) }()
	time.Sleep(300 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(eventually):
		t.Fatal("Watch did not return after its context ended")
	}
	require.False(t, a.Up())
	_, err := a.Snapshot(context.Background())
	require.Error(t, err)
}

// TestForeignEventsSkipped: entries in the stream that this package did
// not write (another tool, a corrupted value) are skipped, and the watch
// keeps delivering the valid ones after them.
func TestForeignEventsSkipped(t *testing.T) {
	srv := redistest.Start(t)
	a, _ := newStore(t, srv, "A")
	b, _ := newStore(t, srv, "B")
	rec := newRecorder()
	watch(t, b, rec, nil)
	ctx := ctxT(t)
	raw := rawClient(t, srv)
	for _, vals := range []map[string]any{
		{"t": "ban", "k": "not-a-prefix", "v": "{}", "o": "X"},
		{"t": "ban", "k": "10.0.0.1/8", "v": "{}", "o": "X"}, // not masked
		{"t": "ban", "k": "192.0.2.1/32", "v": "{not json", "o": "X"},
		{"t": "put", "k": "no-slash", "v": "{}", "o": "X"},
		{"t": "revoke", "k": "BAD KIND/x", "o": "X"},
		{"t": "explode", "k": "x", "o": "X"},
		{"unrelated": "field"},
	} {
		require.NoError(t, raw.XAdd(ctx, &redis.XAddArgs{Stream: "{t}:events", Values: vals}).Err())
	}
	_, err := a.Ban(ctx, BanRequest{Key: pfx("192.0.2.2/32"), Duration: time.Minute})
	require.NoError(t, err)
	rec.waitFor(t, "the valid ban after the foreign entries", func(ev []Event, _ []resyncCall) bool {
		return hasEvent(ev, EventBan, func(e Event) bool { return e.Key == pfx("192.0.2.2/32") })
	})
	rec.mu.Lock()
	defer rec.mu.Unlock()
	require.Len(t, rec.events, 1, "only the valid event is delivered")
	require.True(t, b.Up())
}
