package acl

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
	"go.uber.org/zap"
)

// The state file holds the jail's buckets keyed by the ban key's prefix text
// ("192.0.2.7/32", "2001:db8:1:2::/64"):
//
//	bans     active bans:  {"until": RFC3339, "failures": N, "bans": N, "manual": bool, "at": RFC3339}
//	history  ban history:  {"bans": N, "last": RFC3339}
//
// and a meta bucket with the format version. Failure counts are not
// persisted: a restart forgets partial counts, never bans.
var (
	bucketBans    = []byte("bans")
	bucketHistory = []byte("history")
	bucketMeta    = []byte("meta")
	keyVersion    = []byte("version")
	storeVersion  = []byte("1")
)

type banRecord struct {
	Until    time.Time `json:"until"`
	Failures int       `json:"failures"`
	Bans     int       `json:"bans"`
	Manual   bool      `json:"manual,omitempty"`
	// At is when the ban was made (here, or on the gateway that made it);
	// zero in files written before it was kept, which counts as older
	// than any unban the fleet remembers.
	At time.Time `json:"at,omitzero"`
}

type historyRecord struct {
	Bans int       `json:"bans"`
	Last time.Time `json:"last"`
}

// storedState is what a state file held at open.
type storedState struct {
	bans    map[netip.Prefix]banRecord
	history map[netip.Prefix]historyRecord
}

// store is the bbolt-backed ban state. bbolt fsyncs on every commit, and
// each ban or unban is its own transaction, so a crash loses nothing that
// was recorded before it.
type store struct {
	db *bolt.DB
}

// openStore opens (or creates) the state file and loads it. A file that
// cannot be opened or decoded is renamed to PATH.corrupt-<timestamp> with a
// loud error log and replaced by a fresh one, so a damaged file costs the
// ban history but never keeps the gateway from starting. A file locked by
// another process is an error wrapping ErrStateLocked: two gateways must not
// share one jail file, and waiting forever would hang startup.
func openStore(path string, lockTimeout time.Duration, now time.Time, log *zap.Logger) (*store, storedState, error) {
	s, st, err := tryOpenStore(path, lockTimeout)
	if err == nil {
		return s, st, nil
	}
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, storedState{}, fmt.Errorf("opening ban state %s: %w (is another pgwarden running?)", path, ErrStateLocked)
	}
	fi, statErr := os.Stat(path)
	if statErr != nil || !fi.Mode().IsRegular() {
		// Nothing to move aside (e.g. the directory is missing): a real
		// configuration error, not corruption.
		return nil, storedState{}, fmt.Errorf("opening ban state %s: %w", path, err)
	}
	aside := fmt.Sprintf("%s.corrupt-%s", path, now.UTC().Format("20060102T150405.000000000Z"))
	if rerr := os.Rename(path, aside); rerr != nil {
		return nil, storedState{}, fmt.Errorf("moving unreadable ban state %s aside: %w (opening it failed: %w)", path, rerr, err)
	}
	log.Error("ban state unreadable; moved it aside and started with no bans or ban history",
		zap.String("path", path), zap.String("moved_to", aside), zap.Error(err))
	s, st, err = tryOpenStore(path, lockTimeout)
	if err != nil {
		return nil, storedState{}, fmt.Errorf("creating fresh ban state %s: %w", path, err)
	}
	return s, st, nil
}

// precheck runs before bbolt opens the file (precheckState; tests turn it
// off to reach bbolt's own failure modes).
var precheck = precheckState

func tryOpenStore(path string, lockTimeout time.Duration) (_ *store, _ storedState, err error) {
	var db *bolt.DB
	// bbolt reads the file through mmap: a page id that points past the
	// end of a truncated file faults (SIGSEGV/SIGBUS), which the runtime
	// makes a fatal error that no recover sees, unless this goroutine
	// asks for a panic instead.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		// bbolt validates the meta pages but can still panic on other
		// damage, or fault as above; either means "corrupt", never a
		// crashed gateway. The handle is closed so its file lock does not
		// block the fresh open.
		if r := recover(); r != nil {
			err = fmt.Errorf("opening ban state: panic: %v", r)
			if db != nil {
				closeQuietly(db)
			}
		}
	}()
	if err := precheck(path); err != nil {
		return nil, storedState{}, err
	}
	db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout})
	if err != nil {
		return nil, storedState{}, err
	}
	s := &store{db: db}
	st, err := s.init()
	if err != nil {
		closeQuietly(db)
		return nil, storedState{}, err
	}
	return s, st, nil
}

func closeQuietly(db *bolt.DB) {
	defer func() { _ = recover() }()
	_ = db.Close()
}

// init creates the buckets on a new file, checks the version, and reads
// everything; any error (or panic, see tryOpenStore) means corrupt.
func (s *store) init() (st storedState, err error) {
	st = storedState{bans: map[netip.Prefix]banRecord{}, history: map[netip.Prefix]historyRecord{}}
	err = s.db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return fmt.Errorf("creating meta bucket: %w", err)
		}
		switch v := meta.Get(keyVersion); {
		case v == nil:
			if err := meta.Put(keyVersion, storeVersion); err != nil {
				return fmt.Errorf("writing version: %w", err)
			}
		case string(v) != string(storeVersion):
			return fmt.Errorf("unsupported ban state version %q", v)
		}
		bans, err := tx.CreateBucketIfNotExists(bucketBans)
		if err != nil {
			return fmt.Errorf("creating bans bucket: %w", err)
		}
		hist, err := tx.CreateBucketIfNotExists(bucketHistory)
		if err != nil {
			return fmt.Errorf("creating history bucket: %w", err)
		}
		if err := decodeBucket(bans, st.bans); err != nil {
			return fmt.Errorf("reading bans: %w", err)
		}
		if err := decodeBucket(hist, st.history); err != nil {
			return fmt.Errorf("reading ban history: %w", err)
		}
		return nil
	})
	return st, err
}

func decodeBucket[T any](b *bolt.Bucket, into map[netip.Prefix]T) error {
	return b.ForEach(func(k, v []byte) error {
		key, err := netip.ParsePrefix(string(k))
		if err != nil || key != key.Masked() {
			return fmt.Errorf("bad key %q", k)
		}
		var rec T
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("decoding %s: %w", key, err)
		}
		into[key] = rec
		return nil
	})
}

// keyState is the current in-memory state of one key, written as a whole:
// a nil ban (or history) deletes the record.
type keyState struct {
	key     netip.Prefix
	ban     *banRecord
	history *historyRecord
}

// write stores the given keys' states in one transaction. Damage that
// slipped past the checks at open can make bbolt panic here; that is
// reported as an error so a failed login never crashes its goroutine.
func (s *store) write(states []keyState) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("writing ban state: panic: %v", r)
		}
	}()
	return s.db.Update(func(tx *bolt.Tx) error {
		bans, hist := tx.Bucket(bucketBans), tx.Bucket(bucketHistory)
		for _, ks := range states {
			k := []byte(ks.key.String())
			if err := putOrDelete(bans, k, ks.ban); err != nil {
				return fmt.Errorf("writing ban %s: %w", ks.key, err)
			}
			if err := putOrDelete(hist, k, ks.history); err != nil {
				return fmt.Errorf("writing ban history %s: %w", ks.key, err)
			}
		}
		return nil
	})
}

func putOrDelete[T any](b *bolt.Bucket, k []byte, v *T) error {
	if v == nil {
		return b.Delete(k)
	}
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(k, data)
}

func (s *store) close() error { return s.db.Close() }

// CheckStateFile reads the state file at path as NewJail would, without
// changing it (read-only, no buckets created): nil when a jail would load
// it, an error wrapping ErrStateLocked when another process holds it (a
// running gateway), otherwise the reason NewJail would move it aside.
// Damage is reported, never a crash (see tryOpenStore).
func CheckStateFile(path string, lockTimeout time.Duration) (err error) {
	var db *bolt.DB
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("reading ban state: panic: %v", r)
			if db != nil {
				closeQuietly(db)
			}
		}
	}()
	locked := func() error { return fmt.Errorf("ban state %s: %w", path, ErrStateLocked) }
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil // NewJail creates it
	}
	if err := precheck(path); err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return locked()
		}
		return err
	}
	db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout, ReadOnly: true})
	if errors.Is(err, berrors.ErrTimeout) {
		return locked()
	}
	if err != nil {
		return err
	}
	err = db.View(func(tx *bolt.Tx) error {
		if meta := tx.Bucket(bucketMeta); meta != nil {
			if v := meta.Get(keyVersion); v != nil && string(v) != string(storeVersion) {
				return fmt.Errorf("unsupported ban state version %q", v)
			}
		}
		if b := tx.Bucket(bucketBans); b != nil {
			if err := decodeBucket(b, map[netip.Prefix]banRecord{}); err != nil {
				return fmt.Errorf("reading bans: %w", err)
			}
		}
		if b := tx.Bucket(bucketHistory); b != nil {
			if err := decodeBucket(b, map[netip.Prefix]historyRecord{}); err != nil {
				return fmt.Errorf("reading ban history: %w", err)
			}
		}
		return nil
	})
	closeQuietly(db)
	db = nil
	return err
}
