package crowdsec

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// fakeLAPI serves /v1/decisions/stream like CrowdSec's LAPI: the startup
// body for startup=true, then the queued deltas (an empty delta when none
// is queued). It checks X-Api-Key and records every request.
type fakeLAPI struct {
	*httptest.Server
	mu       sync.Mutex
	key      string
	startup  string
	deltas   []string
	status   int // when non-zero, every request gets it
	hang     bool
	requests []fakeRequest
}

type fakeRequest struct {
	startup, scopes, dedup, key, userAgent string
}

func newFakeLAPI(t testing.TB, key string) *fakeLAPI {
	t.Helper()
	f := &fakeLAPI{key: key, startup: `{"new": [], "deleted": []}`}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeLAPI) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	q := r.URL.Query()
	f.requests = append(f.requests, fakeRequest{q.Get("startup"), q.Get("scopes"), q.Get("dedup"),
		r.Header.Get("X-Api-Key"), r.Header.Get("User-Agent")})
	status, hang := f.status, f.hang
	var body string
	switch {
	case r.URL.Path != "/v1/decisions/stream" || r.Method != http.MethodGet:
		status = http.StatusNotFound
	case r.Header.Get("X-Api-Key") != f.key:
		status = http.StatusForbidden // what the LAPI's API-key middleware answers
	case r.URL.Query().Get("startup") == "true":
		body = f.startup
	case len(f.deltas) > 0:
		body, f.deltas = f.deltas[0], f.deltas[1:]
	default:
		body = `{"new": null, "deleted": null}`
	}
	f.mu.Unlock()
	if hang {
		<-r.Context().Done()
		return
	}
	if status != 0 {
		w.WriteHeader(status)
		fmt.Fprint(w, `{"message":"access forbidden"}`)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprint(w, body)
}

func (f *fakeLAPI) set(fn func(f *fakeLAPI)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeLAPI) reqs() []fakeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeRequest(nil), f.requests...)
}

// d renders one decision as the LAPI does.
func d(id int64, typ, scope, value, duration string) map[string]any {
	return map[string]any{"id": id, "origin": "crowdsec", "type": typ, "scope": scope, "value": value,
		"duration": duration, "scenario": "crowdsecurity/pgwarden-bf", "uuid": fmt.Sprint("u", id)}
}

// body renders a stream answer.
func body(t testing.TB, added, deleted []map[string]any) string {
	t.Helper()
	b, err := json.Marshal(map[string]any{"new": added, "deleted": deleted})
	require.NoError(t, err)
	return string(b)
}

// clock is a settable fake clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// keyFile writes key to a temporary file.
func keyFile(t testing.TB, key string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "key")
	require.NoError(t, os.WriteFile(p, []byte(key), 0o600))
	return p
}

func newBouncer(t testing.TB, f *fakeLAPI, key string, mods ...func(*Config)) (*Bouncer, *clock, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	clk := &clock{now: time.Date(2026, 8, 1, 10, 0, 0, 0, time.UTC)}
	cfg := Config{URL: f.URL + "/", KeyFile: keyFile(t, key), Logger: zap.New(core), Now: clk.Now, Timeout: 5 * time.Second}
	for _, m := range mods {
		m(&cfg)
	}
	b, err := New(cfg)
	require.NoError(t, err)
	return b, clk, logs
}
