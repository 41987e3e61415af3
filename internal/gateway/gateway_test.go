package gateway

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/pgwarden/pgwarden/internal/certstest"
)

// testConfig is a one-route gateway on 127.0.0.1:0 in front of an upstream
// nothing dials in these tests.
func testConfig(t *testing.T) *Config {
	t.Helper()
	dir := t.TempDir()
	certPEM, keyPEM := certstest.NewCA(t).Server(t, "localhost")
	cert, key := filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	require.NoError(t, os.WriteFile(cert, certPEM, 0o600))
	require.NoError(t, os.WriteFile(key, keyPEM, 0o600))
	return &Config{
		Route: RouteConfig{Listen: []string{"127.0.0.1:0"}, Upstream: "127.0.0.1:5432", Allow: []string{"127.0.0.1"},
			TLSCert: cert, TLSKey: key},
		HandshakeTimeout: 10 * time.Second, AuthTimeout: time.Minute, AuthStepTimeout: 10 * time.Second,
		DrainTimeout: time.Second, MaxStartups: 10, MaxStartupsPerIP: 10, MaxUpstreamStartups: 10,
		BanMaxRetry: 5, BanFindTime: time.Minute, BanTime: time.Minute, BanTimeFactor: 2, BanMaxTime: time.Hour,
		CancelRate: 10, CancelBurst: 50, Relay: "auto",
	}
}

// events records the hooks in the order they ran.
type events struct {
	mu  sync.Mutex
	got []string
}

func (e *events) hook(name string) func() {
	return func() { e.mu.Lock(); e.got = append(e.got, name); e.mu.Unlock() }
}

func (e *events) all() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.got...)
}

// TestLifecycleHooksAndRoutes runs a gateway through its life: the hooks
// a supervisor follows fire in order, and Routes describes what listens.
func TestLifecycleHooksAndRoutes(t *testing.T) {
	var ev events
	cfg := testConfig(t)
	rereads := 0
	g, err := New(cfg, Options{
		Logger: zaptest.NewLogger(t),
		Hooks:  Hooks{Ready: ev.hook("ready"), Reloading: ev.hook("reloading"), Reloaded: ev.hook("reloaded"), Stopping: ev.hook("stopping")},
		Reread: func() (*Config, error) { rereads++; c := *cfg; c.Route.Allow = []string{"127.0.0.2"}; return &c, nil },
	})
	require.NoError(t, err)

	routes := g.Routes()
	require.Len(t, routes, 1)
	require.Equal(t, "default", routes[0].Name)
	require.Len(t, routes[0].Listeners, 1)
	require.Equal(t, "tcp:127.0.0.1:5432", routes[0].Upstream.String())
	require.Equal(t, "127.0.0.1/32", routes[0].Allow.String())

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	require.Eventually(t, func() bool { return len(ev.all()) > 0 }, 10*time.Second, 10*time.Millisecond)
	g.Reload()
	require.Equal(t, 1, rereads)
	require.Equal(t, "127.0.0.2/32", g.Routes()[0].Allow.String(), "the reload swapped the allowlist")
	cancel()
	require.NoError(t, <-done)
	require.Equal(t, []string{"ready", "reloading", "reloaded", "stopping"}, ev.all())
}

// TestBuildBindsNothing: a configuration check builds the gateway without
// taking its addresses, and reports every problem as a ConfigError.
func TestBuildBindsNothing(t *testing.T) {
	cfg := testConfig(t)
	g, err := Build(cfg, Options{})
	require.NoError(t, err)
	require.Empty(t, g.Routes()[0].Listeners)
	require.NoError(t, g.Close())

	cfg.Route.Allow, cfg.MaxStartups = nil, 0
	_, err = Build(cfg, Options{})
	var ce *ConfigError
	require.ErrorAs(t, err, &ce)
	require.ErrorContains(t, err, "no allowlist")
	require.ErrorContains(t, err, "MaxStartups and MaxStartupsPerIP must be at least 1")
}
