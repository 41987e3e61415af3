package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/internal/fleet"
	"github.com/pgwarden/pgwarden/internal/grants"
)

// Grants shared by the fleet.
//
// A grant made, extended or revoked on one gateway is published as a fleet
// record of kind "grant" (its JSON, until its end) from the registry's
// OnChange, so every gateway watching the stream applies it within one
// round trip; expiry needs nothing (every gateway holds the same end).
// Changes that came from the fleet are marked Remote by the registry and
// not sent back. While Redis is down, changes stay local; the grants are
// pushed at the next resynchronisation, after the revocations made
// meanwhile are replayed (lifts), each grant carrying the time it last
// changed here.

// grantRecordKind is the fleet record kind of grants.
const grantRecordKind = "grant"

// revokeNote travels with a revocation: whether the grant's sessions stay.
type revokeNote struct {
	KeepSessions bool `json:"keep_sessions"`
}

// grantSync publishes the registry's changes to the fleet and applies the
// fleet's. A nil *grantSync (no Redis) does nothing.
type grantSync struct {
	store   *fleet.Store
	reg     *grants.Registry // set once the registry is built
	log     *zap.Logger
	revokes *lifts[string, bool] // grant id → keep_sessions

	mu      sync.Mutex
	changed map[string]time.Time // grant id → when it last changed, here or in the fleet
}

func newGrantSync(store *fleet.Store, log *zap.Logger) *grantSync {
	return &grantSync{store: store, log: log, revokes: newLifts[string, bool](), changed: map[string]time.Time{}}
}

// publishTimeout bounds publishing one change (the store's own timeout is
// shorter; this only guards against a store without one).
const publishTimeout = 5 * time.Second

// onChange publishes one change of the registry (grants.Config.OnChange).
func (s *grantSync) onChange(c grants.Change) {
	if s == nil || c.Remote {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
	defer cancel()
	id := c.Grant.ID
	switch c.Kind {
	case grants.ChangeCreated, grants.ChangeExtended:
		s.revokes.renewed(id)
		s.setChanged(id, time.Now())
		data, err := json.Marshal(c.Grant)
		if err == nil {
			_, err = s.store.PutRecord(ctx, fleet.Record{Kind: grantRecordKind, ID: id, Until: c.Grant.Until, Data: data})
		}
		if err != nil {
			// Pushed with the next resynchronisation.
			s.log.Debug("publishing a grant failed; it reaches the fleet when redis is back",
				zap.String("grant_id", id), zap.Error(err))
		}
	case grants.ChangeRevoked:
		s.forget(id)
		s.revokes.lifted(id)
		if err := s.publishRevoke(ctx, id, c.KeepSessions); err != nil {
			if !s.revokes.pend(id, c.KeepSessions) {
				s.log.Warn("too many revocations waiting for redis; this one is not replayed", zap.String("grant_id", id))
			}
			s.log.Warn("publishing a grant revocation failed; it reaches the other gateways when redis is back",
				zap.String("grant_id", id), zap.Error(err))
		}
	case grants.ChangeExpired:
		s.forget(id)
	}
}

func (s *grantSync) publishRevoke(ctx context.Context, id string, keep bool) error {
	note, _ := json.Marshal(revokeNote{KeepSessions: keep})
	_, err := s.store.RevokeRecordWith(ctx, fleet.RecordRef{Kind: grantRecordKind, ID: id}, note)
	return err
}

// apply installs a grant record from the fleet (an event or a snapshot).
func (s *grantSync) apply(rec fleet.Record) {
	if s == nil || s.reg == nil || rec.Kind != grantRecordKind {
		return
	}
	if s.revokes.stale(rec.ID, rec.At) {
		return // this gateway revoked it after; its revocation follows
	}
	var g grants.Grant
	if err := json.Unmarshal(rec.Data, &g); err != nil || g.ID != rec.ID {
		s.log.Warn("ignoring a grant record from the fleet that is not a grant", zap.String("grant_id", rec.ID), zap.Error(err))
		return
	}
	if _, err := s.reg.Apply(g); err != nil {
		s.log.Warn("a grant from the fleet was not applied", zap.String("grant_id", rec.ID), zap.Error(err))
		return
	}
	s.setChanged(rec.ID, rec.At)
}

// revoke applies a revocation from the fleet; note is the revoker's
// revokeNote (nil: end the grant's sessions, the safe choice).
func (s *grantSync) revoke(ref fleet.RecordRef, note json.RawMessage) {
	if s == nil || s.reg == nil || ref.Kind != grantRecordKind {
		return
	}
	var n revokeNote
	if len(note) > 0 {
		_ = json.Unmarshal(note, &n)
	}
	s.forget(ref.ID)
	_, err := s.reg.Revoke(ref.ID, grants.RevokeOptions{By: "fleet", Remote: true, KeepSessions: n.KeepSessions})
	if err != nil && !errors.Is(err, grants.ErrNotFound) {
		s.log.Warn("a grant revocation from the fleet failed here", zap.String("grant_id", ref.ID), zap.Error(err))
	}
}

// local replays the revocations made while Redis was away and returns
// the active grants, for the push of a resynchronisation.
func (s *grantSync) local(ctx context.Context) []fleet.Record {
	if s == nil || s.reg == nil {
		return nil
	}
	s.revokes.replay(func(id string, keep bool) error { return s.publishRevoke(ctx, id, keep) })
	var out []fleet.Record
	for _, g := range s.reg.List() {
		data, err := json.Marshal(g)
		if err != nil {
			continue
		}
		out = append(out, fleet.Record{Kind: grantRecordKind, ID: g.ID, Until: g.Until, Data: data, At: s.changedAt(g)})
	}
	return out
}

func (s *grantSync) setChanged(id string, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.changed[id] = at
}

func (s *grantSync) forget(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.changed, id)
}

// changedAt is when g last changed as far as this process knows; a grant
// restored from the state file and unchanged since counts from its
// creation. The map holds only grants in force (at most MaxGrants).
func (s *grantSync) changedAt(g grants.Grant) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	if at, ok := s.changed[g.ID]; ok {
		return at
	}
	return g.Created
}
