// Package metrics is the Prometheus implementation of proxy.Metrics, plus
// the counters fed by the accept-time listener (acl), the authentication
// observer, the ban jail and the access grants (registry and endpoint). Its labels come from the tables of the
// packages that produce them (proxy.Outcomes, acl.Decision), so a new
// outcome is exported without an edit here.
package metrics

import (
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/internal/grantapi"
	"github.com/pgwarden/pgwarden/internal/grants"
	"github.com/pgwarden/pgwarden/proxy"
)

// Metric names. They are part of the interface (dashboards and alerts
// use them): renaming one, or a label, is a breaking change. The README
// lists the same set.
//
//	pgwarden_connections_total{route,outcome}          counter   connections the proxy handled, by outcome (proxy.Outcome: "ok", "tls_required", ...)
//	pgwarden_connection_duration_seconds{route}        histogram accept → close, every handled connection
//	pgwarden_rejections_total{route,reason}            counter   connections refused by policy: acl's reasons and the proxy.Outcome refusals
//	pgwarden_auth_total{result}                        counter   relayed authentications: "succeeded", "failed", "abandoned", "timed_out", "banned", "error"
//	pgwarden_auth_failures_total{sqlstate}             counter   failed authentications by postgres' SQLSTATE (28P01, 28000, ...)
//	pgwarden_bans_active                               gauge     unexpired bans in the jail, read at scrape time
//	pgwarden_bans_total                                counter   bans imposed, automatic and manual
//	pgwarden_relay_bytes_total{route,direction}        counter   relayed bytes, direction "to_upstream" or "to_client"
//	pgwarden_handshake_seconds{route}                  histogram accept → TLS handshake done
//	pgwarden_sessions_active{route}                    gauge     connections being handled now
//	pgwarden_cancel_requests_total{result}             counter   CancelRequests, "forwarded" or "dropped"
//	pgwarden_certificate_expiry_timestamp_seconds{route} gauge   the end of the route's server certificate (Unix time), read at scrape time
//	pgwarden_upstream_up{route}                        gauge     1 if the last connection to the route's upstream (a login's, /readyz's) opened, 0 if it failed
//	pgwarden_allow_hits_total{route,entry}             counter   connections each admission rule let in (package rulehits)
//	pgwarden_allow_last_hit_timestamp_seconds{route,entry} gauge the last of them (package rulehits)
//	pgwarden_grants_active                             gauge     access grants in force, read at scrape time
//	pgwarden_grants_total{via}                         counter   access grants made, "admin" or "oidc" (extensions not counted)
//	pgwarden_grant_requests_total{outcome}             counter   self-service grant requests by answer (grantapi.Outcome: "granted", "bad_token", ...)
//
// and, when the features are configured (several.go):
//
//	pgwarden_proxy_header_errors_total{reason}         counter   trusted balancers' connections without a valid PROXY header (proxyproto.Reason)
//	pgwarden_redis_up                                  gauge     1 while the fleet's Redis answers (--redis)
//	pgwarden_crowdsec_up                               gauge     1 while the last CrowdSec decision pull succeeded
//	pgwarden_crowdsec_decisions                        gauge     CrowdSec ban decisions held
//	pgwarden_crowdsec_alerts_total{result}             counter   the jail's bans pushed to CrowdSec: pushed, failed, dropped
//
// plus the standard go_* and process_* collectors.
const (
	metricConnections        = "pgwarden_connections_total"
	metricConnectionDuration = "pgwarden_connection_duration_seconds"
	metricRejections         = "pgwarden_rejections_total"
	metricAuth               = "pgwarden_auth_total"
	metricAuthFailures       = "pgwarden_auth_failures_total"
	metricBansActive         = "pgwarden_bans_active"
	metricBans               = "pgwarden_bans_total"
	metricRelayBytes         = "pgwarden_relay_bytes_total"
	metricHandshake          = "pgwarden_handshake_seconds"
	metricSessionsActive     = "pgwarden_sessions_active"
	metricCancelRequests     = "pgwarden_cancel_requests_total"
	metricCertExpiry         = "pgwarden_certificate_expiry_timestamp_seconds"
	metricUpstreamUp         = "pgwarden_upstream_up"
	metricGrantsActive       = "pgwarden_grants_active"
	metricGrants             = "pgwarden_grants_total"
	metricGrantRequests      = "pgwarden_grant_requests_total"
)

// Handshakes are accept → TLS done: a LAN round trip plus crypto is a few
// ms, a distant or loaded client tens to hundreds, and anything near the
// handshake timeout is a slow-loris.
var handshakeBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Connections range from a refused probe (ms) to a pooled session held for
// a day.
var connectionBuckets = []float64{.01, .1, 1, 10, 60, 300, 1800, 3600, 4 * 3600, 24 * 3600}

// BanCounter is what pgwarden_bans_active reads (the *acl.Jail).
type BanCounter interface{ ActiveBans() int }

// Prometheus is the Prometheus implementation of proxy.Metrics, plus the
// counters fed by the accept-time listener, the auth observer and the ban
// jail. It owns a private registry, so tests can build as many as they
// like and nothing a library registers globally leaks into /metrics.
type Prometheus struct {
	reg *prometheus.Registry

	connections  *prometheus.CounterVec
	connDuration *prometheus.HistogramVec
	rejections   *prometheus.CounterVec
	auth         *prometheus.CounterVec
	authFailures *prometheus.CounterVec
	bans         prometheus.Counter
	relayBytes   *prometheus.CounterVec
	handshake    *prometheus.HistogramVec
	sessions     *prometheus.GaugeVec
	cancels      *prometheus.CounterVec
	upstreamUp   *prometheus.GaugeVec
	grants       *prometheus.CounterVec
	grantReqs    *prometheus.CounterVec
	proxyHeader  *prometheus.CounterVec // registered by EnableProxyProtocol

	// banStore is read by the pgwarden_bans_active GaugeFunc. It is set
	// after construction (SetBanStore) because the jail is built with
	// OnBan pointing here: metrics first, then the jail.
	banStore atomic.Pointer[BanCounter]
	// grantStore is read by pgwarden_grants_active (SetGrantStore).
	grantStore atomic.Pointer[GrantCounter]
}

// GrantCounter is what pgwarden_grants_active reads (the
// *grants.Registry).
type GrantCounter interface{ Active() int }

var _ proxy.Metrics = (*Prometheus)(nil)

// New builds the metrics on a fresh registry with the Go and process
// collectors.
func New() *Prometheus {
	m := &Prometheus{
		reg: prometheus.NewRegistry(),
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricConnections,
			Help: "Connections the proxy handled, by route and outcome.",
		}, []string{"route", "outcome"}),
		connDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    metricConnectionDuration,
			Help:    "Time from accept to close of handled connections.",
			Buckets: connectionBuckets,
		}, []string{"route"}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricRejections,
			Help: "Connections refused by policy, by route and reason: at accept (not_allowed, banned) or by the proxy (tls_required, too_many_startups, ...).",
		}, []string{"route", "reason"}),
		auth: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricAuth,
			Help: "Relayed authentications by result (succeeded, failed, abandoned, timed_out, banned, error).",
		}, []string{"result"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricAuthFailures,
			Help: "Failed authentications by the SQLSTATE postgres sent.",
		}, []string{"sqlstate"}),
		bans: prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricBans,
			Help: "Bans imposed, automatic and manual.",
		}),
		relayBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricRelayBytes,
			Help: "Bytes relayed after authentication, by route and direction (to_upstream, to_client).",
		}, []string{"route", "direction"}),
		handshake: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    metricHandshake,
			Help:    "Time from accept to completed TLS handshake.",
			Buckets: handshakeBuckets,
		}, []string{"route"}),
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: metricSessionsActive,
			Help: "Connections being handled now, by route.",
		}, []string{"route"}),
		cancels: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricCancelRequests,
			Help: "CancelRequests received, by result (forwarded, dropped).",
		}, []string{"result"}),
		upstreamUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: metricUpstreamUp,
			Help: "1 if the last connection to the route's upstream (a login's, or /readyz's) opened, 0 if it failed.",
		}, []string{"route"}),
		grants: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricGrants,
			Help: "Access grants made, by who made them (admin, oidc); extensions are not counted.",
		}, []string{"via"}),
		grantReqs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricGrantRequests,
			Help: "Self-service grant requests, by answer (granted, extended, bad_token, no_rule, replayed, rate_limited, ...).",
		}, []string{"outcome"}),
	}
	bansActive := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: metricBansActive,
		Help: "Unexpired bans in the jail.",
	}, m.activeBans)
	grantsActive := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: metricGrantsActive,
		Help: "Access grants in force.",
	}, m.activeGrants)
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.connections, m.connDuration, m.rejections, m.auth, m.authFailures,
		m.bans, bansActive, m.relayBytes, m.handshake, m.sessions, m.cancels, m.upstreamUp,
		grantsActive, m.grants, m.grantReqs,
	)
	// Series that exist from the start read 0 instead of being absent, so
	// rate() and alerts work before the first event (the rejections' once
	// their route is known: AddRoute).
	for _, r := range []proxy.AuthResult{proxy.AuthSucceeded, proxy.AuthFailed, proxy.AuthAbandoned,
		proxy.AuthTimedOut, proxy.AuthBanned, proxy.AuthError} {
		m.auth.WithLabelValues(r.String())
	}
	m.cancels.WithLabelValues("forwarded")
	m.cancels.WithLabelValues("dropped")
	for _, via := range []string{grants.ViaAdmin, grants.ViaOIDC} {
		m.grants.WithLabelValues(via)
	}
	for _, o := range grantapi.Outcomes() {
		m.grantReqs.WithLabelValues(string(o))
	}
	return m
}

// AddRoute creates route's pgwarden_rejections_total series, every reason
// at 0, so that they exist before the first refusal.
func (m *Prometheus) AddRoute(route string) {
	for _, d := range acl.Rejections() {
		m.rejections.WithLabelValues(route, d.String())
	}
	for _, o := range proxy.Outcomes() {
		if o.Refusal() {
			m.rejections.WithLabelValues(route, o.String())
		}
	}
}

// Registry is what the admin endpoint serves at /metrics.
func (m *Prometheus) Registry() *prometheus.Registry { return m.reg }

// SetBanStore makes pgwarden_bans_active read b (the *acl.Jail). Until it
// is called the gauge reads 0.
func (m *Prometheus) SetBanStore(b BanCounter) { m.banStore.Store(&b) }

func (m *Prometheus) activeBans() float64 {
	if b := m.banStore.Load(); b != nil && *b != nil {
		return float64((*b).ActiveBans())
	}
	return 0
}

// SetGrantStore makes pgwarden_grants_active read g (the
// *grants.Registry). Until it is called the gauge reads 0.
func (m *Prometheus) SetGrantStore(g GrantCounter) { m.grantStore.Store(&g) }

func (m *Prometheus) activeGrants() float64 {
	if g := m.grantStore.Load(); g != nil && *g != nil {
		return float64((*g).Active())
	}
	return 0
}

// OnGrantChange has the signature of grants.Config.OnChange: it counts
// the grants made, by who made them. An unknown via (never written by
// the registry) is counted as "other" so the label set stays bounded.
func (m *Prometheus) OnGrantChange(c grants.Change) {
	if c.Kind != grants.ChangeCreated || c.Remote {
		return // grants made on other gateways count there
	}
	via := c.Grant.Via
	if via != grants.ViaAdmin && via != grants.ViaOIDC {
		via = "other"
	}
	m.grants.WithLabelValues(via).Inc()
}

// OnGrantRequest has the signature of grantapi.Config.OnOutcome.
func (m *Prometheus) OnGrantRequest(o grantapi.Outcome) {
	m.grantReqs.WithLabelValues(string(o)).Inc()
}

// ConnectionClosed implements proxy.Metrics. A refusal outcome also counts
// in pgwarden_rejections_total with the outcome as its reason.
func (m *Prometheus) ConnectionClosed(route string, outcome proxy.Outcome, d time.Duration) {
	m.connections.WithLabelValues(route, outcome.String()).Inc()
	m.connDuration.WithLabelValues(route).Observe(d.Seconds())
	if outcome.Refusal() {
		m.rejections.WithLabelValues(route, outcome.String()).Inc()
	}
}

// HandshakeCompleted implements proxy.Metrics.
func (m *Prometheus) HandshakeCompleted(route string, d time.Duration) {
	m.handshake.WithLabelValues(route).Observe(d.Seconds())
}

// BytesCounter implements proxy.Metrics. The child is resolved here, once
// per route and direction, so the relay's hot path is one atomic add with
// no label lookup.
func (m *Prometheus) BytesCounter(route string, toUpstream bool) proxy.Counter {
	dir := "to_client"
	if toUpstream {
		dir = "to_upstream"
	}
	return m.relayBytes.WithLabelValues(route, dir)
}

// CancelRequest implements proxy.Metrics.
func (m *Prometheus) CancelRequest(forwarded bool) {
	result := "dropped"
	if forwarded {
		result = "forwarded"
	}
	m.cancels.WithLabelValues(result).Inc()
}

// SessionsActive implements proxy.Metrics.
func (m *Prometheus) SessionsActive(route string, delta int) {
	m.sessions.WithLabelValues(route).Add(float64(delta))
}

// Rejected counts one accept-time refusal ("not_allowed", "banned") on a
// route. Proxy refusals arrive through ConnectionClosed instead.
func (m *Prometheus) Rejected(route, reason string) {
	m.rejections.WithLabelValues(route, reason).Inc()
}

// OnReject returns a function with the signature of
// acl.ListenerConfig.OnReject counting route's accept-time refusals.
func (m *Prometheus) OnReject(route string) func(acl.Decision, netip.Addr) {
	return func(d acl.Decision, _ netip.Addr) { m.Rejected(route, d.String()) }
}

// AuthOutcome counts one relayed authentication by result
// (proxy.AuthResult.String(): "succeeded", "failed", "abandoned").
func (m *Prometheus) AuthOutcome(result string) {
	m.auth.WithLabelValues(result).Inc()
}

// AuthFailure counts one failed authentication by the SQLSTATE postgres
// sent. Anything that is not a well-formed SQLSTATE is counted as "other"
// so a misbehaving upstream cannot grow the label set without bound.
func (m *Prometheus) AuthFailure(sqlstate string) {
	if !isSQLState(sqlstate) {
		sqlstate = "other"
	}
	m.authFailures.WithLabelValues(sqlstate).Inc()
}

// ObserveAuth implements proxy.AuthObserver with AuthOutcome and
// AuthFailure, for an observer that fans out to the jail and to metrics.
func (m *Prometheus) ObserveAuth(o proxy.AuthOutcome) {
	m.AuthOutcome(o.Result.String())
	if o.Result == proxy.AuthFailed {
		m.AuthFailure(o.SQLState)
	}
}

// CertificateExpiry exports the end of route's server certificate
// (pgwarden_certificate_expiry_timestamp_seconds{route}); notAfter is read
// at each scrape, so a reloaded certificate shows at once. Dashboards show
// the days left, alerts fire before it ends.
func (m *Prometheus) CertificateExpiry(route string, notAfter func() time.Time) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        metricCertExpiry,
		Help:        "When the route's server certificate expires (Unix time).",
		ConstLabels: prometheus.Labels{"route": route},
	}, func() float64 { return float64(notAfter().Unix()) }))
}

// UpstreamDialed implements proxy.Metrics: pgwarden_upstream_up{route}
// is 1 when the last connection the gateway opened to the route's
// upstream (for a login, or for /readyz) succeeded, 0 when it failed, and
// absent before the first. The gateway never dials postgres just for a
// scrape: every connection shows in postgres's log.
func (m *Prometheus) UpstreamDialed(route string, ok bool) {
	v := 0.0
	if ok {
		v = 1
	}
	m.upstreamUp.WithLabelValues(route).Set(v)
}

// BanImposed counts one ban (automatic or manual).
func (m *Prometheus) BanImposed() { m.bans.Inc() }

// OnBan has the signature of acl.JailConfig.OnBan, so the jail can be
// wired with OnBan: metrics.OnBan.
func (m *Prometheus) OnBan(netip.Addr, time.Time) { m.BanImposed() }

// isSQLState reports whether s is five characters of digits and upper-case
// letters, the form every SQLSTATE takes.
func isSQLState(s string) bool {
	if len(s) != 5 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'A' || c > 'Z') {
			return false
		}
	}
	return true
}
