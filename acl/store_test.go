package acl

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func banBy(t testing.TB, j *Jail, s string) time.Time {
	t.Helper()
	var until time.Time
	var banned bool
	for range DefaultBanMaxRetry {
		banned, until = j.Failed(ip(s), badPassword)
	}
	require.True(t, banned, "%s not banned after %d failures", s, DefaultBanMaxRetry)
	return until
}

func TestJailStateSurvivesRestart(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	cfg := testJailConfig(clock)
	cfg.StatePath = filepath.Join(t.TempDir(), "bans.db")

	j1, err := NewJail(cfg)
	require.NoError(t, err)
	until := banBy(t, j1, "192.0.2.1")
	banBy(t, j1, "2001:db8:5:6::1")
	_, err = j1.Ban("198.51.100.0/24", 10*time.Minute)
	require.NoError(t, err)
	before := j1.List()
	require.NoError(t, j1.Close())

	// Restart five minutes later: bans and their details are back.
	clock.Advance(5 * time.Minute)
	j2 := newTestJail(t, cfg)
	if !j2.Banned(ip("192.0.2.1")) || !j2.Banned(ip("2001:db8:5:6::abcd")) || !j2.Banned(ip("198.51.100.9")) {
		t.Fatalf("bans not restored: %+v", j2.List())
	}
	require.Equal(t, before, j2.List())
	require.NoError(t, j2.Close())

	// Restart after the bans ended: they are gone, the history is not, so
	// the next ban of 192.0.2.1 is the escalated second one.
	clock.Advance(until.Sub(clock.Now()) + time.Minute)
	j3 := newTestJail(t, cfg)
	if j3.ActiveBans() != 0 {
		t.Fatalf("expired bans restored: %+v", j3.List())
	}
	until2 := banBy(t, j3, "192.0.2.1")
	if got := until2.Sub(clock.Now()); got != 2*DefaultBanTime {
		t.Fatalf("second ban after restart lasts %s, want %s", got, 2*DefaultBanTime)
	}
	if l := j3.List(); len(l) != 1 || l[0].Bans != 2 {
		t.Fatalf("List = %+v, want bans=2", l)
	}
	require.NoError(t, j3.Close())

	// Once the history is older than HistoryTTL it is purged at start, and
	// the next ban is a first ban again.
	clock.Advance(24*time.Hour + time.Hour) // HistoryTTL = max(24h, 3×2h)
	j4 := newTestJail(t, cfg)
	until4 := banBy(t, j4, "192.0.2.1")
	if got := until4.Sub(clock.Now()); got != DefaultBanTime {
		t.Fatalf("ban after history expiry lasts %s, want %s", got, DefaultBanTime)
	}
}

func TestJailUnbanIsPersisted(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	cfg := testJailConfig(clock)
	cfg.StatePath = filepath.Join(t.TempDir(), "bans.db")
	j1, err := NewJail(cfg)
	require.NoError(t, err)
	banBy(t, j1, "192.0.2.1")
	banBy(t, j1, "192.0.2.2")
	require.NoError(t, j1.Unban("192.0.2.1"))
	require.NoError(t, j1.Close())

	j2 := newTestJail(t, cfg)
	if j2.Banned(ip("192.0.2.1")) || !j2.Banned(ip("192.0.2.2")) {
		t.Fatalf("after restart: %+v, want only 192.0.2.2", j2.List())
	}
}

func TestJailCorruptStateMovedAside(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		content []byte
	}{
		{name: "garbage", content: []byte("this is not a bbolt file, just garbage\n")},
		{name: "garbage page sized", content: func() []byte {
			b := make([]byte, 64*1024)
			for i := range b {
				b[i] = byte(i * 7)
			}
			return b
		}()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, "bans.db")
			require.NoError(t, os.WriteFile(path, tc.content, 0o600))
			core, logs := observer.New(zapcore.InfoLevel)
			cfg := testJailConfig(newFakeClock())
			cfg.StatePath, cfg.Logger = path, zap.New(core)

			j := newTestJail(t, cfg)
			aside, err := filepath.Glob(path + ".corrupt-*")
			require.NoError(t, err)
			require.Len(t, aside, 1, "the corrupt file should be moved aside")
			kept, err := os.ReadFile(aside[0])
			require.NoError(t, err)
			require.Equal(t, tc.content, kept, "the moved file must be the original bytes")
			errs := logs.FilterLevelExact(zapcore.ErrorLevel).All()
			if len(errs) != 1 || errs[0].ContextMap()["moved_to"] != aside[0] {
				t.Fatalf("want one error log naming %s, got %v", aside[0], errs)
			}
			// The fresh store works.
			banBy(t, j, "192.0.2.1")
			require.NoError(t, j.Close())
			j2 := newTestJail(t, cfg)
			if !j2.Banned(ip("192.0.2.1")) {
				t.Fatal("ban written to the fresh store was not restored")
			}
		})
	}
}

func TestJailCorruptRecordMovedAside(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "bans.db")
	s, _, err := openStore(path, time.Second, time.Now(), zap.NewNop())
	require.NoError(t, err)
	require.NoError(t, s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBans).Put([]byte("not-a-prefix"), []byte("{"))
	}))
	require.NoError(t, s.close())

	j := newTestJail(t, JailConfig{MaxRetry: 5, FindTime: time.Minute, BanTime: time.Minute, TimeFactor: 1, MaxTime: time.Minute, StatePath: path})
	aside, _ := filepath.Glob(path + ".corrupt-*")
	require.Len(t, aside, 1)
	require.Equal(t, 0, j.ActiveBans())
}

func TestJailStateLocked(t *testing.T) {
	t.Parallel()
	cfg := testJailConfig(newFakeClock())
	cfg.StatePath = filepath.Join(t.TempDir(), "bans.db")
	newTestJail(t, cfg)

	cfg.StateLockTimeout = 100 * time.Millisecond
	start := time.Now()
	_, err := NewJail(cfg)
	if !errors.Is(err, ErrStateLocked) {
		t.Fatalf("second open: %v, want ErrStateLocked", err)
	}
	require.ErrorContains(t, err, cfg.StatePath)
	if time.Since(start) > 5*time.Second {
		t.Fatal("locked state file took too long to report")
	}
	if aside, _ := filepath.Glob(cfg.StatePath + ".corrupt-*"); len(aside) != 0 {
		t.Fatal("a locked file must not be moved aside")
	}
}

func TestJailStateMissingDirectory(t *testing.T) {
	t.Parallel()
	cfg := testJailConfig(newFakeClock())
	cfg.StatePath = filepath.Join(t.TempDir(), "no-such-dir", "bans.db")
	_, err := NewJail(cfg)
	require.ErrorContains(t, err, "opening ban state")
}

// TestJailDamagedStateNeverBlocksStart damages a real state file in the
// ways disks and crashes do. Whatever bbolt makes of it (recovering from
// the second meta page, an error, or a panic on a bad page), NewJail must
// succeed; a file it cannot read must be moved aside.
func TestJailDamagedStateNeverBlocksStart(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		damage    func([]byte) []byte
		wantAside bool
	}{
		{name: "truncated to one page", damage: func(b []byte) []byte { return b[:4096] }, wantAside: true},
		{name: "both meta pages zeroed", damage: func(b []byte) []byte { clear(b[:8192]); return b }, wantAside: true},
		{name: "data pages scribbled", damage: func(b []byte) []byte {
			for i := 8192; i < len(b); i += 7 {
				b[i] ^= 0x5a
			}
			return b
		}, wantAside: true},
		{name: "one meta page zeroed", damage: func(b []byte) []byte { clear(b[:4096]); return b }},
		// The freelist page that each meta page names claims more ids than
		// the file holds; bbolt would allocate them all (a fatal
		// out-of-memory for this count) and copy them out of its mmap.
		{name: "freelist count beyond memory", damage: freelistClaims(1 << 40), wantAside: true},
		{name: "freelist runs past the end", damage: freelistClaims(1 << 22), wantAside: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := damagedState(t, tc.damage)
			j2 := newTestJail(t, cfg)
			aside, _ := filepath.Glob(cfg.StatePath + ".corrupt-*")
			if (len(aside) == 1) != tc.wantAside {
				t.Fatalf("moved aside: %v, want %v (bans restored: %d)", aside, tc.wantAside, j2.ActiveBans())
			}
		})
	}
}

// damagedState writes a state file holding 40 bans, then damages its
// bytes, and returns a jail configuration that opens it.
func damagedState(t *testing.T, damage func([]byte) []byte) JailConfig {
	t.Helper()
	cfg := testJailConfig(newFakeClock())
	cfg.StatePath = filepath.Join(t.TempDir(), "bans.db")
	j, err := NewJail(cfg)
	require.NoError(t, err)
	for i := range 40 {
		_, err := j.Ban(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}).String(), time.Hour)
		require.NoError(t, err)
	}
	require.NoError(t, j.Close())
	b, err := os.ReadFile(cfg.StatePath)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(cfg.StatePath, damage(b), 0o600))
	return cfg
}

// freelistClaims makes the freelist page of each meta page claim count
// ids (bbolt's 0xFFFF escape, then the count in the first element).
func freelistClaims(count uint64) func([]byte) []byte {
	return func(b []byte) []byte {
		const pageSize, freelistAt, countAt = 4096, 16 + 32, 10
		for _, meta := range []int{0, pageSize} {
			page := int(binary.LittleEndian.Uint64(b[meta+freelistAt:])) * pageSize
			if page+pageSize > len(b) {
				continue
			}
			binary.LittleEndian.PutUint16(b[page+countAt:], 0xFFFF)
			binary.LittleEndian.PutUint64(b[page+16:], count)
		}
		return b
	}
}

// TestJailStateFaultIsRecovered: without the pre-open check, a freelist
// that runs past bbolt's mmap (4M ids: allocated, then copied from a
// mapping of a few pages) faults inside bbolt. The fault must be a
// recovered panic (SetPanicOnFault), so the file is moved aside rather
// than the process dying. Not parallel: it turns the check off.
func TestJailStateFaultIsRecovered(t *testing.T) {
	defer func(p func(string) error) { precheck = p }(precheck)
	precheck = func(string) error { return nil }
	cfg := damagedState(t, freelistClaims(1<<22))
	j2 := newTestJail(t, cfg)
	aside, _ := filepath.Glob(cfg.StatePath + ".corrupt-*")
	require.Len(t, aside, 1, "the damaged file is moved aside")
	require.Equal(t, 0, j2.ActiveBans())
}

// TestJailDamagedButLockedIsNotMovedAside: damage seen while another
// jail holds the file is that jail's business: the second open reports
// the lock and moves nothing aside.
func TestJailDamagedButLockedIsNotMovedAside(t *testing.T) {
	t.Parallel()
	cfg := testJailConfig(newFakeClock())
	cfg.StatePath = filepath.Join(t.TempDir(), "bans.db")
	newTestJail(t, cfg)
	b, err := os.ReadFile(cfg.StatePath)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(cfg.StatePath, freelistClaims(1<<40)(b), 0o600))

	cfg.StateLockTimeout = 100 * time.Millisecond
	_, err = NewJail(cfg)
	require.ErrorIs(t, err, ErrStateLocked)
	aside, _ := filepath.Glob(cfg.StatePath + ".corrupt-*")
	require.Empty(t, aside)
}

// TestStateFileSharesBuckets: other state can live in the jail's file, in
// buckets of its own, and survives a restart beside the bans.
func TestStateFileSharesBuckets(t *testing.T) {
	t.Parallel()
	cfg := testJailConfig(newFakeClock())
	require.Nil(t, newTestJail(t, cfg).DB(), "an in-memory jail has no file")
	cfg.StatePath = filepath.Join(t.TempDir(), "bans.db")

	j1, err := NewJail(cfg)
	require.NoError(t, err)
	banBy(t, j1, "192.0.2.1")
	require.NoError(t, j1.DB().Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("grants"))
		if err != nil {
			return err
		}
		return b.Put([]byte("g-1"), []byte(`{"source":"198.51.100.7"}`))
	}))
	require.NoError(t, j1.Close())

	j2 := newTestJail(t, cfg)
	require.True(t, j2.Banned(ip("192.0.2.1")))
	require.NoError(t, j2.DB().View(func(tx *bolt.Tx) error {
		require.Equal(t, `{"source":"198.51.100.7"}`, string(tx.Bucket([]byte("grants")).Get([]byte("g-1"))))
		return nil
	}))
}

// TestCheckStateFile: the read-only check sees what NewJail would, and a
// damaged file is an error, not a crash; the file is left as it was.
func TestCheckStateFile(t *testing.T) {
	t.Parallel()
	cfg := testJailConfig(newFakeClock())
	cfg.StatePath = filepath.Join(t.TempDir(), "bans.db")
	require.NoError(t, CheckStateFile(cfg.StatePath+".missing", time.Second), "NewJail would create it")
	j, err := NewJail(cfg)
	require.NoError(t, err)
	_, err = j.Ban("10.0.0.1", time.Hour)
	require.NoError(t, err)
	require.ErrorIs(t, CheckStateFile(cfg.StatePath, 50*time.Millisecond), ErrStateLocked)
	require.NoError(t, j.Close())
	require.NoError(t, CheckStateFile(cfg.StatePath, time.Second))

	b, err := os.ReadFile(cfg.StatePath)
	require.NoError(t, err)
	for name, count := range map[string]uint64{"beyond memory": 1 << 40, "past the end": 1 << 22} {
		damaged := freelistClaims(count)(append([]byte(nil), b...))
		require.NoError(t, os.WriteFile(cfg.StatePath, damaged, 0o600))
		require.Error(t, CheckStateFile(cfg.StatePath, time.Second), name)
		after, err := os.ReadFile(cfg.StatePath)
		require.NoError(t, err)
		require.Equal(t, damaged, after, "%s: the check changed the file", name)
	}
	require.NoError(t, os.WriteFile(cfg.StatePath, []byte("not bbolt"), 0o600))
	require.Error(t, CheckStateFile(cfg.StatePath, time.Second))
}
