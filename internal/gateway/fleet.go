package gateway

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
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
// fsync per burst of events rather than one per event.

// maxPendingUnbans bounds the unbans remembered while Redis is down; past
// it, further ones are not replayed (each is logged), and reach the other
// gateways only through their own expiry.
const maxPendingUnbans = 10_000

// fleetShared is acl.Shared on a fleet.Store, plus the unbans that could
// not be published, replayed before this gateway's state is pushed at the
// next resynchronisation. Without the replay, the fleet would hand a ban
// lifted here during an outage back at the resync (it never heard of the
// unban), and the jail would adopt it again.
//
// It also remembers when this gateway last lifted each key: a ban event
// made before that (another gateway pushing, after an outage, a ban this
// one lifted meanwhile) can reach the stream between the push and the
// replayed unban, and is stale.
type fleetShared struct {
	store *fleet.Store
	log   *zap.Logger
	now   func() time.Time

	mu      sync.Mutex
	pending map[netip.Prefix]struct{}
	lifted  map[netip.Prefix]time.Time
}

var _ acl.Shared = (*fleetShared)(nil)

func newFleetShared(store *fleet.Store, log *zap.Logger) *fleetShared {
	return &fleetShared{store: store, log: log, now: time.Now,
		pending: map[netip.Prefix]struct{}{}, lifted: map[netip.Prefix]time.Time{}}
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
	f.mu.Lock()
	delete(f.pending, key)
	f.mu.Unlock()
	b, err := f.store.Ban(ctx, fleet.BanRequest{Key: key, Duration: d, Failures: failures, Manual: manual, Clear: clear})
	if err != nil {
		return acl.SharedBan{}, err
	}
	return sharedBan(b), nil
}

func (f *fleetShared) Unban(ctx context.Context, key netip.Prefix) (bool, error) {
	f.noteLifted(key)
	had, err := f.store.Unban(ctx, key)
	if err != nil {
		f.mu.Lock()
		if len(f.pending) < maxPendingUnbans {
			f.pending[key] = struct{}{}
		} else {
			f.log.Warn("too many unbans waiting for redis; this one is not replayed", zap.Stringer("source", key))
		}
		f.mu.Unlock()
	}
	return had, err
}

func (f *fleetShared) BanHistory(ctx context.Context, key netip.Prefix) (int, error) {
	return f.store.BanHistory(ctx, key)
}

// liftedMemory is how long noteLifted remembers an unban: longer than any
// event takes to arrive after a resynchronisation.
const liftedMemory = 10 * time.Minute

// noteLifted records that this gateway lifts key now.
func (f *fleetShared) noteLifted(key netip.Prefix) {
	now := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.lifted) >= maxPendingUnbans {
		for k, at := range f.lifted {
			if now.Sub(at) > liftedMemory {
				delete(f.lifted, k)
			}
		}
		if len(f.lifted) >= maxPendingUnbans {
			clear(f.lifted) // only the race above is lost
		}
	}
	f.lifted[key] = now
}

// staleBan reports a ban made before this gateway lifted its key.
func (f *fleetShared) staleBan(b fleet.Ban) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	at, ok := f.lifted[b.Key]
	return ok && !b.At.After(at)
}

// replayUnbans publishes the unbans made while Redis was away; those that
// fail again stay pending.
func (f *fleetShared) replayUnbans(ctx context.Context) {
	f.mu.Lock()
	keys := make([]netip.Prefix, 0, len(f.pending))
	for k := range f.pending {
		keys = append(keys, k)
	}
	f.mu.Unlock()
	for _, k := range keys {
		if _, err := f.store.Unban(ctx, k); err != nil {
			return
		}
		f.mu.Lock()
		delete(f.pending, k)
		f.mu.Unlock()
	}
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
			return bans, g.localRecords()
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
		g.applyRecord(ev.Record)
	case fleet.EventRevoke:
		g.revokeRecord(ev.Ref)
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
		g.revokeRecord(ref)
	}
	for _, r := range snap.Records {
		g.applyRecord(r)
	}
}

// Records: grants travel as fleet records of kind "grant" once the
// gateway serves grants. Until then these hooks carry nothing: a record
// from another gateway is ignored, and this gateway has none to push.

// localRecords is this gateway's records, pushed at a resynchronisation.
func (g *Gateway) localRecords() []fleet.Record { return nil }

// applyRecord applies a record another gateway put.
func (g *Gateway) applyRecord(fleet.Record) {}

// revokeRecord applies a record's revocation.
func (g *Gateway) revokeRecord(fleet.RecordRef) {}

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
