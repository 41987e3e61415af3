package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/pgwarden/pgwarden/internal/pgtest"
	"github.com/pgwarden/pgwarden/internal/redistest"
)

var metricName = regexp.MustCompile(`\bpgwarden_[a-z0-9_]+\b`)

// dashboardExprs returns every query of the Grafana dashboard (panels,
// rows' panels and template variables).
func dashboardExprs(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var dash struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	require.NoError(t, json.Unmarshal(data, &dash), "the dashboard is JSON")
	require.Equal(t, "pgwarden", dash.UID)
	var exprs []string
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		require.NotEmpty(t, p.Targets, "panel %q has no query", p.Title)
		for _, tg := range p.Targets {
			require.NotEmpty(t, tg.Expr, "panel %q", p.Title)
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		if v.Definition != "" {
			exprs = append(exprs, v.Definition)
		}
	}
	return exprs
}

// alertExprs returns every rule expression of the alerts file.
func alertExprs(t *testing.T, path string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	require.NoError(t, yaml.Unmarshal(data, &rules))
	out := map[string]string{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			out[r.Alert] = r.Expr
		}
	}
	return out
}

// promtool finds Prometheus's promtool: $PROMTOOL, then PATH.
func promtool() (string, bool) {
	if p := os.Getenv("PROMTOOL"); p != "" {
		return p, true
	}
	p, err := exec.LookPath("promtool")
	return p, err == nil
}

// TestContribDashboardAndAlerts: the Grafana dashboard and the alert rules
// in contrib/ parse, cover what they promise, and name only metrics that a
// running gateway exports (scraped from its /metrics after some traffic);
// with promtool the rules pass `promtool check rules` and the unit tests
// in alerts_test.yml.
func TestContribDashboardAndAlerts(t *testing.T) {
	dashboard := filepath.Join("..", "..", "contrib", "grafana", "pgwarden.json")
	alerts := filepath.Join("..", "..", "contrib", "prometheus", "alerts.yml")
	exprs := dashboardExprs(t, dashboard)
	rules := alertExprs(t, alerts)
	for _, want := range []string{"PgwardenCertificateExpiringSoon", "PgwardenCertificateExpired", "PgwardenBanStorm",
		"PgwardenUpstreamNotReady", "PgwardenRefusalsSpike", "PgwardenRedisDown", "PgwardenCrowdSecDown"} {
		require.Contains(t, rules, want)
	}
	all := strings.Join(exprs, "\n")
	for _, want := range []string{"pgwarden_connections_total", "pgwarden_rejections_total", "pgwarden_auth_failures_total",
		"pgwarden_bans_active", "pgwarden_sessions_active", "pgwarden_handshake_seconds_bucket", "pgwarden_relay_bytes_total",
		"pgwarden_certificate_expiry_timestamp_seconds"} {
		require.Contains(t, all, want, "the dashboard shows it")
	}
	for _, e := range rules {
		all += "\n" + e
	}

	exported := scrapeBusyGateway(t)
	names := map[string]bool{}
	for _, n := range metricName.FindAllString(all, -1) {
		names[n] = true
	}
	var missing []string
	for n := range names {
		if !exported[n] {
			missing = append(missing, n)
		}
	}
	sort.Strings(missing)
	require.Empty(t, missing, "named in contrib/ but not in /metrics")

	tool, ok := promtool()
	if !ok {
		t.Log("promtool not installed (Debian's prometheus package has it; .ci/run extracts it): the rules were checked for their metric names only")
		return
	}
	out, err := exec.Command(tool, "check", "rules", alerts).CombinedOutput()
	require.NoError(t, err, "%s", out)
	cmd := exec.Command(tool, "test", "rules", "alerts_test.yml")
	cmd.Dir = filepath.Dir(alerts)
	out, err = cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
}

// scrapeBusyGateway runs the gateway with everything that has metrics of
// its own (a fleet Redis, a CrowdSec LAPI pulled from and pushed to, a
// trusted load balancer), gives
// it a session, a failed login, a refused source and a ban, and returns
// the metric names of its /metrics.
func scrapeBusyGateway(t *testing.T) map[string]bool {
	t.Helper()
	pg := pgtest.Start(t)
	rds := redistest.Start(t)
	// The LAPI refuses the stream (pgwarden_crowdsec_up 0): only the
	// series' presence matters here.
	lapi := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, `{"message":"access forbidden"}`, http.StatusForbidden)
	}))
	t.Cleanup(lapi.Close)
	certFile, keyFile, caFile := tlsFiles(t)
	bouncerKey := filepath.Join(t.TempDir(), "bouncer.key")
	require.NoError(t, os.WriteFile(bouncerKey, []byte("key\n"), 0o600))
	machine := filepath.Join(t.TempDir(), "crowdsec-machine.yaml")
	require.NoError(t, os.WriteFile(machine, []byte("url: "+lapi.URL+"\nlogin: pgwarden\npassword: pw\n"), 0o600))
	port := freePort(t)
	g := startBinary(t, "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--upstream", pg.Addr(), "--allow", "127.0.0.1",
		"--tls-cert", certFile, "--tls-key", keyFile, "--admin", "127.0.0.1:0",
		"--redis", rds.URL(), "--crowdsec-lapi", lapi.URL, "--crowdsec-key-file", bouncerKey,
		"--crowdsec-machine-credentials", machine,
		"--proxy-protocol-from", "127.0.0.9")
	admin := adminAddr(t, g)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dsn := func(password string) string {
		return fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=verify-full sslrootcert=%s",
			port, pg.User, password, pg.Database, caFile)
	}
	conn, err := pgconn.Connect(ctx, dsn(pg.Password))
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "SELECT 1").ReadAll()
	require.NoError(t, err)
	require.NoError(t, conn.Close(ctx))
	_, err = pgconn.Connect(ctx, dsn("wrong"))
	require.Error(t, err)
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}, Timeout: 5 * time.Second}
	if c, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
		_, _ = c.Read(make([]byte, 1))
		c.Close()
	}
	resp, err := http.Post("http://"+admin+"/bans", "application/json", strings.NewReader(`{"ip": "192.0.2.9"}`))
	require.NoError(t, err)
	resp.Body.Close()

	exported := map[string]bool{}
	require.Eventually(t, func() bool {
		text := httpGet(t, "http://"+admin+"/metrics")
		for _, line := range strings.Split(text, "\n") {
			if line == "" || line[0] == '#' {
				continue
			}
			name := line
			if i := strings.IndexAny(line, "{ "); i >= 0 {
				name = line[:i]
			}
			exported[name] = true
		}
		return exported["pgwarden_connection_duration_seconds_bucket"] && exported["pgwarden_auth_failures_total"]
	}, 10*time.Second, 20*time.Millisecond)
	return exported
}
