package proxy

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// Two outcomes to sample.
const x, y = OutcomeTLSRequired, OutcomeBadStartup

func summaries(logs *observer.ObservedLogs) map[string]map[string]any {
	out := map[string]map[string]any{}
	for _, e := range logs.FilterMessage("connections not logged").AllUntimed() {
		f := e.ContextMap()
		out[f["source"].(string)+" "+f["outcome"].(string)] = f
	}
	return out
}

func TestLogSamplerPerKeyAndBounds(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.InfoLevel)
	ls := newLogSampler(LogSampling{First: 2, Window: time.Hour, MaxLines: 5, MaxKeys: 3}, zap.New(core), "r")
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	full := 0
	for range 10 {
		if ls.sample(a, x) {
			full++
		}
	}
	assert.Equal(t, 2, full, "first lines per source and outcome")
	assert.True(t, ls.sample(a, y), "another outcome has its own budget")
	assert.True(t, ls.sample(b, x))
	// Four keys tracked would exceed MaxKeys 3: this pair joins "other".
	assert.True(t, ls.sample(netip.MustParseAddr("192.0.2.3"), x))
	// MaxLines 5 is now reached: every key is held back.
	assert.False(t, ls.sample(b, x))
	assert.False(t, ls.sample(netip.MustParseAddr("192.0.2.4"), x))
	ls.mu.Lock()
	assert.LessOrEqual(t, len(ls.counts), 4, "MaxKeys plus one shared key per outcome")
	ls.mu.Unlock()

	ls.stop()
	got := summaries(logs)
	require.Len(t, got, 3, "%v", got)
	assert.EqualValues(t, 8, got["192.0.2.1 tls_required"]["suppressed"])
	assert.EqualValues(t, 1, got["192.0.2.2 tls_required"]["suppressed"])
	assert.EqualValues(t, 1, got["other tls_required"]["suppressed"])
	assert.True(t, ls.sample(a, x), "after stop every line is written")
}

func TestLogSamplerIPv6PerSlash64(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.InfoLevel)
	ls := newLogSampler(LogSampling{First: 1, Window: time.Hour, MaxLines: 100, MaxKeys: 100}, zap.New(core), "r")
	assert.True(t, ls.sample(netip.MustParseAddr("2001:db8::1"), x))
	assert.False(t, ls.sample(netip.MustParseAddr("2001:db8::2"), x), "same /64, same budget")
	ls.stop()
	assert.EqualValues(t, 1, summaries(logs)["2001:db8::/64 tls_required"]["suppressed"])
}

// The window ends by itself: a source whose flood stopped still gets its
// summary, and the next window starts afresh.
func TestLogSamplerWindowEnds(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.InfoLevel)
	ls := newLogSampler(LogSampling{First: 1, Window: 50 * time.Millisecond, MaxLines: 100, MaxKeys: 100}, zap.New(core), "r")
	t.Cleanup(ls.stop)
	a := netip.MustParseAddr("192.0.2.1")
	assert.True(t, ls.sample(a, x))
	assert.False(t, ls.sample(a, x))
	require.Eventually(t, func() bool { return logs.FilterMessage("connections not logged").Len() == 1 },
		10*time.Second, 10*time.Millisecond)
	assert.True(t, ls.sample(a, x), "a new window")
}
