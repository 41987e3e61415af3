package gateway

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/internal/fielderr"
	"github.com/pgwarden/pgwarden/internal/fleet"
)

// TestStaleBanAfterOwnUnban: a ban made before this gateway lifted its key
// is stale (another gateway pushed it while this one's unban was on its
// way); one made after is not. The memory is bounded.
func TestStaleBanAfterOwnUnban(t *testing.T) {
	now := time.Date(2026, 8, 1, 10, 0, 0, 0, time.UTC)
	f := &fleetShared{log: zap.NewNop(), now: func() time.Time { return now },
		pending: map[netip.Prefix]struct{}{}, lifted: map[netip.Prefix]time.Time{}}
	key := netip.MustParsePrefix("192.0.2.7/32")
	require.False(t, f.staleBan(fleet.Ban{Key: key, At: now.Add(-time.Hour)}), "never lifted here")
	f.noteLifted(key)
	require.True(t, f.staleBan(fleet.Ban{Key: key, At: now.Add(-time.Minute)}))
	require.True(t, f.staleBan(fleet.Ban{Key: key, At: now}))
	require.False(t, f.staleBan(fleet.Ban{Key: key, At: now.Add(time.Millisecond)}), "a later ban stands")

	addr := netip.MustParseAddr("10.0.0.0")
	for range maxPendingUnbans + 10 {
		addr = addr.Next()
		f.noteLifted(netip.PrefixFrom(addr, 32))
	}
	require.LessOrEqual(t, len(f.lifted), maxPendingUnbans)
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
