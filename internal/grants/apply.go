package grants

import (
	"fmt"
	"slices"
	"strings"
	"sync/atomic"

	"go.uber.org/zap"
)

// Grants made on other gateways.
//
// Gateways that share their state (package fleet) each keep a Registry;
// a grant made, extended or revoked on one reaches the others, which
// Apply it (or Revoke it with RevokeOptions.Remote). Such changes are
// announced like local ones (audit line, OnRevoke ending the grant's
// sessions here, OnChange) with Change.Remote set, so that what publishes
// changes to the other gateways does not send them back.

// Apply installs a grant another gateway made or extended, as it holds it
// now: a grant with the same id is replaced (keeping its sessions and its
// first-use mark), and a new one is added. A grant of the same source and
// route with another id (two gateways granted at the same moment) stays;
// both admit, and the later-ending one is the one a new request extends.
// Applying what the registry already holds changes nothing, so updates
// may repeat. The change is written to the Store before it takes effect.
func (r *Registry) Apply(g Grant) (changed bool, err error) {
	if !strings.HasPrefix(g.ID, "g-") || !g.Source.IsValid() || g.Source != g.Source.Masked() {
		return false, fmt.Errorf("%w: a shared grant needs an id (g-…) and a masked source (got %q, %s)", ErrBadRequest, g.ID, g.Source)
	}
	now := r.cfg.Now()
	if !g.Active(now) {
		return false, nil
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return false, ErrClosed
	}
	expired := r.expireLocked(now)
	old, had := r.byID[g.ID]
	if had && sameGrant(old, &g) {
		r.mu.Unlock()
		r.fireExpired(expired)
		return false, nil
	}
	if !had && len(r.byID) >= r.cfg.MaxGrants {
		r.mu.Unlock()
		r.fireExpired(expired)
		return false, fmt.Errorf("%w (limit %d): grant %s from another gateway not applied", ErrFull, r.cfg.MaxGrants, g.ID)
	}
	if r.cfg.Store != nil {
		if err := r.cfg.Store.Save(g); err != nil {
			r.mu.Unlock()
			r.fireExpired(expired)
			return false, fmt.Errorf("saving grant %s from another gateway: %w", g.ID, err)
		}
	}
	stored := g.clone()
	stored.used = new(atomic.Bool)
	if had {
		stored.used = old.used
		if k := (key{old.Source, old.Route}); r.byKey[k] == old {
			delete(r.byKey, k)
		}
	}
	k := key{g.Source, g.Route}
	if cur, ok := r.byKey[k]; !ok || !cur.Until.After(stored.Until) {
		r.byKey[k] = &stored
	}
	r.byID[g.ID] = &stored
	r.publishLocked()
	r.mu.Unlock()

	r.fireExpired(expired)
	kind := ChangeCreated
	if had {
		kind = ChangeExtended
	}
	r.announce(Change{Kind: kind, Grant: g, Remote: true}, zap.Bool("fleet", true))
	return true, nil
}

// sameGrant reports whether a and b say the same thing.
func sameGrant(a, b *Grant) bool {
	return a.Source == b.Source && a.Route == b.Route && a.Until.Equal(b.Until) &&
		slices.Equal(a.Users, b.Users) && slices.Equal(a.Databases, b.Databases) &&
		a.Extensions == b.Extensions && a.Reason == b.Reason && a.CreatedBy == b.CreatedBy
}
