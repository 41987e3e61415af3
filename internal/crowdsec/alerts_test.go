package crowdsec

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// watcherLAPI serves the machine side of the LAPI like CrowdSec 1.4.6:
// POST /v1/watchers/login hands out numbered tokens, POST /v1/alerts and
// DELETE /v1/decisions need the current one. Statuses queued in answers
// are served first, one per alerts/decisions request.
type watcherLAPI struct {
	*httptest.Server
	mu       sync.Mutex
	login    string
	password string
	logins   int
	token    string
	answers  []int
	batches  [][]map[string]any // each POST /v1/alerts body
	auths    []string           // Authorization of each alerts/decisions request
	deletes  []string           // each DELETE's raw query
	requests []string           // method path, in order
	block    chan struct{}      // when set, alerts requests wait for it
}

func newWatcherLAPI(t testing.TB) *watcherLAPI {
	t.Helper()
	w := &watcherLAPI{login: "pgwarden", password: "secret pw"}
	w.Server = httptest.NewServer(http.HandlerFunc(w.serve))
	t.Cleanup(w.Close)
	return w
}

func (w *watcherLAPI) serve(rw http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	w.mu.Lock()
	block := w.block
	w.requests = append(w.requests, r.Method+" "+r.URL.Path)
	if r.URL.Path == "/v1/watchers/login" {
		var in struct {
			MachineID string   `json:"machine_id"`
			Password  string   `json:"password"`
			Scenarios []string `json:"scenarios"`
		}
		_ = json.Unmarshal(body, &in)
		if in.MachineID != w.login || in.Password != w.password {
			w.mu.Unlock()
			http.Error(rw, `{"code":401,"message":"incorrect Username or Password"}`, http.StatusUnauthorized)
			return
		}
		w.logins++
		w.token = fmt.Sprintf("token-%d", w.logins)
		tok := w.token
		w.mu.Unlock()
		fmt.Fprintf(rw, `{"code":200,"expire":%q,"token":%q}`, time.Now().Add(time.Hour).UTC().Format(time.RFC3339), tok)
		return
	}
	w.auths = append(w.auths, r.Header.Get("Authorization"))
	status := 0
	if len(w.answers) > 0 {
		status, w.answers = w.answers[0], w.answers[1:]
	}
	if status == 0 && r.Header.Get("Authorization") != "Bearer "+w.token {
		status = http.StatusUnauthorized
	}
	if status == 0 {
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/v1/alerts":
			var batch []map[string]any
			if json.Unmarshal(body, &batch) != nil {
				status = http.StatusBadRequest
			} else {
				w.batches = append(w.batches, batch)
				status = http.StatusCreated
			}
		case r.Method == http.MethodDelete && r.URL.Path == "/v1/decisions":
			w.deletes = append(w.deletes, r.URL.RawQuery)
			status = http.StatusOK
		default:
			status = http.StatusNotFound
		}
	}
	w.mu.Unlock()
	if block != nil {
		<-block
	}
	rw.WriteHeader(status)
	_, _ = io.WriteString(rw, `["1"]`)
}

func (w *watcherLAPI) creds() MachineCredentials {
	return MachineCredentials{URL: w.URL + "/", Login: w.login, Password: w.password}
}

func (w *watcherLAPI) snapshot() (logins int, batches [][]map[string]any, auths, deletes, requests []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.logins, append([][]map[string]any(nil), w.batches...), append([]string(nil), w.auths...),
		append([]string(nil), w.deletes...), append([]string(nil), w.requests...)
}

// runPusher runs p until the test ends.
func runPusher(t *testing.T, p *Pusher) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = p.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

func newTestPusher(t *testing.T, cfg PusherConfig) *Pusher {
	t.Helper()
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff, cfg.MaxBackoff = time.Millisecond, 10*time.Millisecond
	}
	p, err := NewPusher(cfg)
	require.NoError(t, err)
	return p
}

var (
	ban1 = netip.MustParsePrefix("203.0.113.7/32")
	ban6 = netip.MustParsePrefix("2001:db8:1:2::/64")
)

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	require.Eventually(t, cond, 30*time.Second, 5*time.Millisecond, what)
}

// TestPusherBatches: bans queued before the LAPI is reached go in batches
// of MaxBatch, in order, each alert carrying one ban decision for the
// ban's remaining time, an IPv6 prefix as scope Range.
func TestPusherBatches(t *testing.T) {
	w := newWatcherLAPI(t)
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	p := newTestPusher(t, PusherConfig{Credentials: w.creds(), MaxBatch: 2, Now: func() time.Time { return now }})
	p.Ban(ban1, now.Add(-time.Minute), now.Add(90*time.Minute), 5, false)
	p.Ban(ban6, now, now.Add(time.Hour), 0, true)
	for i := range 3 {
		p.Ban(netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 32), now, now.Add(time.Hour), 3, false)
	}
	runPusher(t, p)
	eventually(t, "all five pushed", func() bool { return p.Pushed() == 5 })
	logins, batches, auths, _, _ := w.snapshot()
	require.Equal(t, 1, logins)
	require.Len(t, batches, 3)
	require.Equal(t, []int{2, 2, 1}, []int{len(batches[0]), len(batches[1]), len(batches[2])})
	for _, a := range auths {
		require.Equal(t, "Bearer token-1", a)
	}

	a := batches[0][0]
	require.Equal(t, "pgwarden/pgwarden-ban", a["scenario"])
	require.Equal(t, float64(5), a["events_count"])
	require.Equal(t, true, a["remediation"])
	require.Equal(t, false, a["simulated"])
	require.Equal(t, "2026-01-02T03:03:05Z", a["start_at"])
	require.Equal(t, map[string]any{"scope": "Ip", "value": "203.0.113.7", "ip": "203.0.113.7"}, a["source"])
	require.Equal(t, []any{map[string]any{"type": "ban", "duration": "1h30m0s", "scope": "Ip",
		"value": "203.0.113.7", "origin": "crowdsec", "scenario": "pgwarden/pgwarden-ban"}}, a["decisions"])

	r := batches[0][1]
	require.Equal(t, "pgwarden/pgwarden-ban-range", r["scenario"])
	require.Equal(t, float64(1), r["events_count"])
	require.Equal(t, map[string]any{"scope": "Range", "value": "2001:db8:1:2::/64", "range": "2001:db8:1:2::/64"}, r["source"])
	require.Equal(t, "Range", r["decisions"].([]any)[0].(map[string]any)["scope"])
	require.Equal(t, "192.0.2.2", batches[2][0]["source"].(map[string]any)["value"])
}

// TestPusherQueueBound: past MaxQueue the oldest are dropped and counted;
// Ban never waits for the LAPI, even one that does not answer.
func TestPusherQueueBound(t *testing.T) {
	w := newWatcherLAPI(t)
	now := time.Now()
	p := newTestPusher(t, PusherConfig{Credentials: w.creds(), MaxQueue: 3})
	for i := range 5 {
		p.Ban(netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 32), now, now.Add(time.Hour), 1, false)
	}
	require.Equal(t, uint64(2), p.Dropped())
	require.Equal(t, 3, p.Queued())
	runPusher(t, p)
	eventually(t, "the three kept pushed", func() bool { return p.Pushed() == 3 })
	_, batches, _, _, _ := w.snapshot()
	var got []string
	for _, b := range batches {
		for _, a := range b {
			got = append(got, a["source"].(map[string]any)["value"].(string))
		}
	}
	require.Equal(t, []string{"192.0.2.2", "192.0.2.3", "192.0.2.4"}, got, "the newest are kept")

	// A LAPI that never answers: the bans keep queuing, bounded.
	block := make(chan struct{})
	w.mu.Lock()
	w.block = block
	w.mu.Unlock()
	defer close(block)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 1000 {
			p.Ban(netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)}), 32), now, now.Add(time.Hour), 1, false)
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Ban blocked while the LAPI hangs")
	}
	require.LessOrEqual(t, p.Queued(), 3)
	require.GreaterOrEqual(t, p.Dropped(), uint64(2+1000-3-50))
}

// TestPusherReloginOn401: a token the LAPI refuses (expired, or the LAPI
// restarted) is replaced by logging in again, and the batch is sent.
func TestPusherReloginOn401(t *testing.T) {
	w := newWatcherLAPI(t)
	w.answers = []int{http.StatusUnauthorized}
	p := newTestPusher(t, PusherConfig{Credentials: w.creds()})
	now := time.Now()
	p.Ban(ban1, now, now.Add(time.Hour), 5, false)
	runPusher(t, p)
	eventually(t, "pushed", func() bool { return p.Pushed() == 1 })
	logins, batches, auths, _, _ := w.snapshot()
	require.Equal(t, 2, logins)
	require.Len(t, batches, 1)
	require.Equal(t, []string{"Bearer token-1", "Bearer token-2"}, auths)
	require.Zero(t, p.Failed())
}

// TestPusherBackoffWhileDown: while the LAPI fails, the batch is kept and
// retried (the outage logged once), then pushed once it is back; an alert
// the LAPI refuses outright is counted failed and not retried.
func TestPusherBackoffWhileDown(t *testing.T) {
	w := newWatcherLAPI(t)
	w.answers = []int{503, 503, 502, 500}
	core, logs := observer.New(zapcore.InfoLevel)
	p := newTestPusher(t, PusherConfig{Credentials: w.creds(), Logger: zap.New(core)})
	now := time.Now()
	p.Ban(ban1, now, now.Add(time.Hour), 5, false)
	runPusher(t, p)
	eventually(t, "pushed after the outage", func() bool { return p.Pushed() == 1 })
	_, batches, auths, _, _ := w.snapshot()
	require.Len(t, auths, 5, "four failures, then success")
	require.Len(t, batches, 1)
	require.Equal(t, 1, logs.FilterMessage("crowdsec LAPI unavailable; bans are queued and retried").Len())
	require.Equal(t, 1, logs.FilterMessage("crowdsec LAPI reachable again; queued bans are being pushed").Len())
	require.Zero(t, p.Dropped())

	w.mu.Lock()
	w.answers = []int{http.StatusBadRequest}
	w.mu.Unlock()
	p.Ban(ban6, now, now.Add(time.Hour), 5, false)
	eventually(t, "the refused one failed", func() bool { return p.Failed() == 1 })
	p.Ban(netip.MustParsePrefix("192.0.2.10/32"), now, now.Add(time.Hour), 5, false)
	eventually(t, "the next one pushed", func() bool { return p.Pushed() == 2 })
	_, batches, auths, _, _ = w.snapshot()
	require.Len(t, auths, 7, "the refused batch is not retried")
	require.Equal(t, "192.0.2.10", batches[1][0]["source"].(map[string]any)["value"])
}

// TestPusherWrongPassword: a refused login is an outage logged as an
// error; a password fixed in the file is picked up at the next attempt.
func TestPusherWrongPassword(t *testing.T) {
	w := newWatcherLAPI(t)
	file := filepath.Join(t.TempDir(), "machine.yaml")
	writeCreds := func(pw string) {
		require.NoError(t, os.WriteFile(file, fmt.Appendf(nil, "url: %s/\nlogin: pgwarden\npassword: %q\n", w.URL, pw), 0o600))
	}
	writeCreds("wrong")
	mc, err := ReadMachineCredentials(file)
	require.NoError(t, err)
	core, logs := observer.New(zapcore.InfoLevel)
	p := newTestPusher(t, PusherConfig{Credentials: mc, CredentialsFile: file, Logger: zap.New(core)})
	require.ErrorIs(t, p.Login(context.Background()), ErrLoginRejected)
	now := time.Now()
	p.Ban(ban1, now, now.Add(time.Hour), 5, false)
	runPusher(t, p)
	eventually(t, "the refusal logged", func() bool {
		return logs.FilterMessage("crowdsec LAPI rejected the machine credentials; bans are queued until it accepts them").Len() == 1
	})
	writeCreds(w.password)
	eventually(t, "pushed with the new password", func() bool { return p.Pushed() == 1 })
}

// TestPusherUnbanInOrder: an unban follows the ban it lifts and deletes
// the crowdsec-origin ban decisions on exactly that value.
func TestPusherUnbanInOrder(t *testing.T) {
	w := newWatcherLAPI(t)
	p := newTestPusher(t, PusherConfig{Credentials: w.creds()})
	now := time.Now()
	p.Ban(ban1, now, now.Add(time.Hour), 5, false)
	p.Unban(ban1)
	p.Ban(ban6, now, now.Add(time.Hour), 5, false)
	p.Unban(ban6)
	runPusher(t, p)
	eventually(t, "both unbans sent", func() bool {
		_, _, _, deletes, _ := w.snapshot()
		return len(deletes) == 2
	})
	_, _, _, deletes, requests := w.snapshot()
	require.Equal(t, []string{"POST /v1/watchers/login", "POST /v1/alerts", "DELETE /v1/decisions", "POST /v1/alerts", "DELETE /v1/decisions"}, requests)
	require.Equal(t, "origin=crowdsec&scopes=Ip&type=ban&value=203.0.113.7", deletes[0])
	require.Equal(t, "origin=crowdsec&scopes=Range&type=ban&value=2001%3Adb8%3A1%3A2%3A%3A%2F64", deletes[1])
}

// TestPusherEndedBanDropped: a ban that ended while queued is not sent.
func TestPusherEndedBanDropped(t *testing.T) {
	w := newWatcherLAPI(t)
	p := newTestPusher(t, PusherConfig{Credentials: w.creds()})
	now := time.Now()
	p.Ban(ban1, now.Add(-time.Hour), now.Add(-time.Second), 5, false)
	p.Ban(ban6, now, now.Add(time.Hour), 5, false)
	runPusher(t, p)
	eventually(t, "the live one pushed", func() bool { return p.Pushed() == 1 })
	require.Equal(t, uint64(1), p.Dropped())
	_, batches, _, _, _ := w.snapshot()
	require.Len(t, batches, 1)
	require.Len(t, batches[0], 1)
	require.Equal(t, "2001:db8:1:2::/64", batches[0][0]["source"].(map[string]any)["value"])
}

// TestPusherFlushesAtShutdown: what is queued when Run's context ends
// (bans made while the gateway drained) is sent in one last attempt; with
// the LAPI down, that attempt gives up within FlushTimeout and counts
// what it could not send as dropped.
func TestPusherFlushesAtShutdown(t *testing.T) {
	w := newWatcherLAPI(t)
	now := time.Now()
	p := newTestPusher(t, PusherConfig{Credentials: w.creds(), MaxBatch: 2})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for i := range 3 {
		p.Ban(netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 32), now, now.Add(time.Hour), 3, false)
	}
	p.Unban(netip.MustParsePrefix("192.0.2.0/32"))
	require.NoError(t, p.Run(ctx))
	require.EqualValues(t, 3, p.Pushed())
	_, batches, _, deletes, _ := w.snapshot()
	require.Len(t, batches, 2)
	require.Len(t, deletes, 1)
	require.Zero(t, p.Queued())

	// The LAPI down (every request 503): Run returns, the bans dropped.
	down := newWatcherLAPI(t)
	down.answers = []int{503, 503, 503, 503}
	core, logs := observer.New(zapcore.WarnLevel)
	q := newTestPusher(t, PusherConfig{Credentials: down.creds(), FlushTimeout: time.Second, Logger: zap.New(core)})
	q.Ban(ban1, now, now.Add(time.Hour), 3, false)
	q.Ban(ban6, now, now.Add(time.Hour), 3, false)
	require.NoError(t, q.Run(ctx))
	require.EqualValues(t, 0, q.Pushed())
	require.EqualValues(t, 2, q.Dropped())
	require.Equal(t, 1, logs.FilterMessage("crowdsec: bans and unbans not pushed at shutdown").Len())
}

// TestReadMachineCredentials: the file cscli writes is read; every
// unusable one is an error naming MachineCredentials and the fix.
func TestReadMachineCredentials(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
		return p
	}
	good := write("good.yaml", "url: http://127.0.0.1:8080/\nlogin: pgwarden\npassword: abc def\nca_cert_path: \"\"\n")
	mc, err := ReadMachineCredentials(good)
	require.NoError(t, err)
	require.Equal(t, MachineCredentials{URL: "http://127.0.0.1:8080/", Login: "pgwarden", Password: "abc def"}, mc)

	for name, tc := range map[string]struct{ path, want string }{
		"missing":     {filepath.Join(dir, "nope.yaml"), "cscli machines add pgwarden --auto -f"},
		"empty":       {write("empty.yaml", ""), "login and password are required"},
		"no password": {write("nopw.yaml", "url: http://127.0.0.1:8080/\nlogin: x\n"), "login and password are required"},
		"no url":      {write("nourl.yaml", "login: x\npassword: y\n"), "url: the LAPI URL is missing"},
		"bad scheme":  {write("ftp.yaml", "url: ftp://h/\nlogin: x\npassword: y\n"), "use http:// or https://"},
		"not yaml":    {write("bad.yaml", "url: [\n"), "not CrowdSec's credentials YAML"},
		"control":     {write("ctl.yaml", "url: http://h/\nlogin: x\npassword: \"a\\nb\"\n"), "control character"},
		"huge":        {write("huge.yaml", strings.Repeat("#", maxCredentialsFile+1)), "longer than"},
		"dir":         {dir, "MachineCredentials"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ReadMachineCredentials(tc.path)
			require.ErrorIs(t, err, ErrConfig)
			require.ErrorContains(t, err, "MachineCredentials")
			require.ErrorContains(t, err, tc.want)
			require.NotContains(t, err.Error(), "\n")
		})
	}
}

func TestSameURL(t *testing.T) {
	require.True(t, SameURL("http://127.0.0.1:8080/", "HTTP://127.0.0.1:8080"))
	require.False(t, SameURL("http://127.0.0.1:8080/", "http://127.0.0.1:8081/"))
	require.False(t, SameURL("http://127.0.0.1:8080/", "https://127.0.0.1:8080/"))
}

// FuzzParseLogin: whatever the LAPI answers a login with, the token kept
// can go into a header and the expiry is in the future.
func FuzzParseLogin(f *testing.F) {
	f.Add([]byte(`{"code":200,"expire":"2026-11-30T08:37:03Z","token":"eyJhbGciOiJIUzI1NiJ9.e30.x"}`))
	f.Add([]byte(`{"token":"a\r\nb"}`))
	f.Add([]byte(`{"token":"","expire":"x"}`))
	f.Add([]byte(`[]`))
	now := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, b []byte) {
		tok, exp, err := parseLogin(b, now)
		if err != nil {
			return
		}
		if tok == "" || !headerSafe(tok) || len(tok) > 8192 {
			t.Fatalf("unusable token %q kept", tok)
		}
		if !exp.After(now) {
			t.Fatalf("expiry %s not after now", exp)
		}
	})
}
