package gateway

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/fielderr"
)

// TestLiftsStaleAndBounded: an item made before this gateway lifted its
// key is stale (another gateway pushed it while this one's lift was on its
// way); one made after is not. Pending lifts replay until one fails, and
// both memories are bounded.
func TestLiftsStaleAndBounded(t *testing.T) {
	now := time.Date(2026, 8, 1, 10, 0, 0, 0, time.UTC)
	l := newLifts[netip.Prefix, int]()
	l.now = func() time.Time { return now }
	key := netip.MustParsePrefix("192.0.2.7/32")
	require.False(t, l.stale(key, now.Add(-time.Hour)), "never lifted here")
	l.lifted(key)
	require.True(t, l.stale(key, now.Add(-time.Minute)))
	require.True(t, l.stale(key, now))
	require.False(t, l.stale(key, now.Add(time.Millisecond)), "a later item stands")

	other := netip.MustParsePrefix("192.0.2.8/32")
	require.True(t, l.pend(key, 1))
	require.True(t, l.pend(other, 2))
	l.renewed(other) // made again: nothing to replay
	var published []int
	l.replay(func(_ netip.Prefix, v int) error { published = append(published, v); return errors.New("down") })
	require.Equal(t, []int{1}, published)
	l.replay(func(_ netip.Prefix, v int) error { published = append(published, v); return nil })
	require.Equal(t, []int{1, 1}, published, "a failed replay stays pending")
	l.replay(func(netip.Prefix, int) error { t.Fatal("replayed twice"); return nil })

	addr := netip.MustParseAddr("10.0.0.0")
	for range maxLifts + 10 {
		addr = addr.Next()
		l.lifted(netip.PrefixFrom(addr, 32))
		l.pend(netip.PrefixFrom(addr, 32), 0)
	}
	require.LessOrEqual(t, len(l.at), maxLifts)
	require.LessOrEqual(t, len(l.pending), maxLifts)
}

// TestLibraryConfigError: a library's configuration errors name the
// gateway's fields, one per line.
func TestLibraryConfigError(t *testing.T) {
	sentinel := errors.New("invalid thing configuration")
	err := errors.Join(
		errors.New("invalid thing configuration: URL scheme \"http\": use redis://"),
		errors.New("invalid thing configuration: Prefix \"a{b}\": use letters"),
		errors.New("invalid thing configuration: something else"),
	)
	got := libraryConfigError(err, sentinel, map[string]fielderr.Field{"URL": FieldRedis, "Prefix": FieldRedisPrefix})
	names := fielderr.Names{FieldRedis: "--redis", FieldRedisPrefix: "--redis-prefix"}
	require.Equal(t, "--redis scheme \"http\": use redis://\n--redis-prefix \"a{b}\": use letters\nsomething else",
		fielderr.Render(got, names))
}
