package acl

import (
	"fmt"
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

// fakeTimers records the functions a RefusalLog schedules, to run them
// when the test says so instead of after a minute.
type fakeTimers struct {
	mu      sync.Mutex
	pending []func()
	waits   []time.Duration
}

func (f *fakeTimers) afterFunc(d time.Duration, fn func()) func() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := len(f.pending)
	f.pending = append(f.pending, fn)
	f.waits = append(f.waits, d)
	return func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		stopped := f.pending[i] != nil
		f.pending[i] = nil
		return stopped
	}
}

// fire runs the timers still pending; it reports how many there were.
func (f *fakeTimers) fire() int {
	f.mu.Lock()
	var run []func()
	for i, fn := range f.pending {
		if fn != nil {
			run = append(run, fn)
			f.pending[i] = nil
		}
	}
	f.mu.Unlock()
	for _, fn := range run {
		fn()
	}
	return len(run)
}

func newTestRefusalLog(t *testing.T, maxSources int) (*RefusalLog, *fakeclock.Clock, *fakeTimers, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	clock := fakeclock.New(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	timers := &fakeTimers{}
	r := NewRefusalLog(RefusalLogConfig{MaxSources: maxSources, Top: 2, Now: clock.Now, afterFunc: timers.afterFunc}, zap.New(core))
	return r, clock, timers, logs
}

// summary is one line's fields in plain Go values.
func summary(t *testing.T, e observer.LoggedEntry) map[string]any {
	t.Helper()
	require.Equal(t, "connections refused at accept", e.Message)
	require.Equal(t, zapcore.InfoLevel, e.Level)
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range e.Context {
		f.AddTo(enc)
	}
	return enc.Fields
}

func TestRefusalLogFirstAtOnceThenOncePerInterval(t *testing.T) {
	r, clock, timers, logs := newTestRefusalLog(t, 0)
	a, b, c := netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("198.51.100.2"), netip.MustParseAddr("::ffff:192.0.2.9")

	// The first refusal after a quiet spell is written at once.
	r.Note("app", RejectNotAllowed, a)
	require.Equal(t, 1, logs.Len())
	first := summary(t, logs.All()[0])
	require.EqualValues(t, 1, first["refused"])
	require.Equal(t, []any{map[string]any{"route": "app", "reason": "not_allowed", "count": uint64(1)}}, first["by_reason"])
	require.Equal(t, []any{map[string]any{"source": "203.0.113.7", "count": uint64(1)}}, first["top_sources"])

	// More within the minute are held, with one timer for the rest of it.
	clock.Advance(10 * time.Second)
	for i := 0; i < 3; i++ {
		r.Note("app", RejectNotAllowed, b)
	}
	r.Note("app", RejectBanned, c)
	r.Note("reports", RejectNotAllowed, a)
	r.Note("app", RejectNotAllowed, c)
	require.Equal(t, 1, logs.Len(), "a second line within the interval")
	require.Equal(t, []time.Duration{50 * time.Second}, timers.waits)

	clock.Advance(50 * time.Second)
	require.Equal(t, 1, timers.fire())
	require.Equal(t, 2, logs.Len())
	second := summary(t, logs.All()[1])
	require.EqualValues(t, 6, second["refused"])
	require.Equal(t, []any{
		map[string]any{"route": "app", "reason": "not_allowed", "count": uint64(4)},
		map[string]any{"route": "app", "reason": "banned", "count": uint64(1)},
		map[string]any{"route": "reports", "reason": "not_allowed", "count": uint64(1)},
	}, second["by_reason"])
	// The two most refused sources (Top 2), the IPv4-mapped one unmapped.
	require.Equal(t, []any{
		map[string]any{"source": "198.51.100.2", "count": uint64(3)},
		map[string]any{"source": "192.0.2.9", "count": uint64(2)},
	}, second["top_sources"])
	require.EqualValues(t, 3, second["sources"])

	// Just after that line, the next refusal waits for the interval again.
	clock.Advance(time.Second)
	r.Note("app", RejectNotAllowed, a)
	require.Equal(t, 2, logs.Len())
	require.Equal(t, 59*time.Second, timers.waits[len(timers.waits)-1])

	// Close writes what is pending and stops counting.
	r.Close()
	require.Equal(t, 3, logs.Len())
	require.EqualValues(t, 1, summary(t, logs.All()[2])["refused"])
	require.Zero(t, timers.fire(), "Close stopped the timer")
	r.Note("app", RejectNotAllowed, a)
	r.Flush()
	require.Equal(t, 3, logs.Len())
}

// TestRefusalLogBounded: however many sources are refused, at most
// MaxSources are counted apart; the rest are counted together.
func TestRefusalLogBounded(t *testing.T) {
	r, _, timers, logs := newTestRefusalLog(t, 3)
	r.Note("app", RejectNotAllowed, netip.MustParseAddr("192.0.2.1")) // written at once
	for i := 0; i < 1000; i++ {
		r.Note("app", RejectNotAllowed, netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", i)))
	}
	r.Note("app", RejectNotAllowed, netip.MustParseAddr("2001:db8::1")) // counted apart: one of the first 3
	r.mu.Lock()
	require.Len(t, r.sources, 3)
	r.mu.Unlock()
	require.Equal(t, 1, timers.fire())
	l := summary(t, logs.All()[1])
	require.EqualValues(t, 1001, l["refused"])
	require.EqualValues(t, 3, l["sources"])
	require.EqualValues(t, 997, l["refused_other_sources"])
	require.Equal(t, map[string]any{"source": "2001:db8::1", "count": uint64(2)}, l["top_sources"].([]any)[0])
}
