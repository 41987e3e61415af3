package rulehits

import (
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/internal/fakeclock"
)

func openDB(t *testing.T, path string) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	require.NoError(t, err)
	return db
}

func allowlist(t *testing.T, entries ...string) *acl.Allowlist {
	t.Helper()
	a, err := acl.ParseAllowlist(entries)
	require.NoError(t, err)
	return a
}

func allowRule(p string) acl.Rule {
	return acl.Rule{Source: SourceAllowlist, Prefix: netip.MustParsePrefix(p)}
}

// stored reads the records in the state file.
func stored(t *testing.T, db *bolt.DB) map[string]string {
	t.Helper()
	out := map[string]string{}
	require.NoError(t, db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error { out[string(k)] = string(v); return nil })
	}))
	return out
}

// TestCountsSurviveARestart: hits are counted in memory, written only by
// Flush (in one batch, not per connection), and read back by the next
// Counter on the same file, with the entry's start kept.
func TestCountsSurviveARestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db := openDB(t, path)
	clock := fakeclock.New(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	c, err := New(Config{DB: db, Now: clock.Now})
	require.NoError(t, err)
	r := c.Route("app")
	r.SetAllowlist(allowlist(t, "10.0.0.0/8", "192.0.2.7"))
	for range 1000 {
		r.Hit(allowRule("10.0.0.0/8"))
	}
	require.Empty(t, stored(t, db), "nothing is written before a flush")
	require.NoError(t, c.Flush())
	require.Len(t, stored(t, db), 2, "both entries, the unused one with its start")
	first := stored(t, db)
	require.NoError(t, c.Flush())
	require.Equal(t, first, stored(t, db), "a flush with nothing new writes nothing")

	clock.Advance(24 * time.Hour)
	r.Hit(allowRule("10.0.0.0/8"))
	require.NoError(t, c.Flush())
	require.NoError(t, db.Close())

	db = openDB(t, path)
	defer db.Close()
	clock.Advance(90 * 24 * time.Hour)
	c2, err := New(Config{DB: db, Now: clock.Now})
	require.NoError(t, err)
	c2.Route("app").SetAllowlist(allowlist(t, "10.0.0.0/8", "192.0.2.7"))
	got := c2.List()
	require.Len(t, got, 2)
	require.Equal(t, "10.0.0.0/8", got[0].Entry)
	require.EqualValues(t, 1001, got[0].Hits)
	require.Equal(t, time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC), *got[0].LastHit)
	require.Equal(t, "192.0.2.7/32", got[1].Entry)
	require.Zero(t, got[1].Hits)
	require.Nil(t, got[1].LastHit)
	require.Equal(t, time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC), got[1].Since, "never used since March, across the restart")
	require.True(t, got[1].Stale(clock.Now(), 30*24*time.Hour))
	require.True(t, got[0].Stale(clock.Now(), 30*24*time.Hour))
	require.False(t, got[0].Stale(clock.Now(), 100*24*time.Hour))
}

// TestReloadKeepsCountsOfKeptEntries: a new allowlist keeps the counts of
// entries it still has, starts new ones at zero (counting from now, so
// they are not stale), and drops the records of removed ones.
func TestReloadKeepsCountsOfKeptEntries(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "state.db"))
	defer db.Close()
	clock := fakeclock.New(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))
	c, err := New(Config{DB: db, Now: clock.Now})
	require.NoError(t, err)
	r := c.Route("app")
	r.SetAllowlist(allowlist(t, "10.0.0.0/8", "192.0.2.0/24"))
	r.Hit(allowRule("10.0.0.0/8"))
	r.Hit(allowRule("192.0.2.0/24"))
	require.NoError(t, c.Flush())

	clock.Advance(60 * 24 * time.Hour)
	r.SetAllowlist(allowlist(t, "10.0.0.0/8", "198.51.100.0/24"))
	r.Hit(allowRule("192.0.2.0/24")) // a connection admitted by the old list: not counted anywhere
	require.NoError(t, c.Flush())
	got := c.List()
	require.Len(t, got, 2)
	require.Equal(t, "10.0.0.0/8", got[0].Entry)
	require.EqualValues(t, 1, got[0].Hits)
	require.Equal(t, "198.51.100.0/24", got[1].Entry)
	require.Equal(t, clock.Now(), got[1].Since)
	require.False(t, got[1].Stale(clock.Now(), 30*24*time.Hour))
	keys := stored(t, db)
	require.Contains(t, keys, "app\x0010.0.0.0/8")
	require.Contains(t, keys, "app\x00198.51.100.0/24")
	require.NotContains(t, keys, "app\x00192.0.2.0/24")
}

// TestDynamicRulesAreBounded: rules that come and go (grants) get cells of
// their own, at most MaxDynamic; the least recently hit is forgotten in
// memory and written, and comes back with its count when hit again.
func TestDynamicRulesAreBounded(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "state.db"))
	defer db.Close()
	clock := fakeclock.New(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))
	c, err := New(Config{DB: db, Now: clock.Now, MaxDynamic: 2})
	require.NoError(t, err)
	r := c.Route("app")
	grant := func(id string) acl.Rule {
		return acl.Rule{Source: "grant", Prefix: netip.MustParsePrefix("203.0.113.9/32"), ID: id}
	}
	r.Hit(grant("a"))
	r.Hit(grant("a"))
	clock.Advance(time.Minute)
	r.Hit(grant("b"))
	clock.Advance(time.Minute)
	r.Hit(grant("c")) // evicts a, the least recently hit
	var entries []string
	for _, h := range c.List() {
		entries = append(entries, h.Entry)
	}
	require.Equal(t, []string{"grant:b", "grant:c"}, entries)
	require.NoError(t, c.Flush())
	require.Contains(t, stored(t, db), "app\x00grant:a")

	clock.Advance(time.Minute)
	r.Hit(grant("a")) // evicts b; a comes back with its two earlier hits
	for _, h := range c.List() {
		if h.Entry == "grant:a" {
			require.EqualValues(t, 3, h.Hits)
		}
	}
	require.Len(t, c.List(), 2)
}

// TestHitsFromManyGoroutines: the accept loops of several listeners count
// at once without losing hits (run with -race).
func TestHitsFromManyGoroutines(t *testing.T) {
	c, err := New(Config{})
	require.NoError(t, err)
	r := c.Route("app")
	r.SetAllowlist(allowlist(t, "10.0.0.0/8"))
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				r.Hit(allowRule("10.0.0.0/8"))
				r.Hit(acl.Rule{Source: "grant", ID: "x"})
			}
		}()
	}
	for range 10 {
		r.SetAllowlist(allowlist(t, "10.0.0.0/8"))
		_ = c.List()
	}
	wg.Wait()
	for _, h := range c.List() {
		require.EqualValues(t, 8000, h.Hits, h.Entry)
	}
}
