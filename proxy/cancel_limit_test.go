package proxy

import (
	"net/netip"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// guessLog records OnGuesses calls.
type guessLog struct {
	mu    sync.Mutex
	calls []netip.Addr
}

func (g *guessLog) on(a netip.Addr) {
	g.mu.Lock()
	g.calls = append(g.calls, a)
	g.mu.Unlock()
}

func (g *guessLog) all() []netip.Addr {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]netip.Addr(nil), g.calls...)
}

// A rate this small refills one token every ~12 days: within a test only
// the burst counts, so the assertions are about counts, not time.
const glacial = 1e-6

func TestCancelLimiterRateAndGuesses(t *testing.T) {
	t.Parallel()
	var g guessLog
	l, err := NewCancelLimiter(CancelLimits{Rate: glacial, Burst: 3, UnknownPerFailure: 4, MaxSources: 100, OnGuesses: g.on})
	require.NoError(t, err)
	a := netip.MustParseAddr("192.0.2.1")
	b := netip.MustParseAddr("192.0.2.2")

	// The burst, then nothing, whatever the key.
	assert.True(t, l.observe(a, true))
	assert.True(t, l.observe(a, false))
	assert.True(t, l.observe(a, false))
	assert.False(t, l.observe(a, true), "over the rate a known key is dropped too")
	assert.Empty(t, g.all(), "two unknown keys are not yet a failure")
	// Unknown keys over the rate still count: the 4th unknown is reported.
	assert.False(t, l.observe(a, false))
	assert.False(t, l.observe(a, false))
	assert.Equal(t, []netip.Addr{a}, g.all())
	for range 4 {
		l.observe(a, false)
	}
	assert.Equal(t, []netip.Addr{a, a}, g.all(), "every 4 unknown keys, once")

	// Another source has its own budget.
	assert.True(t, l.observe(b, true))
	assert.Equal(t, 2, l.Sources())
}

func TestCancelLimiterIPv6PerSlash64(t *testing.T) {
	t.Parallel()
	var g guessLog
	l, err := NewCancelLimiter(CancelLimits{Rate: glacial, Burst: 2, UnknownPerFailure: 2, MaxSources: 100, OnGuesses: g.on})
	require.NoError(t, err)
	// Rotating addresses inside one /64 does not buy a new budget.
	assert.True(t, l.observe(netip.MustParseAddr("2001:db8::1"), false))
	assert.True(t, l.observe(netip.MustParseAddr("2001:db8::2"), false))
	assert.False(t, l.observe(netip.MustParseAddr("2001:db8::3"), true))
	assert.Equal(t, []netip.Addr{netip.MustParseAddr("2001:db8::2")}, g.all(), "reported with the address that sent the last guess")
	assert.True(t, l.observe(netip.MustParseAddr("2001:db8:0:1::1"), true), "another /64 is another source")
	assert.Equal(t, 2, l.Sources())
}

// The map of sources is bounded; a source pushed out with guesses not yet
// reported has them reported then, so that cycling through more sources
// than the map holds does not erase guesses.
func TestCancelLimiterBoundedAndEvictionReports(t *testing.T) {
	t.Parallel()
	var g guessLog
	l, err := NewCancelLimiter(CancelLimits{Rate: glacial, Burst: 1, UnknownPerFailure: 10, MaxSources: 3, OnGuesses: g.on})
	require.NoError(t, err)
	first := netip.MustParseAddr("192.0.2.1")
	l.observe(first, false) // one unknown key, not yet reported
	for i := 2; i <= 50; i++ {
		l.observe(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), true)
		require.LessOrEqual(t, l.Sources(), 3)
	}
	assert.Equal(t, []netip.Addr{first}, g.all(), "the evicted source's pending guess was reported once; sources without guesses were not")
	// Forgotten, it starts with a fresh budget.
	assert.True(t, l.observe(first, true))
}

func TestNewCancelLimiterChecks(t *testing.T) {
	t.Parallel()
	ok := DefaultCancelLimits()
	_, err := NewCancelLimiter(ok)
	require.NoError(t, err)
	for name, mutate := range map[string]func(*CancelLimits){
		"zero rate":          func(l *CancelLimits) { l.Rate = 0 },
		"negative rate":      func(l *CancelLimits) { l.Rate = -1 },
		"zero burst":         func(l *CancelLimits) { l.Burst = 0 },
		"negative per-fail":  func(l *CancelLimits) { l.UnknownPerFailure = -1 },
		"no room for source": func(l *CancelLimits) { l.MaxSources = 0 },
	} {
		l := ok
		mutate(&l)
		_, err := NewCancelLimiter(l)
		assert.Error(t, err, name)
	}
	// 0 unknown keys per failure: never reported.
	var g guessLog
	l, err := NewCancelLimiter(CancelLimits{Rate: glacial, Burst: 1, UnknownPerFailure: 0, MaxSources: 1, OnGuesses: g.on})
	require.NoError(t, err)
	for i := range 20 {
		l.observe(netip.AddrFrom4([4]byte{192, 0, 2, byte(i % 2)}), false)
	}
	assert.Empty(t, g.all())
}
