package admin

import (
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
	"github.com/pgwarden/pgwarden/internal/admin/admintest"
	"github.com/pgwarden/pgwarden/internal/fielderr"
	"github.com/pgwarden/pgwarden/internal/metrics"
	"github.com/pgwarden/pgwarden/proxy"
)

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
// served by httptest (nothing bound by the Server itself).
func newTestAdmin(t testing.TB) (*httptest.Server, *admintest.Jail, *fakeReadiness, *metrics.Prometheus) {
	t.Helper()
	jail, ready, m := admintest.NewJail(), &fakeReadiness{}, metrics.New()
	m.SetBanStore(jail)
	s, err := New(Config{Addr: "127.0.0.1:0", Bans: jail, Ready: ready.Ready, Registry: m.Registry(), Logger: zaptest.NewLogger(t)})
	require.NoError(t, err)
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return srv, jail, ready, m
}

func TestAdminHandlers(t *testing.T) {
	t.Parallel()
	twoBans := []acl.BanInfo{
		// Sub-second Until is rounded up: the API never says a ban lifts early.
		{IP: "203.0.113.7", Until: admintest.Now.Add(500 * time.Millisecond), Failures: 5, Bans: 1},
		{IP: "2001:db8::/64", Until: admintest.Now.Add(time.Hour).In(time.FixedZone("X", 3600)), Failures: 0, Bans: 3},
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
			jail.Set(tc.bans...)
			jail.BanErr = tc.banErr
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
				call, d := jail.LastCall()
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
	jail.Set(acl.BanInfo{IP: "192.0.2.1"}, acl.BanInfo{IP: "192.0.2.2"})
	m.ConnectionClosed("default", proxy.OutcomeAuthFailed, 20*time.Millisecond)
	m.Rejected("default", "banned")
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
		`pgwarden_rejections_total{reason="banned",route="default"} 1`,
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
			bind, err := ValidateAddr(tc.addr)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(flagText(err), tc.wantErr) {
					t.Fatalf("ValidateAddr(%q) = %q, %v; want error containing %q", tc.addr, bind, err, tc.wantErr)
				}
				return
			}
			if err != nil || bind != tc.wantBind {
				t.Fatalf("ValidateAddr(%q) = %q, %v; want %q", tc.addr, bind, err, tc.wantBind)
			}
		})
	}
}

func TestNewRefusesNonLoopback(t *testing.T) {
	t.Parallel()
	cfg := Config{Addr: "0.0.0.0:9187", Bans: admintest.NewJail(), Ready: func() error { return nil }, Registry: metrics.New().Registry()}
	_, err := New(cfg)
	require.Error(t, err)
	var fe *fielderr.Error
	if !errors.As(err, &fe) || fe.Fields()[0] != FieldAddr || !strings.Contains(flagText(err), "--admin") {
		t.Errorf("err = %v, want a field error naming --admin", err)
	}
	_, err = New(Config{Addr: "127.0.0.1:0"})
	if err == nil {
		t.Error("missing deps accepted")
	}
}

// flagText renders err as the command line names the address.
func flagText(err error) string { return fielderr.Render(err, fielderr.Names{FieldAddr: "--admin"}) }

// TestAdminServerLifecycle binds for real on a free loopback port.
func TestAdminServerLifecycle(t *testing.T) {
	t.Parallel()
	cfg := Config{Addr: "127.0.0.1:0", Bans: admintest.NewJail(), Ready: func() error { return nil }, Registry: metrics.New().Registry(), Logger: zaptest.NewLogger(t)}
	s, err := New(cfg)
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
	cfg.Addr, cfg.Logger = s.Addr().String(), nil
	s2, err := New(cfg)
	require.NoError(t, err)
	if err := s2.Start(); err == nil || !strings.Contains(flagText(err), "--admin") {
		t.Errorf("second Start = %v, want a bind error naming --admin", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, s.Shutdown(ctx))
	if _, err := client.Get("http://" + s.Addr().String() + "/healthz"); err == nil {
		t.Error("still serving after Shutdown")
	}
}
