package grants

import (
	"encoding/json"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Store persists grants. Save and Delete are called with the Registry's
// writer lock held, in the order the changes happen; Load once, in New.
type Store interface {
	// Load returns every stored grant, expired ones included.
	Load() ([]Grant, error)
	// Save writes g (a new grant or a new version of one), replacing any
	// grant with the same ID.
	Save(g Grant) error
	// Delete removes the grant with id; a missing id is not an error.
	Delete(id string) error
}

// bucketGrants is the bbolt bucket grants live in, beside the jail's
// "bans", "history" and "meta" buckets. Keys are grant ids; values are the
// grant's JSON (the API shape).
var bucketGrants = []byte("grants")

// BoltStore keeps grants in the bucket "grants" of a bbolt database that
// someone else opened and will close (the ban jail's state file). Every
// Save and Delete is its own transaction, which bbolt fsyncs.
type BoltStore struct {
	db *bolt.DB
}

// NewBoltStore creates the bucket if needed. db must stay open for as
// long as the Registry using the store (close the Registry first).
func NewBoltStore(db *bolt.DB) (*BoltStore, error) {
	if db == nil {
		return nil, errors.New("grant store: no database")
	}
	s := &BoltStore{db: db}
	err := s.update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketGrants)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("creating the grants bucket in %s: %w", db.Path(), err)
	}
	return s, nil
}

// Load implements Store. Records that do not decode into a valid grant are
// deleted and skipped, so one damaged record cannot keep the gateway (and
// every other grant) down; the good grants then come with a
// *CorruptRecordsError saying how many were dropped.
func (s *BoltStore) Load() (_ []Grant, err error) {
	var out []Grant
	var bad [][]byte
	err = s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketGrants)
		if b == nil {
			return errors.New("the grants bucket is missing")
		}
		if err := b.ForEach(func(k, v []byte) error {
			var g Grant
			if json.Unmarshal(v, &g) != nil || g.ID != string(k) || !g.Source.IsValid() || g.Source != g.Source.Masked() || g.Until.IsZero() {
				bad = append(bad, append([]byte(nil), k...))
				return nil
			}
			out = append(out, g)
			return nil
		}); err != nil {
			return err
		}
		for _, k := range bad {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading grants from %s: %w", s.db.Path(), err)
	}
	if len(bad) > 0 {
		return out, &CorruptRecordsError{Keys: len(bad), Path: s.db.Path()}
	}
	return out, nil
}

// CorruptRecordsError reports grant records that could not be decoded and
// were deleted; Load still returns every good grant with it.
type CorruptRecordsError struct {
	Keys int
	Path string
}

func (e *CorruptRecordsError) Error() string {
	return fmt.Sprintf("%d unreadable grant records in %s were deleted", e.Keys, e.Path)
}

// Save implements Store.
func (s *BoltStore) Save(g Grant) error {
	data, err := json.Marshal(g)
	if err != nil {
		return fmt.Errorf("encoding grant %s: %w", g.ID, err)
	}
	return s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketGrants).Put([]byte(g.ID), data)
	})
}

// Delete implements Store.
func (s *BoltStore) Delete(id string) error {
	return s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketGrants).Delete([]byte(id))
	})
}

// update runs fn in a write transaction. bbolt can panic on a damaged
// file; that becomes an error, never a crashed gateway.
func (s *BoltStore) update(fn func(*bolt.Tx) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("grant state %s: panic: %v", s.db.Path(), r)
		}
	}()
	return s.db.Update(fn)
}
