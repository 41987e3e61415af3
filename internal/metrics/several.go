package metrics

import "github.com/prometheus/client_golang/prometheus"

// Metrics of a gateway that runs with others: behind a load balancer
// (PROXY protocol), sharing state on Redis, pulling CrowdSec decisions.
// Each set is registered only when its feature is configured, so a gauge
// reading 0 always means "down", never "not in use".
const (
	metricProxyHeaderErrors = "pgwarden_proxy_header_errors_total"
	metricRedisUp           = "pgwarden_redis_up"
	metricCrowdSecUp        = "pgwarden_crowdsec_up"
	metricCrowdSecDecisions = "pgwarden_crowdsec_decisions"
	metricCrowdSecAlerts    = "pgwarden_crowdsec_alerts_total"
)

// EnableProxyProtocol registers pgwarden_proxy_header_errors_total with
// every reason reading 0. Call it once, before ProxyHeaderFailed.
func (m *Prometheus) EnableProxyProtocol(reasons []string) {
	m.proxyHeader = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: metricProxyHeaderErrors,
		Help: "Connections from trusted load balancers closed without a valid PROXY protocol header, by reason.",
	}, []string{"reason"})
	m.reg.MustRegister(m.proxyHeader)
	for _, r := range reasons {
		m.proxyHeader.WithLabelValues(r)
	}
}

// ProxyHeaderFailed counts one connection from a trusted balancer that sent
// no valid PROXY header (reason: proxyproto.Reason).
func (m *Prometheus) ProxyHeaderFailed(reason string) {
	if m.proxyHeader != nil {
		m.proxyHeader.WithLabelValues(reason).Inc()
	}
}

// EnableRedis registers pgwarden_redis_up, reading up at scrape time.
func (m *Prometheus) EnableRedis(up func() bool) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: metricRedisUp,
		Help: "1 while the Redis the fleet shares its state on answers, 0 during an outage.",
	}, func() float64 { return boolGauge(up()) }))
}

// EnableCrowdSec registers pgwarden_crowdsec_up and
// pgwarden_crowdsec_decisions, read at scrape time.
func (m *Prometheus) EnableCrowdSec(up func() bool, decisions func() int) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: metricCrowdSecUp,
			Help: "1 while the last pull of CrowdSec's decision stream succeeded; 0 while the LAPI is unreachable (the last known decisions stay in force).",
		}, func() float64 { return boolGauge(up()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: metricCrowdSecDecisions,
			Help: "CrowdSec ban decisions held (for IPs and ranges).",
		}, func() float64 { return float64(decisions()) }),
	)
}

// EnableCrowdSecAlerts registers pgwarden_crowdsec_alerts_total, by
// result, read at scrape time: pushed (the LAPI accepted the alert),
// failed (it refused it; not retried) and dropped (never sent: the queue
// was full, or the ban ended before the LAPI could be reached).
func (m *Prometheus) EnableCrowdSecAlerts(pushed, failed, dropped func() uint64) {
	for _, r := range []struct {
		result string
		read   func() uint64
	}{{"pushed", pushed}, {"failed", failed}, {"dropped", dropped}} {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        metricCrowdSecAlerts,
			Help:        "The jail's bans pushed to CrowdSec's LAPI as alerts, by result: pushed, failed (refused by the LAPI), dropped (never sent: the queue was full or the ban ended first).",
			ConstLabels: prometheus.Labels{"result": r.result},
		}, func() float64 { return float64(r.read()) }))
	}
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
