package fleet

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/pgwarden/pgwarden/internal/redistest"
)

// eventually is the generous deadline for "this happens": the tests assert
// outcomes, not latencies.
const eventually = 20 * time.Second

// newStore builds a Store named instance on srv under prefix "t".
func newStore(t testing.TB, srv *redistest.Server, instance string, mods ...func(*Config)) (*Store, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	cfg := Config{URL: srv.URL(), Prefix: "t", Instance: instance, Logger: zap.New(core),
		Timeout: 2 * time.Second, RetryInterval: 100 * time.Millisecond}
	for _, m := range mods {
		m(&cfg)
	}
	s, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s, logs
}

// rawClient is a plain client on srv for inspecting keys.
func rawClient(t testing.TB, srv *redistest.Server) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1})
	t.Cleanup(func() { c.Close() })
	return c
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), eventually)
	t.Cleanup(cancel)
	return ctx
}

// recorder collects what Watch delivers; it is read through its methods.
type recorder struct {
	mu      sync.Mutex
	events  []Event
	resyncs []resyncCall
	changed chan struct{}
}

type resyncCall struct {
	snap   Snapshot
	pushed PushResult
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{}, 1)} }

func (r *recorder) onEvent(e Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
	r.poke()
}

func (r *recorder) onResync(s Snapshot, p PushResult) {
	r.mu.Lock()
	r.resyncs = append(r.resyncs, resyncCall{s, p})
	r.mu.Unlock()
	r.poke()
}

func (r *recorder) poke() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *recorder) resyncCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.resyncs)
}

func (r *recorder) lastResync() resyncCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.resyncs[len(r.resyncs)-1]
}

// waitFor waits until cond holds over the recorder's state.
func (r *recorder) waitFor(t testing.TB, what string, cond func(events []Event, resyncs []resyncCall) bool) {
	t.Helper()
	deadline := time.After(eventually)
	for {
		r.mu.Lock()
		ok := cond(r.events, r.resyncs)
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-r.changed:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// watch runs s.Watch until the test ends.
func watch(t testing.TB, s *Store, rec *recorder, local func() ([]Ban, []Record)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Watch(ctx, WatchConfig{OnEvent: rec.onEvent, OnResync: rec.onResync, Local: local,
			Block: 200 * time.Millisecond})
	}()
	t.Cleanup(func() { cancel(); <-done })
	// The first resync means the watch is reading the stream.
	rec.waitFor(t, "the first resync", func(_ []Event, rs []resyncCall) bool { return len(rs) > 0 })
}

func hasEvent(events []Event, typ EventType, match func(Event) bool) bool {
	for _, e := range events {
		if e.Type == typ && match(e) {
			return true
		}
	}
	return false
}
