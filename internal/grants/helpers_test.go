package grants

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/pgwarden/pgwarden/internal/fakeclock"
)

func newFakeClock() *fakeclock.Clock {
	return fakeclock.New(time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC))
}

// recordingCallbacks records OnExpire and OnRevoke calls.
type recordingCallbacks struct {
	mu      sync.Mutex
	expired []Grant
	revoked []Grant
	keep    []bool
}

func (rc *recordingCallbacks) onExpire(g Grant) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.expired = append(rc.expired, g)
}

func (rc *recordingCallbacks) onRevoke(g Grant, keep bool) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.revoked = append(rc.revoked, g)
	rc.keep = append(rc.keep, keep)
}

func (rc *recordingCallbacks) Expired() []Grant {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]Grant(nil), rc.expired...)
}

func (rc *recordingCallbacks) Revoked() ([]Grant, []bool) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]Grant(nil), rc.revoked...), append([]bool(nil), rc.keep...)
}

// testRegistry is a Registry on a fake clock whose audit lines are
// observed. The background sweeper effectively never runs (tests call
// Sweep).
type testRegistry struct {
	*Registry
	clock *fakeclock.Clock
	logs  *observer.ObservedLogs
	cb    *recordingCallbacks
}

func newTestRegistry(t testing.TB, mutate ...func(*Config)) *testRegistry {
	t.Helper()
	clock := newFakeClock()
	core, logs := observer.New(zapcore.DebugLevel)
	cb := &recordingCallbacks{}
	cfg := Config{
		MaxTTL:        12 * time.Hour,
		Now:           clock.Now,
		Logger:        zap.New(core),
		SweepInterval: time.Hour,
		OnExpire:      cb.onExpire,
		OnRevoke:      cb.onRevoke,
	}
	for _, m := range mutate {
		m(&cfg)
	}
	r, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close() })
	return &testRegistry{Registry: r, clock: clock, logs: logs, cb: cb}
}

// auditEvents lists the messages of the audit lines written so far.
func (tr *testRegistry) auditEvents() []string {
	var out []string
	for _, e := range tr.logs.All() {
		if e.ContextMap()["audit"] == "grant" {
			out = append(out, e.Message)
		}
	}
	return out
}

func adminReq(source string, ttl time.Duration) AddRequest {
	p, err := ParseSource(source)
	if err != nil {
		panic(err)
	}
	return AddRequest{Source: p, TTL: ttl, Reason: "maintenance window", CreatedBy: ViaAdmin, Via: ViaAdmin}
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }
