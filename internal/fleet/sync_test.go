package fleet

import (
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/redistest"
)

// TestRecordsPropagate: a record put on A reaches B with its data intact;
// replacing and revoking propagate too.
func TestRecordsPropagate(t *testing.T) {
	srv := redistest.Start(t)
	a, _ := newStore(t, srv, "A")
	b, _ := newStore(t, srv, "B")
	recB := newRecorder()
	watch(t, b, recB, nil)
	ctx := ctxT(t)
	data := json.RawMessage(`{"source":"203.0.113.9","n":12345678901234567890,"list":[],"who":"repo/x"}`)
	until := time.Now().Add(time.Hour).Truncate(time.Millisecond)
	res, err := a.PutRecord(ctx, Record{Kind: "grant", ID: "g-1", Until: until, Data: data})
	require.NoError(t, err)
	require.Equal(t, RecordAdded, res)
	recB.waitFor(t, "B to see the grant", func(ev []Event, _ []resyncCall) bool {
		return hasEvent(ev, EventPut, func(e Event) bool { return e.Ref == RecordRef{"grant", "g-1"} })
	})
	recB.mu.Lock()
	got := recB.events[0].Record
	recB.mu.Unlock()
	require.JSONEq(t, string(data), string(got.Data), "data is carried verbatim")
	require.Contains(t, string(got.Data), "12345678901234567890", "big numbers are not re-encoded")
	require.True(t, got.Until.Equal(until))
	require.Equal(t, "A", got.Origin)

	res, err = a.PutRecord(ctx, Record{Kind: "grant", ID: "g-1", Until: until.Add(time.Hour), Data: data})
	require.NoError(t, err)
	require.Equal(t, RecordReplaced, res)
	had, err := a.RevokeRecordWith(ctx, RecordRef{"grant", "g-1"}, json.RawMessage(`{"keep_sessions":true}`))
	require.NoError(t, err)
	require.True(t, had)
	recB.waitFor(t, "B to see the revoke", func(ev []Event, _ []resyncCall) bool {
		return hasEvent(ev, EventRevoke, func(e Event) bool {
			return e.Ref == RecordRef{"grant", "g-1"} && string(e.Record.Data) == `{"keep_sessions":true}`
		})
	})
	_, err = a.RevokeRecordWith(ctx, RecordRef{"grant", "g-1"}, json.RawMessage(`{not json`))
	require.ErrorIs(t, err, ErrInvalid)
	snap, err := b.Snapshot(ctx)
	require.NoError(t, err)
	require.Empty(t, snap.Records)
}

// TestPushAfterOutage: what a gateway made while Redis was away is stored
// unless the fleet lifted it afterwards (stale), holds it at least as long
// (kept), or it has expired.
func TestPushAfterOutage(t *testing.T) {
	srv := redistest.Start(t)
	a, _ := newStore(t, srv, "A", func(c *Config) { c.HistoryTTL = time.Hour })
	b, _ := newStore(t, srv, "B")
	recA := newRecorder()
	watch(t, a, recA, nil)
	ctx := ctxT(t)
	before := time.Now().Add(-time.Minute)

	lifted, kept := pfx("192.0.2.10/32"), pfx("192.0.2.11/32")
	_, err := a.Ban(ctx, BanRequest{Key: lifted, Duration: time.Hour})
	require.NoError(t, err)
	_, err = a.Unban(ctx, lifted) // the fleet lifts it now, after "before"
	require.NoError(t, err)
	long, err := a.Ban(ctx, BanRequest{Key: kept, Duration: 2 * time.Hour})
	require.NoError(t, err)
	_, err = a.PutRecord(ctx, Record{Kind: "grant", ID: "revoked", Until: time.Now().Add(time.Hour), Data: json.RawMessage(`1`)})
	require.NoError(t, err)
	_, err = a.RevokeRecord(ctx, RecordRef{"grant", "revoked"})
	require.NoError(t, err)

	res, err := b.Push(ctx, []Ban{
		{Key: lifted, Until: time.Now().Add(time.Hour), At: before, Bans: 1},                            // stale
		{Key: kept, Until: time.Now().Add(time.Hour), At: before, Bans: 1},                              // kept: fleet's is longer
		{Key: pfx("192.0.2.12/32"), Until: time.Now().Add(-time.Second), At: before},                    // expired
		{Key: pfx("192.0.2.13/32"), Until: time.Now().Add(time.Hour), At: before, Bans: 4, Failures: 5}, // stored
	}, []Record{
		{Kind: "grant", ID: "revoked", Until: time.Now().Add(time.Hour), At: before, Data: json.RawMessage(`1`)}, // stale
		{Kind: "grant", ID: "new", Until: time.Now().Add(time.Hour), At: before, Data: json.RawMessage(`2`)},     // stored
	})
	require.NoError(t, err)
	require.Equal(t, 2, res.Stored)
	require.Equal(t, []netip.Prefix{lifted}, res.StaleBans)
	require.Equal(t, []RecordRef{{"grant", "revoked"}}, res.StaleRecords)

	// Stored items are announced like new ones.
	recA.waitFor(t, "A to see the pushed ban and grant", func(ev []Event, _ []resyncCall) bool {
		return hasEvent(ev, EventBan, func(e Event) bool { return e.Key == pfx("192.0.2.13/32") && e.Ban.Bans == 4 }) &&
			hasEvent(ev, EventPut, func(e Event) bool { return e.Ref == RecordRef{"grant", "new"} })
	})
	snap, err := a.Snapshot(ctx)
	require.NoError(t, err)
	require.Len(t, snap.Bans, 2)
	for _, bn := range snap.Bans {
		if bn.Key == kept {
			require.Equal(t, long.Until, bn.Until, "the longer fleet ban is kept")
		}
	}
	n, err := a.BanHistory(ctx, pfx("192.0.2.13/32"))
	require.NoError(t, err)
	require.Equal(t, 4, n, "the fleet history is at least the local count")

	// A ban made after the unban is not stale.
	res, err = b.Push(ctx, []Ban{{Key: lifted, Until: time.Now().Add(time.Hour), At: time.Now().Add(time.Second)}}, nil)
	require.NoError(t, err)
	require.Equal(t, 1, res.Stored)
	require.Empty(t, res.StaleBans)
}
