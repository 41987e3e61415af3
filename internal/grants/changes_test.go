package grants

import (
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestOnChangeSeesEveryChange: creation, extension, revocation and expiry
// each reach OnChange once, after OnRevoke and OnExpire, with the grant as
// it is after the change.
func TestOnChangeSeesEveryChange(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var seen []string
	record := func(s string) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, s)
	}
	r := newTestRegistry(t, func(c *Config) {
		c.OnChange = func(ch Change) {
			record(string(ch.Kind) + " " + ch.Grant.Source.String() + " " + ch.By)
			if ch.Kind == ChangeRevoked {
				require.True(t, ch.KeepSessions)
			}
		}
		c.OnRevoke = func(g Grant, keep bool) { record("OnRevoke " + g.Source.String()) }
		c.OnExpire = func(g Grant) { record("OnExpire " + g.Source.String()) }
	})
	_, err := r.Add(adminReq("203.0.113.7", time.Minute))
	require.NoError(t, err)
	res, err := r.Add(adminReq("203.0.113.7", time.Hour))
	require.NoError(t, err)
	require.True(t, res.Extended)
	_, err = r.Add(adminReq("203.0.113.8", time.Minute))
	require.NoError(t, err)
	_, err = r.Revoke("203.0.113.7", RevokeOptions{KeepSessions: true, By: "ops"})
	require.NoError(t, err)
	r.clock.Advance(time.Minute)
	r.Sweep()
	r.Sweep()

	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []string{
		"created 203.0.113.7/32 ",
		"extended 203.0.113.7/32 ",
		"created 203.0.113.8/32 ",
		"OnRevoke 203.0.113.7/32",
		"revoked 203.0.113.7/32 ops",
		"OnExpire 203.0.113.8/32",
		"expired 203.0.113.8/32 ",
	}, seen)
	require.Equal(t, []string{"grant created", "grant extended", "grant created", "grant revoked", "grant expired"}, r.auditEvents())
}

// TestUntilIsWholeSeconds: until is rounded up to the second, so the JSON
// reads as plain RFC 3339 and a grant never ends before the time asked.
func TestUntilIsWholeSeconds(t *testing.T) {
	t.Parallel()
	r := newTestRegistry(t)
	r.clock.Advance(1500 * time.Millisecond) // 12:00:01.5
	res, err := r.Add(adminReq("203.0.113.7", 10*time.Second))
	require.NoError(t, err)
	require.Equal(t, time.Date(2026, 5, 1, 12, 0, 12, 0, time.UTC), res.Grant.Until)
	data, err := json.Marshal(res.Grant)
	require.NoError(t, err)
	require.Contains(t, string(data), `"until":"2026-05-01T12:00:12Z"`)
	r.clock.Advance(10*time.Second + 499*time.Millisecond) // 12:00:11.999
	_, ok := r.Covering("", addr("203.0.113.7"))
	require.True(t, ok)
	r.clock.Advance(time.Millisecond)
	_, ok = r.Covering("", addr("203.0.113.7"))
	require.False(t, ok)
}
