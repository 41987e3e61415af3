package rulehits

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metric names (see package metrics for the whole set).
const (
	MetricHits    = "pgwarden_allow_hits_total"
	MetricLastHit = "pgwarden_allow_last_hit_timestamp_seconds"
)

var (
	descHits = prometheus.NewDesc(MetricHits,
		"Connections each admission rule let in, by route and entry (an allowlist prefix, or grant:ID); persisted across restarts.",
		[]string{"route", "entry"}, nil)
	descLastHit = prometheus.NewDesc(MetricLastHit,
		"When each admission rule last let a connection in (Unix time); absent for a rule that never did.",
		[]string{"route", "entry"}, nil)
)

// Collector exports the counts at scrape time, so counting costs the
// accept path nothing beyond the cell's atomics. The hits include those
// from before a restart, so the series continues where it stopped.
func (c *Counter) Collector() prometheus.Collector { return collector{c} }

type collector struct{ c *Counter }

func (collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descHits
	ch <- descLastHit
}

func (x collector) Collect(ch chan<- prometheus.Metric) {
	for _, h := range x.c.List() {
		ch <- prometheus.MustNewConstMetric(descHits, prometheus.CounterValue, float64(h.Hits), h.Route, h.Entry)
		if h.LastHit != nil {
			ch <- prometheus.MustNewConstMetric(descLastHit, prometheus.GaugeValue, float64(h.LastHit.UnixNano())/1e9, h.Route, h.Entry)
		}
	}
}
