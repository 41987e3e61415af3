package grants

import (
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/acl"
)

func openBolt(t *testing.T, path string) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	require.NoError(t, err)
	return db
}

func TestGrantsSurviveRestartAndExpireWhileDown(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "state.db")
	clock := newFakeClock()

	db := openBolt(t, path)
	st, err := NewBoltStore(db)
	require.NoError(t, err)
	tr := newTestRegistry(t, func(c *Config) { c.Store = st; c.Now = clock.Now })
	short, err := tr.Add(adminReq("192.0.2.1", 10*time.Minute))
	require.NoError(t, err)
	req := adminReq("2001:db8::7", 2*time.Hour)
	req.Users, req.Databases, req.Route = []string{"migrator"}, []string{"shop"}, "main"
	req.Via, req.CreatedBy, req.Rule = ViaOIDC, "repo:acme/app:ref:refs/heads/main", `oidc rule "deploy"`
	req.Claims = map[string]string{"repository_id": "42"}
	long, err := tr.Add(req)
	require.NoError(t, err)
	revoked, err := tr.Add(adminReq("198.51.100.0/24", time.Hour))
	require.NoError(t, err)
	_, err = tr.Revoke(revoked.Grant.ID, RevokeOptions{})
	require.NoError(t, err)
	require.NoError(t, tr.Close())
	require.NoError(t, db.Close())

	// Down for 30 minutes: the short grant ended meanwhile.
	clock.Advance(30 * time.Minute)
	db = openBolt(t, path)
	defer db.Close()
	st, err = NewBoltStore(db)
	require.NoError(t, err)
	tr2 := newTestRegistry(t, func(c *Config) { c.Store = st; c.Now = clock.Now })
	list := tr2.List()
	require.Len(t, list, 1, "revoked and expired grants are gone")
	got := list[0]
	want := long.Grant
	require.Equal(t, want.ID, got.ID)
	require.Equal(t, want.Source, got.Source)
	require.True(t, want.Until.Equal(got.Until))
	require.Equal(t, want.Users, got.Users)
	require.Equal(t, want.Databases, got.Databases)
	require.Equal(t, want.Claims, got.Claims)
	require.Equal(t, want.Rule, got.Rule)
	require.Equal(t, "main", got.Route)
	g, ok := tr2.Covering("main", addr("2001:db8::7"))
	require.True(t, ok)
	tr2.MarkUsed(g, addr("2001:db8::7"))

	expiredLines := tr2.logs.FilterMessage("grant expired").All()
	require.Len(t, expiredLines, 1)
	require.Equal(t, short.Grant.ID, expiredLines[0].ContextMap()["grant_id"])
	require.Equal(t, true, expiredLines[0].ContextMap()["while_down"])
	require.Empty(t, tr2.cb.Expired(), "no OnExpire for a grant that admitted nothing in this process")

	stored, err := st.Load()
	require.NoError(t, err)
	require.Len(t, stored, 1, "the expired grant was deleted from the file")

	// An extension is saved too.
	_, err = tr2.Add(req)
	require.NoError(t, err)
	stored, err = st.Load()
	require.NoError(t, err)
	require.Equal(t, 1, stored[0].Extensions)
}

// TestSharesTheJailStateFile: grants live in the ban jail's bbolt file,
// beside its buckets, and neither disturbs the other.
func TestSharesTheJailStateFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "state.db")
	jcfg := acl.DefaultJailConfig()
	jcfg.StatePath, jcfg.Logger = path, zap.NewNop()
	j, err := acl.NewJail(jcfg)
	require.NoError(t, err)
	_, err = j.Ban("203.0.113.0/24", time.Hour)
	require.NoError(t, err)
	require.NoError(t, j.Close())

	db := openBolt(t, path)
	st, err := NewBoltStore(db)
	require.NoError(t, err)
	r, err := New(Config{Store: st})
	require.NoError(t, err)
	res, err := r.Add(adminReq("192.0.2.1", time.Hour))
	require.NoError(t, err)
	require.NoError(t, r.Close())
	require.NoError(t, db.Close())

	// The jail reopens the file with the grants bucket in it.
	j, err = acl.NewJail(jcfg)
	require.NoError(t, err)
	require.True(t, j.Banned(addr("203.0.113.9")))
	require.NoError(t, j.Close())

	db = openBolt(t, path)
	defer db.Close()
	st, err = NewBoltStore(db)
	require.NoError(t, err)
	stored, err := st.Load()
	require.NoError(t, err)
	require.Len(t, stored, 1)
	require.Equal(t, res.Grant.ID, stored[0].ID)
	require.NoError(t, db.View(func(tx *bolt.Tx) error {
		for _, b := range []string{"bans", "history", "meta", "grants"} {
			if tx.Bucket([]byte(b)) == nil {
				return errors.New("missing bucket " + b)
			}
		}
		return nil
	}))
}

func TestCorruptRecordsAreDropped(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "state.db")
	db := openBolt(t, path)
	defer db.Close()
	st, err := NewBoltStore(db)
	require.NoError(t, err)
	r, err := New(Config{Store: st})
	require.NoError(t, err)
	good, err := r.Add(adminReq("192.0.2.1", time.Hour))
	require.NoError(t, err)
	require.NoError(t, r.Close())
	require.NoError(t, db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketGrants)
		for k, v := range map[string]string{
			"g-bad1": "{not json",
			"g-bad2": `{"id":"g-other","source":"192.0.2.2/32","until":"2099-01-01T00:00:00Z"}`, // id mismatch
			"g-bad3": `{"id":"g-bad3","source":"192.0.2.2/24","until":"2099-01-01T00:00:00Z"}`,  // unmasked
			"g-bad4": `{"id":"g-bad4","source":"192.0.2.2/32"}`,                                 // no until
		} {
			if err := b.Put([]byte(k), []byte(v)); err != nil {
				return err
			}
		}
		return nil
	}))
	r, err = New(Config{Store: st})
	require.NoError(t, err, "bad records never keep the registry from starting")
	defer r.Close()
	list := r.List()
	require.Len(t, list, 1)
	require.Equal(t, good.Grant.ID, list[0].ID)
	stored, err := st.Load()
	require.NoError(t, err, "the bad records were deleted")
	require.Len(t, stored, 1)
}

// failingStore fails Save or Delete on demand.
type failingStore struct {
	mu         sync.Mutex
	saveErr    error
	deleteErr  error
	saved, del int
}

func (f *failingStore) Load() ([]Grant, error) { return nil, nil }

func (f *failingStore) Save(Grant) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.saved++
	return f.saveErr
}

func (f *failingStore) Delete(string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.del++
	return f.deleteErr
}

func TestStoreFailures(t *testing.T) {
	t.Parallel()
	fs := &failingStore{saveErr: errors.New("disk full")}
	r := newTestRegistry(t, func(c *Config) { c.Store = fs })
	_, err := r.Add(adminReq("192.0.2.1", time.Hour))
	require.ErrorContains(t, err, "disk full")
	_, ok := r.Covering("main", addr("192.0.2.1"))
	require.False(t, ok, "a grant that could not be saved does not exist")
	require.Empty(t, r.auditEvents())

	fs.mu.Lock()
	fs.saveErr, fs.deleteErr = nil, errors.New("i/o error")
	fs.mu.Unlock()
	res, err := r.Add(adminReq("192.0.2.1", time.Hour))
	require.NoError(t, err)
	got, err := r.Revoke(res.Grant.ID, RevokeOptions{})
	require.ErrorContains(t, err, "still in the state file")
	require.Len(t, got, 1)
	_, ok = r.Covering("main", addr("192.0.2.1"))
	require.False(t, ok, "revoked in memory even when the file could not be updated")
	revoked, _ := r.cb.Revoked()
	require.Len(t, revoked, 1, "and the sessions are still ended")
}

func TestNewBoltStoreNeedsDB(t *testing.T) {
	t.Parallel()
	_, err := NewBoltStore(nil)
	require.Error(t, err)
}
