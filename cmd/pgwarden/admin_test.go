package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/pgwarden/pgwarden/acl"
)

// fakeNow is the fake jail's clock.
var fakeNow = time.Date(2026, 8, 1, 10, 0, 0, 0, time.UTC)

// fakeJail is an in-memory banStore that records the bans asked for.
type fakeJail struct {
	mu      sync.Mutex
	bans    []acl.BanInfo
	banErr  error         // returned by Ban when set
	lastFor time.Duration // d of the last Ban
	calls   []string      // "ban IP", "unban IP"
}

func newFakeJail() *fakeJail { return &fakeJail{} }

func (j *fakeJail) set(bans ...acl.BanInfo) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.bans = append([]acl.BanInfo(nil), bans...) // the caller's slice is shared between subtests
}

func (j *fakeJail) List() []acl.BanInfo {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]acl.BanInfo(nil), j.bans...)
}

func (j *fakeJail) ActiveBans() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.bans)
}

// Ban bans for d, or for 10m × 2^(bans so far) when d is 0, as the jail's
// escalation would.
func (j *fakeJail) Ban(ip string, d time.Duration) (acl.BanInfo, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.calls = append(j.calls, "ban "+ip)
	j.lastFor = d
	if j.banErr != nil {
		return acl.BanInfo{}, j.banErr
	}
	n := 1
	for i, b := range j.bans {
		if b.IP == ip {
			n = b.Bans + 1
			j.bans = append(j.bans[:i], j.bans[i+1:]...)
			break
		}
	}
	if d == 0 {
		d = 10 * time.Minute << (n - 1)
	}
	info := acl.BanInfo{IP: ip, Until: fakeNow.Add(d), Bans: n}
	j.bans = append(j.bans, info)
	return info, nil
}

func (j *fakeJail) Unban(ip string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.calls = append(j.calls, "unban "+ip)
	for i, b := range j.bans {
		if b.IP == ip {
			j.bans = append(j.bans[:i], j.bans[i+1:]...)
			return nil
		}
	}
	return fmt.Errorf("unbanning %s: %w", ip, acl.ErrNotBanned)
}

func (j *fakeJail) lastCall() (string, time.Duration) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if len(j.calls) == 0 {
		return "", 0
	}
	return j.calls[len(j.calls)-1], j.lastFor
}

// fakeReadiness is a mutable Ready func.
type fakeReadiness struct {
	mu  sync.Mutex
	err error
}

func (r *fakeReadiness) set(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.err = err
}

func (r *fakeReadiness) Ready() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// newTestAdmin returns an admin server over a fake jail, its handler
// served by httptest (nothing bound by the adminServer itself).
func newTestAdmin(t testing.TB) (*httptest.Server, *fakeJail, *fakeReadiness, *promMetrics) {
	t.Helper()
	jail, ready, m := newFakeJail(), &fakeReadiness{}, newPromMetrics()
	m.SetBanStore(jail)
	s, err := newAdminServer("127.0.0.1:0", adminDeps{Bans: jail, Ready: ready.Ready, Registry: m.Registry()}, zaptest.NewLogger(t))
	require.NoError(t, err)
	srv := httptest.NewServer(s.handler())
	t.Cleanup(srv.Close)
	return srv, jail, ready, m
}

func TestAdminHandlers(t *testing.T) {
	t.Parallel()
	twoBans := []acl.BanInfo{
		// Sub-second Until is rounded up: the API never says a ban lifts early.
		{IP: "203.0.113.7", Until: fakeNow.Add(500 * time.Millisecond), Failures: 5, Bans: 1},
		{IP: "2001:db8::/64", Until: fakeNow.Add(time.Hour).In(time.FixedZone("X", 3600)), Failures: 0, Bans: 3},
	}
	tests := []struct {
		name        string
		bans        []acl.BanInfo
		banErr      error
		notReady    error
		method      string
		path        string
		host        string // overrides the Host header
		contentType string // for a body; default application/json
		body        string
		wantStatus  int
		wantBody    string // exact, when set
		wantIn      string // substring, when set
		wantCall    string // the fake's last call, when set
		wantFor     time.Duration
	}{
		{
			name: "list", bans: twoBans, method: "GET", path: "/bans", wantStatus: 200,
			wantBody: `[{"ip":"203.0.113.7","until":"2026-08-01T10:00:01Z","failures":5,"bans":1},` +
				`{"ip":"2001:db8::/64","until":"2026-08-01T11:00:00Z","failures":0,"bans":3}]` + "\n",
		},
		{name: "list empty is an array", method: "GET", path: "/bans", wantStatus: 200, wantBody: "[]\n"},
		{
			name: "ban for a duration", method: "POST", path: "/bans", body: `{"ip":"198.51.100.9","for":"1h"}`,
			wantStatus: 201, wantBody: `{"ip":"198.51.100.9","until":"2026-08-01T11:00:00Z","failures":0,"bans":1}` + "\n",
			wantCall: "ban 198.51.100.9", wantFor: time.Hour,
		},
		{
			name: "ban without for escalates", bans: []acl.BanInfo{{IP: "198.51.100.9", Bans: 2}},
			method: "POST", path: "/bans", body: `{"ip":"198.51.100.9"}`,
			wantStatus: 201, wantBody: `{"ip":"198.51.100.9","until":"2026-08-01T10:40:00Z","failures":0,"bans":3}` + "\n",
			wantCall: "ban 198.51.100.9", wantFor: 0,
		},
		{
			name: "ban a prefix", method: "POST", path: "/bans", body: `{"ip":"2001:db8:1::/48","for":"24h"}`,
			wantStatus: 201, wantCall: "ban 2001:db8:1::/48", wantFor: 24 * time.Hour,
		},
		{name: "ban bad ip", method: "POST", path: "/bans", body: `{"ip":"db.example.com"}`, wantStatus: 400, wantIn: `"error":"\"db.example.com\" is not an IP address or CIDR prefix"`},
		{name: "ban missing ip", method: "POST", path: "/bans", body: `{"for":"1h"}`, wantStatus: 400, wantIn: `ip is required`},
		{name: "ban bad duration", method: "POST", path: "/bans", body: `{"ip":"198.51.100.9","for":"soon"}`, wantStatus: 400, wantIn: `positive duration`},
		{name: "ban negative duration", method: "POST", path: "/bans", body: `{"ip":"198.51.100.9","for":"-5m"}`, wantStatus: 400, wantIn: `positive duration`},
		{name: "ban unknown field", method: "POST", path: "/bans", body: `{"ip":"198.51.100.9","forever":true}`, wantStatus: 400, wantIn: `unknown field`},
		{name: "ban not json", method: "POST", path: "/bans", body: `ip=198.51.100.9`, wantStatus: 400, wantIn: `"error"`},
		{name: "ban as text/plain is refused", method: "POST", path: "/bans", contentType: "text/plain", body: `{"ip":"198.51.100.9"}`, wantStatus: 415},
		{
			name: "ban invalid per the jail", banErr: fmt.Errorf("banning %q: %w", "10.0.0.1", acl.ErrInvalidEntry),
			method: "POST", path: "/bans", body: `{"ip":"10.0.0.1"}`, wantStatus: 400,
		},
		{
			name: "ban after jail closed", banErr: fmt.Errorf("banning 10.0.0.1/32: %w", acl.ErrJailClosed),
			method: "POST", path: "/bans", body: `{"ip":"10.0.0.1"}`, wantStatus: 503, wantIn: "jail closed",
		},
		{
			name: "unban", bans: twoBans, method: "DELETE", path: "/bans/203.0.113.7",
			wantStatus: 204, wantBody: "", wantCall: "unban 203.0.113.7",
		},
		{
			name: "unban escaped prefix", bans: twoBans, method: "DELETE", path: "/bans/2001:db8::%2F64",
			wantStatus: 204, wantCall: "unban 2001:db8::/64",
		},
		{
			name: "unban unescaped prefix", bans: twoBans, method: "DELETE", path: "/bans/2001:db8::/64",
			wantStatus: 204, wantCall: "unban 2001:db8::/64",
		},
		{
			name: "unban not banned", method: "DELETE", path: "/bans/192.0.2.1", wantStatus: 404,
			wantBody: `{"error":"unbanning 192.0.2.1: not banned"}` + "\n",
		},
		{name: "unban bad ip", method: "DELETE", path: "/bans/nonsense", wantStatus: 400, wantIn: "not an IP address"},
		{name: "wrong method", method: "PUT", path: "/bans", wantStatus: 405},
		{name: "unknown path", method: "GET", path: "/admin", wantStatus: 404},
		{name: "healthz", method: "GET", path: "/healthz", wantStatus: 200, wantBody: "ok\n"},
		{name: "readyz ready", method: "GET", path: "/readyz", wantStatus: 200, wantBody: "ready\n"},
		{
			name: "readyz draining", notReady: errors.New("draining"), method: "GET", path: "/readyz",
			wantStatus: 503, wantBody: "not ready: draining\n",
		},
		{name: "metrics", method: "GET", path: "/metrics", wantStatus: 200, wantIn: "# TYPE pgwarden_bans_active gauge"},
		{name: "dns rebinding host", method: "GET", path: "/bans", host: "evil.example:9187", wantStatus: 403, wantIn: "not loopback"},
		{name: "localhost host", method: "GET", path: "/healthz", host: "localhost:9187", wantStatus: 200},
		{name: "ipv6 loopback host", method: "GET", path: "/healthz", host: "[::1]:9187", wantStatus: 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, jail, ready, _ := newTestAdmin(t)
			jail.set(tc.bans...)
			jail.banErr = tc.banErr
			ready.set(tc.notReady)

			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			req, err := http.NewRequest(tc.method, srv.URL+tc.path, body)
			require.NoError(t, err)
			if tc.body != "" {
				ct := tc.contentType
				if ct == "" {
					ct = "application/json"
				}
				req.Header.Set("Content-Type", ct)
			}
			if tc.host != "" {
				req.Host = tc.host
			}
			resp, err := srv.Client().Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			require.NoError(t, err)

			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status = %d, want %d; body %s", resp.StatusCode, tc.wantStatus, got)
			}
			if len(got) > 0 && (got[0] == '{' || got[0] == '[') {
				if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
					t.Errorf("Content-Type = %q, want application/json", ct)
				}
			}
			if tc.wantBody != "" || tc.wantStatus == 204 {
				if string(got) != tc.wantBody {
					t.Errorf("body = %q, want %q", got, tc.wantBody)
				}
			}
			if tc.wantIn != "" && !strings.Contains(string(got), tc.wantIn) {
				t.Errorf("body %q does not contain %q", got, tc.wantIn)
			}
			if tc.wantCall != "" {
				call, d := jail.lastCall()
				if call != tc.wantCall || d != tc.wantFor && strings.HasPrefix(call, "ban ") {
					t.Errorf("jail call = %q for %s, want %q for %s", call, d, tc.wantCall, tc.wantFor)
				}
			}
		})
	}
}

// TestAdminMetricsAfterActivity scrapes /metrics through the endpoint
// after the proxy-side methods ran.
func TestAdminMetricsAfterActivity(t *testing.T) {
	t.Parallel()
	srv, jail, _, m := newTestAdmin(t)
	jail.set(acl.BanInfo{IP: "192.0.2.1"}, acl.BanInfo{IP: "192.0.2.2"})
	m.ConnectionClosed("default", "auth_failed", 20*time.Millisecond)
	m.Rejected("banned")
	m.AuthFailure("28P01")
	m.HandshakeCompleted("default", 4*time.Millisecond)
	m.BytesCounter("default", false).Add(512)

	resp, err := srv.Client().Get(srv.URL + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	for _, want := range []string{
		`pgwarden_connections_total{outcome="auth_failed",route="default"} 1`,
		`pgwarden_rejections_total{reason="banned"} 1`,
		`pgwarden_auth_failures_total{sqlstate="28P01"} 1`,
		`pgwarden_handshake_seconds_count{route="default"} 1`,
		`pgwarden_relay_bytes_total{direction="to_client",route="default"} 512`,
		`pgwarden_bans_active 2`,
	} {
		if !strings.Contains(string(body), want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestValidateAdminAddr(t *testing.T) {
	t.Parallel()
	tests := []struct {
		addr     string
		wantBind string
		wantErr  string
	}{
		{addr: "127.0.0.1:9187", wantBind: "127.0.0.1:9187"},
		{addr: "127.1.2.3:0", wantBind: "127.1.2.3:0"},
		{addr: "[::1]:9187", wantBind: "[::1]:9187"},
		{addr: "localhost:9187", wantBind: "127.0.0.1:9187"},
		{addr: "LocalHost:9187", wantBind: "127.0.0.1:9187"},
		{addr: "[::ffff:127.0.0.1]:9187", wantBind: "127.0.0.1:9187"},
		{addr: "0.0.0.0:9187", wantErr: `--admin "0.0.0.0:9187": the admin endpoint must listen on a loopback address`},
		{addr: ":9187", wantErr: "must listen on a loopback address"},
		{addr: "[::]:9187", wantErr: "must listen on a loopback address"},
		{addr: "10.0.0.1:9187", wantErr: "use 127.0.0.1:PORT, [::1]:PORT or localhost:PORT"},
		{addr: "admin.example.com:9187", wantErr: "must listen on a loopback address"},
		{addr: "[fe80::1%lo]:9187", wantErr: "must listen on a loopback address"},
		{addr: "127.0.0.1", wantErr: "expected HOST:PORT"},
		{addr: "127.0.0.1:admin", wantErr: `port "admin" is not a number`},
		{addr: "127.0.0.1:70000", wantErr: `port "70000" is not a number`},
		{addr: "", wantErr: "expected HOST:PORT"},
	}
	for _, tc := range tests {
		t.Run(tc.addr, func(t *testing.T) {
			t.Parallel()
			bind, err := validateAdminAddr(tc.addr)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("validateAdminAddr(%q) = %q, %v; want error containing %q", tc.addr, bind, err, tc.wantErr)
				}
				return
			}
			if err != nil || bind != tc.wantBind {
				t.Fatalf("validateAdminAddr(%q) = %q, %v; want %q", tc.addr, bind, err, tc.wantBind)
			}
		})
	}
}

func TestNewAdminServerRefusesNonLoopback(t *testing.T) {
	t.Parallel()
	deps := adminDeps{Bans: newFakeJail(), Ready: func() error { return nil }, Registry: newPromMetrics().Registry()}
	_, err := newAdminServer("0.0.0.0:9187", deps, nil)
	require.Error(t, err)
	if !strings.Contains(err.Error(), "--admin") || exitCode(err) != exitUsage {
		t.Errorf("err = %v (exit %d), want a configError naming --admin", err, exitCode(err))
	}
	_, err = newAdminServer("127.0.0.1:0", adminDeps{}, nil)
	if err == nil {
		t.Error("missing deps accepted")
	}
}

// TestAdminServerLifecycle binds for real on a free loopback port.
func TestAdminServerLifecycle(t *testing.T) {
	t.Parallel()
	deps := adminDeps{Bans: newFakeJail(), Ready: func() error { return nil }, Registry: newPromMetrics().Registry()}
	s, err := newAdminServer("127.0.0.1:0", deps, zaptest.NewLogger(t))
	require.NoError(t, err)
	require.NoError(t, s.Shutdown(context.Background()), "shutdown before start")
	require.NoError(t, s.Start())

	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + s.Addr().String() + "/healthz")
	require.NoError(t, err)
	_ = resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("healthz status = %d", resp.StatusCode)
	}

	// A second server on the same port reports the bind error.
	s2, err := newAdminServer(s.Addr().String(), deps, nil)
	require.NoError(t, err)
	if err := s2.Start(); err == nil || !strings.Contains(err.Error(), "--admin") {
		t.Errorf("second Start = %v, want a bind error naming --admin", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, s.Shutdown(ctx))
	if _, err := client.Get("http://" + s.Addr().String() + "/healthz"); err == nil {
		t.Error("still serving after Shutdown")
	}
}

// TestAdminWithRealJail runs the endpoint over an in-memory acl.Jail, so
// the error mapping follows the jail's real errors, not the fake's.
func TestAdminWithRealJail(t *testing.T) {
	t.Parallel()
	cfg := acl.DefaultJailConfig()
	cfg.Rand = func() float64 { return 0 }
	jail, err := acl.NewJail(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = jail.Close() })
	m := newPromMetrics()
	m.SetBanStore(jail)
	s, err := newAdminServer("127.0.0.1:0", adminDeps{Bans: jail, Ready: func() error { return nil }, Registry: m.Registry()}, zaptest.NewLogger(t))
	require.NoError(t, err)
	srv := httptest.NewServer(s.handler())
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "http://")
	getenv := func(string) string { return "" }

	steps := []struct {
		args     []string
		wantCode int
		wantOut  string // substring of stdout
		wantErr  string // substring of stderr
	}{
		{args: []string{"ban", "203.0.113.7", "--for", "1h"}, wantOut: "banned 203.0.113.7 until "},
		{args: []string{"ban", "2001:db8::/64"}, wantOut: "banned 2001:db8::/64 until "},
		{args: []string{"list"}, wantOut: "203.0.113.7 "},
		{args: []string{"list"}, wantOut: "2001:db8::/64 "},
		{args: []string{"unban", "2001:db8::/64"}, wantOut: "unbanned 2001:db8::/64"},
		{args: []string{"unban", "2001:db8::/64"}, wantCode: 1, wantErr: "not banned"},
		{args: []string{"unban", "198.51.100.1"}, wantCode: 1, wantErr: "not banned"},
		{args: []string{"ban", "10.0.0.0/8", "--for", "1m"}, wantOut: "banned 10.0.0.0/8"},
	}
	for _, st := range steps {
		var stdout, stderr bytes.Buffer
		code := runBansEnv(append(st.args, "--admin", addr), &stdout, &stderr, getenv)
		if code != st.wantCode || !strings.Contains(stdout.String(), st.wantOut) || !strings.Contains(stderr.String(), st.wantErr) {
			t.Errorf("bans %v: exit %d, stdout %q, stderr %q; want exit %d, stdout ~%q, stderr ~%q",
				st.args, code, stdout.String(), stderr.String(), st.wantCode, st.wantOut, st.wantErr)
		}
	}
	if n := jail.ActiveBans(); n != 2 {
		t.Errorf("ActiveBans = %d, want 2", n)
	}
	out := scrape(t, m)
	if !strings.Contains(out, "pgwarden_bans_active 2\n") {
		t.Errorf("bans_active gauge not 2:\n%s", grepPgwarden(out))
	}
}
