package metrics

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/proxy"
)

// scrape returns m's registry in the Prometheus text format.
func scrape(t testing.TB, m *Prometheus) string {
	t.Helper()
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(m.Registry(), promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("scrape: status %d: %s", rec.Code, rec.Body)
	}
	return rec.Body.String()
}

// fixedBans is a ban store holding that many bans.
type fixedBans int

func (n fixedBans) ActiveBans() int { return int(n) }

func TestPromMetrics(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		do        func(m *Prometheus)
		wantLines []string
		notLines  []string
	}{
		{
			name: "fresh registry has zero series and the go/process collectors",
			do:   func(m *Prometheus) { m.AddRoute("default") },
			wantLines: []string{
				`pgwarden_rejections_total{reason="not_allowed",route="default"} 0`,
				`pgwarden_rejections_total{reason="banned",route="default"} 0`,
				`pgwarden_auth_total{result="succeeded"} 0`,
				`pgwarden_auth_total{result="failed"} 0`,
				`pgwarden_auth_total{result="abandoned"} 0`,
				`pgwarden_cancel_requests_total{result="forwarded"} 0`,
				`pgwarden_cancel_requests_total{result="dropped"} 0`,
				`pgwarden_bans_active 0`,
				`pgwarden_bans_total 0`,
				`# TYPE go_goroutines gauge`,
			},
		},
		{
			name: "connection closed ok counts the connection, not a rejection",
			do: func(m *Prometheus) {
				m.ConnectionClosed("default", proxy.OutcomeOK, 3*time.Second)
			},
			wantLines: []string{
				`pgwarden_connections_total{outcome="ok",route="default"} 1`,
				`pgwarden_connection_duration_seconds_count{route="default"} 1`,
				`pgwarden_connection_duration_seconds_bucket{route="default",le="10"} 1`,
				`pgwarden_connection_duration_seconds_bucket{route="default",le="1"} 0`,
			},
			notLines: []string{`reason="ok"`},
		},
		{
			name: "proxy refusal also counts as a rejection",
			do: func(m *Prometheus) {
				m.ConnectionClosed("r1", proxy.OutcomeTLSRequired, time.Millisecond)
				m.ConnectionClosed("r1", proxy.OutcomeTooManyStartups, time.Millisecond)
				m.ConnectionClosed("r1", proxy.OutcomeUpstreamUnavailable, time.Millisecond)
			},
			wantLines: []string{
				`pgwarden_connections_total{outcome="tls_required",route="r1"} 1`,
				`pgwarden_rejections_total{reason="tls_required",route="r1"} 1`,
				`pgwarden_rejections_total{reason="too_many_startups",route="r1"} 1`,
				`pgwarden_connections_total{outcome="upstream_unavailable",route="r1"} 1`,
			},
			notLines: []string{`reason="upstream_unavailable"`},
		},
		{
			name: "accept-time rejections through OnReject, by route",
			do: func(m *Prometheus) {
				ip := netip.MustParseAddr("192.0.2.1")
				app, reports := m.OnReject("app"), m.OnReject("reports")
				app(acl.RejectBanned, ip)
				app(acl.RejectBanned, ip)
				app(acl.RejectNotAllowed, ip)
				reports(acl.RejectNotAllowed, ip)
			},
			wantLines: []string{
				`pgwarden_rejections_total{reason="banned",route="app"} 2`,
				`pgwarden_rejections_total{reason="not_allowed",route="app"} 1`,
				`pgwarden_rejections_total{reason="not_allowed",route="reports"} 1`,
			},
			notLines: []string{`pgwarden_rejections_total{reason="banned",route="reports"}`},
		},
		{
			name: "handshake histogram in ms buckets",
			do: func(m *Prometheus) {
				m.HandshakeCompleted("default", 3*time.Millisecond)
			},
			wantLines: []string{
				`pgwarden_handshake_seconds_bucket{route="default",le="0.0025"} 0`,
				`pgwarden_handshake_seconds_bucket{route="default",le="0.005"} 1`,
				`pgwarden_handshake_seconds_count{route="default"} 1`,
			},
		},
		{
			name: "bytes counters are resolved children",
			do: func(m *Prometheus) {
				up, down := m.BytesCounter("default", true), m.BytesCounter("default", false)
				up.Add(100)
				up.Add(23)
				down.Add(4096)
			},
			wantLines: []string{
				`pgwarden_relay_bytes_total{direction="to_upstream",route="default"} 123`,
				`pgwarden_relay_bytes_total{direction="to_client",route="default"} 4096`,
			},
		},
		{
			name: "sessions gauge goes up and down",
			do: func(m *Prometheus) {
				m.SessionsActive("default", 1)
				m.SessionsActive("default", 1)
				m.SessionsActive("default", -1)
			},
			wantLines: []string{`pgwarden_sessions_active{route="default"} 1`},
		},
		{
			name: "cancel requests",
			do: func(m *Prometheus) {
				m.CancelRequest(true)
				m.CancelRequest(false)
				m.CancelRequest(false)
			},
			wantLines: []string{
				`pgwarden_cancel_requests_total{result="forwarded"} 1`,
				`pgwarden_cancel_requests_total{result="dropped"} 2`,
			},
		},
		{
			name: "auth outcomes and failures, garbage sqlstate folded",
			do: func(m *Prometheus) {
				m.ObserveAuth(proxy.AuthOutcome{Result: proxy.AuthFailed, SQLState: "28P01"})
				m.ObserveAuth(proxy.AuthOutcome{Result: proxy.AuthSucceeded})
				m.AuthOutcome("failed")
				m.AuthFailure("not-a-sqlstate")
			},
			wantLines: []string{
				`pgwarden_auth_total{result="failed"} 2`,
				`pgwarden_auth_total{result="succeeded"} 1`,
				`pgwarden_auth_failures_total{sqlstate="28P01"} 1`,
				`pgwarden_auth_failures_total{sqlstate="other"} 1`,
			},
		},
		{
			name: "bans: counter via OnBan, gauge from the store",
			do: func(m *Prometheus) {
				m.OnBan(netip.MustParseAddr("192.0.2.1"), time.Now())
				m.BanImposed()
				m.SetBanStore(fixedBans(3))
			},
			wantLines: []string{
				`pgwarden_bans_total 2`,
				`pgwarden_bans_active 3`,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := New()
			tc.do(m)
			out := scrape(t, m)
			lines := map[string]bool{}
			for _, l := range strings.Split(out, "\n") {
				lines[l] = true
			}
			for _, want := range tc.wantLines {
				if !lines[want] {
					t.Errorf("missing line %q in:\n%s", want, grepPgwarden(out))
				}
			}
			for _, not := range tc.notLines {
				if strings.Contains(out, not) {
					t.Errorf("unexpected %q in:\n%s", not, grepPgwarden(out))
				}
			}
		})
	}
}

// TestPromMetricsNames pins every documented name: renaming one breaks
// dashboards, so it must be a deliberate change here too.
func TestPromMetricsNames(t *testing.T) {
	t.Parallel()
	m := New()
	m.AddRoute("default")
	m.ConnectionClosed("default", proxy.OutcomeOK, time.Second)
	m.HandshakeCompleted("default", time.Millisecond)
	m.BytesCounter("default", true).Add(1)
	m.SessionsActive("default", 1)
	m.AuthFailure("28P01")
	m.UpstreamDialed("default", true)
	m.CertificateExpiry("default", func() time.Time { return time.Unix(1800000000, 0) })
	out := scrape(t, m)
	for _, name := range []string{
		"pgwarden_connections_total", "pgwarden_connection_duration_seconds", "pgwarden_rejections_total",
		"pgwarden_auth_total", "pgwarden_auth_failures_total", "pgwarden_bans_active", "pgwarden_bans_total",
		"pgwarden_relay_bytes_total", "pgwarden_handshake_seconds", "pgwarden_sessions_active",
		"pgwarden_cancel_requests_total", "pgwarden_upstream_up", "pgwarden_certificate_expiry_timestamp_seconds",
		"pgwarden_grants_active", "pgwarden_grants_total", "pgwarden_grant_requests_total",
	} {
		if !strings.Contains(out, "# TYPE "+name+" ") {
			t.Errorf("metric %s not exposed", name)
		}
	}
}

// TestUpstreamUpFollowsTheLastDial: pgwarden_upstream_up is absent until
// the first connection to the upstream, then follows the last one.
func TestUpstreamUpFollowsTheLastDial(t *testing.T) {
	t.Parallel()
	m := New()
	require.NotContains(t, scrape(t, m), "pgwarden_upstream_up{")
	m.UpstreamDialed("app", false)
	require.Contains(t, scrape(t, m), `pgwarden_upstream_up{route="app"} 0`)
	m.UpstreamDialed("app", true)
	require.Contains(t, scrape(t, m), `pgwarden_upstream_up{route="app"} 1`)
	m.CertificateExpiry("app", func() time.Time { return time.Unix(1800000000, 0) })
	require.Contains(t, scrape(t, m), `pgwarden_certificate_expiry_timestamp_seconds{route="app"} 1.8e+09`)
}

func grepPgwarden(out string) string {
	var b strings.Builder
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "pgwarden_") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// TestEveryRefusalIsExported: each refusal in proxy's outcome table has its
// pgwarden_rejections_total series from the start, so none can be missing
// from dashboards, and no other outcome is counted as a refusal.
func TestEveryRefusalIsExported(t *testing.T) {
	t.Parallel()
	m := New()
	m.AddRoute("r")
	out := scrape(t, m)
	for _, r := range []string{"not_allowed", "banned"} {
		if line := fmt.Sprintf(`pgwarden_rejections_total{reason=%q,route="r"} 0`, r); !strings.Contains(out, line+"\n") {
			t.Errorf("missing %q", line)
		}
	}
	for _, o := range proxy.Outcomes() {
		line := fmt.Sprintf(`pgwarden_rejections_total{reason=%q,route="r"} 0`, o.String())
		if o.Refusal() != strings.Contains(out, line+"\n") {
			t.Errorf("outcome %s: refusal %v, but the scrape has %q: %v", o, o.Refusal(), line, strings.Contains(out, line))
		}
		m.ConnectionClosed("r", o, time.Millisecond)
	}
	out = scrape(t, m)
	for _, o := range proxy.Outcomes() {
		if want := fmt.Sprintf(`pgwarden_connections_total{outcome=%q,route="r"} 1`, o.String()); !strings.Contains(out, want) {
			t.Errorf("missing %q", want)
		}
	}
	for _, want := range []string{"cancel_rate_limited", "cancel_plaintext_refused", "cancel_cert_rejected", "tls_abuse"} {
		if !strings.Contains(out, fmt.Sprintf(`pgwarden_rejections_total{reason=%q,route="r"} 1`, want)) {
			t.Errorf("%s is not counted as a refusal", want)
		}
	}
}

// TestSeveralGatewaysMetrics: the PROXY, Redis and CrowdSec series exist
// only once their feature is enabled, and read what they are given.
func TestSeveralGatewaysMetrics(t *testing.T) {
	t.Parallel()
	m := New()
	m.AddRoute("r")
	m.ProxyHeaderFailed("timeout") // not enabled: nothing
	out := scrape(t, m)
	for _, name := range []string{"pgwarden_proxy_header_errors_total", "pgwarden_redis_up", "pgwarden_crowdsec_up", "pgwarden_crowdsec_decisions"} {
		if strings.Contains(out, name) {
			t.Errorf("%s exposed without its feature", name)
		}
	}
	if !strings.Contains(out, `pgwarden_rejections_total{reason="crowdsec",route="r"} 0`) {
		t.Error("the crowdsec rejection reason does not read 0 from the start")
	}

	up, decisions := false, 7
	m.EnableProxyProtocol([]string{"timeout", "no_header"})
	m.EnableRedis(func() bool { return up })
	m.EnableCrowdSec(func() bool { return !up }, func() int { return decisions })
	m.ProxyHeaderFailed("timeout")
	m.OnReject("r")(acl.RejectCrowdSec, netip.Addr{})
	out = grepPgwarden(scrape(t, m))
	for _, want := range []string{
		`pgwarden_proxy_header_errors_total{reason="timeout"} 1`,
		`pgwarden_proxy_header_errors_total{reason="no_header"} 0`,
		"pgwarden_redis_up 0",
		"pgwarden_crowdsec_up 1",
		"pgwarden_crowdsec_decisions 7",
		`pgwarden_rejections_total{reason="crowdsec",route="r"} 1`,
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
	up = true
	if out := scrape(t, m); !strings.Contains(out, "pgwarden_redis_up 1\n") {
		t.Error("pgwarden_redis_up is not read at scrape time")
	}
}
