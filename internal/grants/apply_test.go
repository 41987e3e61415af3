package grants

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// changeLog records OnChange calls.
type changeLog struct {
	mu  sync.Mutex
	all []Change
}

func (c *changeLog) on(ch Change) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.all = append(c.all, ch)
}

func (c *changeLog) changes() []Change {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Change(nil), c.all...)
}

// TestApplyRemoteGrants: a grant from another gateway admits here, an
// updated copy replaces it (same id), applying it again changes nothing,
// and every such change, like a revocation marked Remote, is announced as
// Remote so it is not sent back.
func TestApplyRemoteGrants(t *testing.T) {
	var log changeLog
	tr := newTestRegistry(t, func(c *Config) { c.OnChange = log.on })
	src, err := ParseSource("192.0.2.10")
	require.NoError(t, err)
	remote := Grant{ID: "g-00000000000000aa", Source: src, Until: tr.clock.Now().Add(time.Hour),
		Reason: "ci", CreatedBy: "repo:acme/app", Via: ViaOIDC, Created: tr.clock.Now()}

	changed, err := tr.Apply(remote)
	require.NoError(t, err)
	require.True(t, changed)
	g, ok := tr.Covering("any", addr("192.0.2.10"))
	require.True(t, ok)
	require.Equal(t, remote.ID, g.ID)

	changed, err = tr.Apply(remote)
	require.NoError(t, err)
	require.False(t, changed, "the same grant again")

	// A local request for the same source extends the remote grant.
	res, err := tr.Add(adminReq("192.0.2.10", 2*time.Hour))
	require.NoError(t, err)
	require.True(t, res.Extended)
	require.Equal(t, remote.ID, res.Grant.ID)

	// An extension made elsewhere replaces it.
	ext := res.Grant
	ext.Until = tr.clock.Now().Add(3 * time.Hour)
	ext.Extensions++
	changed, err = tr.Apply(ext)
	require.NoError(t, err)
	require.True(t, changed)
	got, ok := tr.Get(remote.ID)
	require.True(t, ok)
	require.Equal(t, ext.Until, got.Until)

	// Revoked elsewhere: gone here, sessions ended unless kept.
	_, err = tr.Revoke(remote.ID, RevokeOptions{By: "fleet", Remote: true, KeepSessions: true})
	require.NoError(t, err)
	_, ok = tr.Covering("any", addr("192.0.2.10"))
	require.False(t, ok)
	_, keep := tr.cb.Revoked()
	require.Equal(t, []bool{true}, keep)

	var kinds []ChangeKind
	var remotes []bool
	for _, c := range log.changes() {
		kinds = append(kinds, c.Kind)
		remotes = append(remotes, c.Remote)
	}
	require.Equal(t, []ChangeKind{ChangeCreated, ChangeExtended, ChangeExtended, ChangeRevoked}, kinds)
	require.Equal(t, []bool{true, false, true, true}, remotes)

	// Expired, malformed, or beyond MaxGrants: not applied.
	old := remote
	old.ID, old.Until = "g-00000000000000bb", tr.clock.Now().Add(-time.Second)
	changed, err = tr.Apply(old)
	require.NoError(t, err)
	require.False(t, changed)
	bad := remote
	bad.ID = "x"
	_, err = tr.Apply(bad)
	require.ErrorIs(t, err, ErrBadRequest)

	full := newTestRegistry(t, func(c *Config) { c.MaxGrants = 1 })
	_, err = full.Add(adminReq("198.51.100.1", time.Hour))
	require.NoError(t, err)
	_, err = full.Apply(remote)
	require.ErrorIs(t, err, ErrFull)
}
