package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/internal/certstest"
	"github.com/pgwarden/pgwarden/internal/fielderr"
	"github.com/pgwarden/pgwarden/proxy"
)

// reloadable runs a gateway whose Reread returns *next, and its log.
type reloadable struct {
	g    *Gateway
	next *Config
	logs *observer.ObservedLogs
	ca   *certstest.CA
	addr string
}

var testNames = fielderr.Names{
	FieldListen:              "--listen",
	FieldUpstream:            "--upstream",
	FieldMaxStartups:         "--max-startups",
	acl.FieldMaxRetry:        "--ban-max-retry",
	acl.FieldAllow:           "--allow",
	FieldMaxUpstreamStartups: "--max-upstream-startups",
}

func startReloadable(t *testing.T, mutate ...func(*Config)) *reloadable {
	t.Helper()
	cfg := testConfig(t)
	cfg.Route.Allow = []string{"127.0.0.1"}
	for _, m := range mutate {
		m(cfg)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	rl := &reloadable{next: cfg.clone(), logs: logs}
	g, err := New(cfg, Options{
		Logger: zap.New(core),
		Names:  testNames,
		Reread: func() (*Config, error) { return rl.next.clone(), nil },
	})
	require.NoError(t, err)
	rl.g = g
	rl.addr = g.Routes()[0].Listeners[0].String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	require.Eventually(t, func() bool { return logs.FilterMessage("pgwarden started").Len() == 1 }, 10*time.Second, 5*time.Millisecond)
	return rl
}

// handshake starts TLS with the gateway (SSLRequest, then a handshake no
// newer than maxVersion) and returns the certificate it served.
func (rl *reloadable) handshake(maxVersion uint16) (*x509.Certificate, error) {
	c, err := net.DialTimeout("tcp", rl.addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	req := make([]byte, 8)
	binary.BigEndian.PutUint32(req, 8)
	binary.BigEndian.PutUint32(req[4:], 80877103)
	if _, err := c.Write(req); err != nil {
		return nil, err
	}
	b := make([]byte, 1)
	if _, err := c.Read(b); err != nil || b[0] != 'S' {
		return nil, fmt.Errorf("SSLRequest answered %q: %v", b, err)
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, MaxVersion: maxVersion, NextProtos: []string{"postgresql"}})
	if err := tc.Handshake(); err != nil {
		return nil, err
	}
	return tc.ConnectionState().PeerCertificates[0], nil
}

func (rl *reloadable) lastMessage(msg string) observer.LoggedEntry {
	entries := rl.logs.FilterMessage(msg).All()
	if len(entries) == 0 {
		return observer.LoggedEntry{}
	}
	return entries[len(entries)-1]
}

func writePair(t *testing.T, ca *certstest.CA) (cert, key string) {
	t.Helper()
	dir := t.TempDir()
	certPEM, keyPEM := ca.Server(t, "localhost")
	cert, key = filepath.Join(dir, "new.crt"), filepath.Join(dir, "new.key")
	require.NoError(t, os.WriteFile(cert, certPEM, 0o600))
	require.NoError(t, os.WriteFile(key, keyPEM, 0o600))
	return cert, key
}

// TestReloadPutsEverythingInForce: one SIGHUP changes the allowlist, the
// certificate files, the TLS minimum version, the cancel policy, every
// timeout and cap, the ban settings and the cancel limits, each observed
// working; listen address and upstream changes are logged as waiting for a
// restart and keep running as they were.
func TestReloadPutsEverythingInForce(t *testing.T) {
	rl := startReloadable(t)
	g := rl.g
	before, err := rl.handshake(tls.VersionTLS12)
	require.NoError(t, err, "TLS 1.2 is accepted before the reload")
	for range 4 { // five failures ban under the start configuration
		g.jail.Failed(netip.MustParseAddr("203.0.113.9"), acl.Failure{SQLState: "28P01"})
	}
	require.False(t, g.jail.Banned(netip.MustParseAddr("203.0.113.9")))

	n := rl.next
	n.Route.Allow = []string{"127.0.0.1", "127.0.0.2"}
	n.Route.TLSCert, n.Route.TLSKey = writePair(t, certstest.NewCA(t))
	n.Route.TLSMinVersion = "1.3"
	n.Route.CancelPlaintext = "deny"
	n.Route.Listen = []string{"127.0.0.1:1"}
	n.Route.Upstream = "127.0.0.1:2"
	n.HandshakeTimeout, n.AuthTimeout, n.AuthStepTimeout = 5*time.Second, 30*time.Second, 3*time.Second
	n.MaxStartups, n.MaxStartupsPerIP, n.MaxUpstreamStartups = 7, 3, 4
	n.BanMaxRetry, n.BanIgnore = 2, []string{"192.0.2.0/24"}
	n.CancelRate, n.CancelBurst, n.CancelUnknownPerFailure = 3, 4, 5
	n.DrainTimeout = 2 * time.Second
	g.Reload()

	reloaded := rl.lastMessage("configuration reloaded")
	require.NotNil(t, reloaded.Context, "no reload line in %v", rl.logs.All())
	changed := reloaded.ContextMap()["changed"]
	for _, name := range []string{"--allow", "certificate file", "key file", "minimum TLS version", "CancelPlaintext", "HandshakeTimeout", "AuthTimeout",
		"AuthStepTimeout", "--max-startups", "MaxStartupsPerIP", "--max-upstream-startups", "--ban-max-retry", "Ignore",
		"CancelRate", "CancelBurst", "CancelUnknownPerFailure", "DrainTimeout"} {
		require.Contains(t, changed, name)
	}
	restart := rl.lastMessage("settings changed that take effect only after a restart; they keep their running values until then")
	require.Equal(t, []any{"--listen", "--upstream"}, restart.ContextMap()["restart_needed"])

	route := g.Routes()[0]
	require.Equal(t, "127.0.0.1/32, 127.0.0.2/32", route.Allow.String())
	require.Equal(t, "tcp:127.0.0.1:5432", route.Upstream.String(), "the upstream waits for a restart")
	require.Equal(t, rl.addr, route.Listeners[0].String())
	_, err = rl.handshake(tls.VersionTLS12)
	require.Error(t, err, "TLS 1.2 is refused after --tls-min-version 1.3")
	after, err := rl.handshake(tls.VersionTLS13)
	require.NoError(t, err)
	require.NotEqual(t, before.SerialNumber, after.SerialNumber, "the new certificate file is served")

	tun := g.routes[0].server.Tunables()
	require.Equal(t, proxy.PlaintextCancelDeny, tun.PlaintextCancel)
	require.Equal(t, 5*time.Second, tun.HandshakeTimeout)
	require.Equal(t, 30*time.Second, tun.AuthTimeout)
	require.Equal(t, 3*time.Second, tun.AuthStepTimeout)
	require.Equal(t, 7, tun.MaxStartups)
	require.Equal(t, 3, tun.MaxStartupsPerIP)
	require.Equal(t, 4, g.upstream.Max())
	limits := g.cancel.Limits()
	require.Equal(t, 3.0, limits.Rate)
	require.Equal(t, 4, limits.Burst)
	require.Equal(t, 5, limits.UnknownPerFailure)
	require.Equal(t, int64(2*time.Second), g.drainTimeout.Load())

	// The jail counts with the new threshold: the earlier four failures
	// are still in the window, so the next one bans; an ignored source is
	// never banned.
	banned, _ := g.jail.Failed(netip.MustParseAddr("203.0.113.9"), acl.Failure{SQLState: "28P01"})
	require.True(t, banned)
	for range 3 {
		g.jail.Failed(netip.MustParseAddr("192.0.2.7"), acl.Failure{SQLState: "28P01"})
	}
	require.False(t, g.jail.Banned(netip.MustParseAddr("192.0.2.7")), "--ban-ignore reloaded")

	// A second SIGHUP with nothing new: nothing changed, the restart-only
	// settings are still reported.
	g.Reload()
	require.Equal(t, 1, rl.logs.FilterMessage("configuration reloaded; no setting changed (certificate and CA files were re-read)").Len())
	require.Equal(t, 2, rl.logs.FilterMessage("settings changed that take effect only after a restart; they keep their running values until then").Len())
}

// TestReloadIsAllOrNothing: a configuration with several broken parts is
// refused whole; the log names every problem and nothing changes, not even
// the parts that were fine.
func TestReloadIsAllOrNothing(t *testing.T) {
	rl := startReloadable(t)
	g := rl.g
	missing := filepath.Join(t.TempDir(), "missing.crt")
	n := rl.next
	n.Route.Allow = []string{"127.0.0.2", "010.0.0.1"}
	n.Route.TLSCert = missing
	n.Route.TLSMinVersion = "1.3"
	n.MaxStartups = 7
	n.BanMaxRetry = 0
	n.BanIgnore = []string{"not-an-ip"}
	g.Reload()

	failed := rl.lastMessage("configuration reload failed; the running configuration stays in force, nothing changed")
	require.NotNil(t, failed.Context, "no failure line in %v", rl.logs.All())
	require.Equal(t, zapcore.ErrorLevel, failed.Level)
	text := failed.ContextMap()["error"].(string)
	for _, want := range []string{"010.0.0.1", missing, "MaxRetry must be at least 1", "not-an-ip"} {
		require.Contains(t, text, want)
	}
	require.Zero(t, rl.logs.FilterMessage("configuration reloaded").Len())

	require.Equal(t, "127.0.0.1/32", g.Routes()[0].Allow.String())
	_, err := rl.handshake(tls.VersionTLS12)
	require.NoError(t, err, "the minimum version stayed 1.2")
	require.Equal(t, 10, g.routes[0].server.Tunables().MaxStartups)
	for range 4 {
		g.jail.Failed(netip.MustParseAddr("203.0.113.9"), acl.Failure{SQLState: "28P01"})
	}
	require.False(t, g.jail.Banned(netip.MustParseAddr("203.0.113.9")), "the ban threshold stayed 5")

	// Fixed, the same reload goes through.
	n.Route.Allow = []string{"127.0.0.2"}
	n.Route.TLSCert = g.cfg.Route.TLSCert
	n.BanMaxRetry, n.BanIgnore = 5, nil
	g.Reload()
	require.Equal(t, 1, rl.logs.FilterMessage("configuration reloaded").Len(), "%v", rl.logs.All())
	require.Equal(t, 7, g.routes[0].server.Tunables().MaxStartups)
	_, err = rl.handshake(tls.VersionTLS12)
	require.Error(t, err)
}

// TestReloadRereadsFilesInPlace: certificate files rewritten under the
// same paths are re-read by a reload, and a broken one refuses it whole.
func TestReloadRereadsFilesInPlace(t *testing.T) {
	rl := startReloadable(t)
	first, err := rl.handshake(tls.VersionTLS13)
	require.NoError(t, err)
	cert, key := rl.g.cfg.Route.TLSCert, rl.g.cfg.Route.TLSKey
	certPEM, keyPEM := certstest.NewCA(t).Server(t, "localhost")

	require.NoError(t, os.WriteFile(key, []byte("not a key"), 0o600))
	rl.next.MaxStartups = 9
	rl.g.Reload()
	require.Equal(t, 1, rl.logs.FilterMessage("configuration reload failed; the running configuration stays in force, nothing changed").Len())
	require.Equal(t, 10, rl.g.routes[0].server.Tunables().MaxStartups)
	same, err := rl.handshake(tls.VersionTLS13)
	require.NoError(t, err)
	require.Equal(t, first.SerialNumber, same.SerialNumber)

	require.NoError(t, os.WriteFile(cert, certPEM, 0o600))
	require.NoError(t, os.WriteFile(key, keyPEM, 0o600))
	rl.g.Reload()
	next, err := rl.handshake(tls.VersionTLS13)
	require.NoError(t, err)
	require.NotEqual(t, first.SerialNumber, next.SerialNumber)
	require.Equal(t, 9, rl.g.routes[0].server.Tunables().MaxStartups)
	require.True(t, strings.Contains(fmt.Sprint(rl.lastMessage("configuration reloaded").ContextMap()["changed"]), "--max-startups"))
}

// TestReloadTrustedBalancers: the balancers a route takes PROXY headers
// from change with a reload while the route has some; turning PROXY
// protocol off (or on) needs new listeners, so it waits for a restart.
func TestReloadTrustedBalancers(t *testing.T) {
	rl := startReloadable(t, func(c *Config) { c.Route.ProxyProtocolFrom = []string{"127.0.0.9"} })
	src := rl.g.routes[0].sources
	require.True(t, src.trusted.Load().ContainsAddr(netip.MustParseAddr("127.0.0.9")))

	rl.next.Route.ProxyProtocolFrom = []string{"127.0.0.8"}
	rl.next.ProxyProtocolTimeout = time.Second
	rl.g.Reload()
	require.Contains(t, rl.lastMessage("configuration reloaded").ContextMap()["changed"], "proxy-protocol-from")
	require.False(t, src.trusted.Load().ContainsAddr(netip.MustParseAddr("127.0.0.9")))
	require.True(t, src.trusted.Load().ContainsAddr(netip.MustParseAddr("127.0.0.8")))
	require.Equal(t, int64(time.Second), src.timeout.Load())

	rl.next.Route.ProxyProtocolFrom = nil
	rl.g.Reload()
	restart := rl.lastMessage("settings changed that take effect only after a restart; they keep their running values until then")
	require.Contains(t, restart.ContextMap()["restart_needed"], "proxy-protocol-from")
	require.True(t, src.trusted.Load().ContainsAddr(netip.MustParseAddr("127.0.0.8")), "still in force until a restart")
}
