package admin

import (
	"errors"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/internal/fielderr"
	"github.com/pgwarden/pgwarden/internal/netaddr"
)

// FieldMetricsAddr is MetricsConfig.Addr.
var FieldMetricsAddr = fielderr.Field{Pkg: "admin", Name: "metrics address"}

// MetricsConfig configures NewMetrics.
type MetricsConfig struct {
	// Addr is where it listens: HOST:PORT, any address (ValidateMetricsAddr).
	Addr string
	// Ready is /readyz, as Config.Ready. Required.
	Ready func() error
	// Registry is served at /metrics. Required.
	Registry *prometheus.Registry
	// Logger receives the endpoint's errors; nil means none.
	Logger *zap.Logger
}

// NewMetrics returns the read-only endpoint: /metrics, /healthz and
// /readyz, and nothing else (no /bans, no Config.Handlers). It is for an
// address other hosts reach: Prometheus scraping a container, an
// orchestrator's probes. Since nothing it serves changes state, it may
// listen on any address, and answers whatever Host a request names; it has
// no authentication, so bind it where only monitoring reaches. Nothing is
// bound until Start.
func NewMetrics(cfg MetricsConfig) (*Server, error) {
	bind, err := ValidateMetricsAddr(cfg.Addr)
	if err != nil {
		return nil, err
	}
	if cfg.Ready == nil || cfg.Registry == nil {
		return nil, errors.New("metrics endpoint: Ready and Registry are required")
	}
	ready := &cachedReady{check: cfg.Ready, now: time.Now}
	return newServer(bind, Config{Addr: cfg.Addr, Ready: ready.Ready, Registry: cfg.Registry, Logger: cfg.Logger}, "metrics endpoint", true), nil
}

// readyInterval is how long a readiness answer of the read-only endpoint
// is reused.
const readyInterval = time.Second

// cachedReady runs a readiness check at most once per readyInterval,
// whoever asks how often: the gateway's check dials every upstream, and
// postgres forks a backend for each connection it accepts, so requests to
// an endpoint other hosts reach must not set the rate of those dials.
// Requests that arrive while a check runs wait for it and share its answer.
type cachedReady struct {
	check func() error
	now   func() time.Time

	mu  sync.Mutex
	at  time.Time
	err error
}

func (c *cachedReady) Ready() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := c.now(); c.at.IsZero() || now.Sub(c.at) >= readyInterval || now.Before(c.at) {
		c.err = c.check()
		c.at = c.now()
	}
	return c.err
}

// ValidateMetricsAddr checks a metrics endpoint address, HOST:PORT with
// HOST an IP, a name, or empty for every interface (":9188"), and returns
// the address to bind. Port 0 (any free port) is allowed.
func ValidateMetricsAddr(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", errorf("%s %q: expected HOST:PORT: %w (e.g. %s :9188 for every interface, or an address of this host)", FieldMetricsAddr, addr, err, FieldMetricsAddr)
	}
	if _, err := netaddr.Port(port, 0); err != nil {
		return "", errorf("%s %q: %w", FieldMetricsAddr, addr, err)
	}
	return net.JoinHostPort(host, port), nil
}
