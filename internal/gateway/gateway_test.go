package gateway

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/pgwarden/pgwarden/acl"
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

// TestBanIgnoreSelf: with BanIgnoreSelf the host's own addresses are never
// banned, and a reload re-reads them.
func TestBanIgnoreSelf(t *testing.T) {
	cfg := testConfig(t)
	cfg.BanIgnoreSelf = true
	var mu sync.Mutex
	own := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")}
	g, err := Build(cfg, Options{Logger: zaptest.NewLogger(t), ownAddrs: func() ([]netip.Addr, error) {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(own), nil
	}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = g.Close() })
	fail := func(s string) bool {
		var banned bool
		for range cfg.BanMaxRetry {
			banned, _ = g.jail.Failed(netip.MustParseAddr(s), acl.Failure{SQLState: "28P01"})
		}
		return banned
	}
	require.False(t, fail("127.0.0.1"), "an own address was banned")
	require.True(t, fail("127.0.0.2"), "127.0.0.2 is not an own address")
	require.True(t, fail("203.0.113.9"))
	require.NoError(t, g.jail.Unban("203.0.113.9"))

	// An address appears on an interface: after the reload it is ignored.
	mu.Lock()
	own = append(own, netip.MustParseAddr("203.0.113.9"))
	mu.Unlock()
	g.Reload()
	require.False(t, fail("203.0.113.9"), "the reload did not re-read the own addresses")

	// Without BanIgnoreSelf, 127.0.0.1 is a source like any other.
	cfg = testConfig(t)
	g2, err := Build(cfg, Options{ownAddrs: func() ([]netip.Addr, error) { t.Fatal("read without BanIgnoreSelf"); return nil, nil }})
	require.NoError(t, err)
	t.Cleanup(func() { _ = g2.Close() })
	banned := false
	for range cfg.BanMaxRetry {
		banned, _ = g2.jail.Failed(netip.MustParseAddr("127.0.0.1"), acl.Failure{SQLState: "28P01"})
	}
	require.True(t, banned)
}
