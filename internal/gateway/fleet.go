package gateway

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/internal/fielderr"
	"github.com/pgwarden/pgwarden/internal/fleet"
)

// The gateway's part in a fleet (--redis): the jail counts, bans and
// escalates through the shared store (acl.Shared, implemented here on
// fleet.Store), and a watcher applies what the other gateways publish.
//
// The watcher calls OnEvent for each change in stream order from one
// goroutine, so OnEvent must be quick: a ban or unban from the fleet
// updates the jail's memory at once (it is enforced at accept from then
// on, and the source's logins in flight end) while the state file is
// written by the jail's sweeper goroutine, every key changed since the
// last write in one transaction (acl.Jail.ApplyBan, persistLater): one
// fsync per burst of events rather than one per event. Grants are few and
// change rarely (a CI job's request, an operator's command); a grant from
// the fleet is written to the state file as it is applied
// (grants.Registry.Apply), like a local one.

// fleetShared is acl.Shared on a fleet.Store. Unbans that could not be
// published are replayed at the next resynchronisation, and ban events
// older than this gateway's own unban of their key are stale (lifts).
type fleetShared struct {
	store  *fleet.Store
	log    *zap.Logger
	unbans *lifts[netip.Prefix, struct{}]
}

var _ acl.Shared = (*fleetShared)(nil)

func newFleetShared(store *fleet.Store, log *zap.Logger) *fleetShared {
	return &fleetShared{store: store, log: log, unbans: newLifts[netip.Prefix, struct{}]()}
}

func (f *fleetShared) RecordFailure(ctx context.Context, key netip.Prefix, window time.Duration) (int, int, error) {
	r, err := f.store.RecordFailure(ctx, key, window)
	return r.Count, r.Bans, err
}

func (f *fleetShared) FailureCounts(ctx context.Context, window time.Duration, keys ...netip.Prefix) ([]int, error) {
	return f.store.FailureCounts(ctx, window, keys...)
}

func (f *fleetShared) Ban(ctx context.Context, key netip.Prefix, d time.Duration, failures int, manual bool, clear []netip.Prefix) (acl.SharedBan, error) {
	// A ban made after an unban supersedes it, published or not.
	f.unbans.renewed(key)
	b, err := f.store.Ban(ctx, fleet.BanRequest{Key: key, Duration: d, Failures: failures, Manual: manual, Clear: clear})
	if err != nil {
		return acl.SharedBan{}, err
	}
	return sharedBan(b), nil
}

func (f *fleetShared) Unban(ctx context.Context, key netip.Prefix) (bool, error) {
	f.unbans.lifted(key)
	had, err := f.store.Unban(ctx, key)
	if err != nil && !f.unbans.pend(key, struct{}{}) {
		f.log.Warn("too many unbans waiting for redis; this one is not replayed", zap.Stringer("source", key))
	}
	return had, err
}

func (f *fleetShared) BanHistory(ctx context.Context, key netip.Prefix) (int, error) {
	return f.store.BanHistory(ctx, key)
}

// staleBan reports a ban made before this gateway lifted its key.
func (f *fleetShared) staleBan(b fleet.Ban) bool { return f.unbans.stale(b.Key, b.At) }

// replayUnbans publishes the unbans made while Redis was away.
func (f *fleetShared) replayUnbans(ctx context.Context) {
	f.unbans.replay(func(k netip.Prefix, _ struct{}) error {
		_, err := f.store.Unban(ctx, k)
		return err
	})
}

func sharedBan(b fleet.Ban) acl.SharedBan {
	return acl.SharedBan{Key: b.Key, Until: b.Until, Failures: b.Failures, Bans: b.Bans, Manual: b.Manual, At: b.At}
}

// watchFleet follows the other gateways' changes until ctx ends.
func (g *Gateway) watchFleet(ctx context.Context) {
	_ = g.fleet.Watch(ctx, fleet.WatchConfig{
		OnEvent: g.onFleetEvent,
		Local: func() ([]fleet.Ban, []fleet.Record) {
			// Unbans first, so the bans pushed and the snapshot that
			// follows already reflect them.
			g.shared.replayUnbans(ctx)
			var bans []fleet.Ban
			for _, b := range g.jail.SharedBans() {
				bans = append(bans, fleet.Ban{Key: b.Key, Until: b.Until, Failures: b.Failures, Bans: b.Bans, Manual: b.Manual, At: b.At})
			}
			return bans, g.grantSync.local(ctx)
		},
		OnResync: g.onFleetResync,
	})
}

// onFleetEvent applies one change another gateway published.
func (g *Gateway) onFleetEvent(ev fleet.Event) {
	switch ev.Type {
	case fleet.EventBan:
		if g.shared.staleBan(ev.Ban) {
			return // our unban of it follows in the stream
		}
		g.jail.ApplyBan(sharedBan(ev.Ban))
	case fleet.EventUnban:
		g.jail.ApplyUnban(ev.Key)
	case fleet.EventPut:
		g.grantSync.apply(ev.Record)
	case fleet.EventRevoke:
		g.grantSync.revoke(ev.Ref, ev.Record.Data)
	}
}

// onFleetResync adopts the fleet's state and drops what it lifted while
// this gateway was away.
func (g *Gateway) onFleetResync(snap fleet.Snapshot, pushed fleet.PushResult) {
	for _, k := range pushed.StaleBans {
		g.jail.ApplyUnban(k)
	}
	for _, b := range snap.Bans {
		g.jail.ApplyBan(sharedBan(b))
	}
	for _, ref := range pushed.StaleRecords {
		g.grantSync.revoke(ref, nil)
	}
	for _, r := range snap.Records {
		g.grantSync.apply(r)
	}
}

// libraryConfigError turns a library's configuration error, whose lines
// read "<sentinel>: <Name> ...", into the gateway's field errors, one per
// line, each naming its field (its flag, on the command line). A line
// naming no known field is kept as it is.
func libraryConfigError(err, sentinel error, fields map[string]fielderr.Field) error {
	var out []error
	for _, line := range strings.Split(err.Error(), "\n") {
		rest := strings.TrimPrefix(line, sentinel.Error()+": ")
		var e error = errors.New(rest)
		for name, f := range fields {
			if after, ok := strings.CutPrefix(rest, name); ok && (after == "" || after[0] == ' ' || after[0] == ':') {
				e = errorf("%s%s", f, after)
				break
			}
		}
		out = append(out, e)
	}
	return errors.Join(out...)
}
