package grants

import (
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/internal/logtext"
)

// sweepLoop runs Sweep every SweepInterval until Close.
func (r *Registry) sweepLoop() {
	defer close(r.done)
	t := time.NewTicker(r.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			r.Sweep()
		}
	}
}

// Sweep removes the grants whose Until has passed, writing an "expired"
// audit line and calling OnExpire for each. The background sweeper calls
// it every SweepInterval; tests with a fake clock call it directly.
func (r *Registry) Sweep() {
	r.mu.Lock()
	expired := r.expireLocked(r.cfg.Now())
	r.mu.Unlock()
	r.fireExpired(expired)
}

// expireLocked removes expired grants from memory and the store and
// returns them, for fireExpired once mu is released.
func (r *Registry) expireLocked(now time.Time) []Grant {
	var expired []Grant
	for id, g := range r.byID {
		if !g.Active(now) {
			expired = append(expired, *g)
			delete(r.byID, id)
			delete(r.byKey, key{g.Source, g.Route})
		}
	}
	if len(expired) == 0 {
		return nil
	}
	r.publishLocked()
	if r.cfg.Store != nil {
		for _, g := range expired {
			// An expired grant left in the file is dropped at the next
			// start anyway, so this is worth a log line, not a failure.
			if err := r.cfg.Store.Delete(g.ID); err != nil {
				r.log.Error("grant state: deleting an expired grant failed", zap.String("grant_id", g.ID), zap.Error(err))
			}
		}
	}
	slices.SortFunc(expired, func(a, b Grant) int {
		if c := a.Until.Compare(b.Until); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return expired
}

// fireExpired announces the expiries (audit line, OnExpire, OnChange);
// never under mu.
func (r *Registry) fireExpired(expired []Grant) {
	for _, g := range expired {
		r.announce(Change{Kind: ChangeExpired, Grant: g})
	}
}

// audit writes one audit line for event about g. Every line carries what
// an auditor asks first: which source, until when, why, who, and on what
// evidence (the matched claims).
func (r *Registry) audit(event string, g Grant, extra ...zap.Field) {
	fields := []zap.Field{
		zap.String("audit", "grant"),
		zap.String("grant_id", g.ID),
		zap.String("source", SourceString(g.Source)),
		zap.String("route", g.Route),
		zap.Time("until", g.Until),
		zap.String("reason", logtext.Escape(g.Reason)),
		zap.String("created_by", logtext.Escape(g.CreatedBy)),
		zap.String("via", g.Via),
		zap.String("rule", g.Rule),
		zap.Strings("users", g.Users),
		zap.Strings("databases", g.Databases),
	}
	if len(g.Claims) > 0 {
		fields = append(fields, zap.Any("claims", g.Claims))
	}
	r.log.Info(event, append(fields, extra...)...)
}
