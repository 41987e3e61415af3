package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/pgtest"
)

// TestSIGHUPReloadsAllowlist edits the config file's allow list and sends
// SIGHUP: the next connection is judged by the new list, an established
// session is untouched, and a broken edit keeps the previous list.
func TestSIGHUPReloadsAllowlist(t *testing.T) {
	pg := pgtest.Start(t)
	certFile, keyFile, caFile := tlsFiles(t)
	port := freePort(t)
	cfgFile := filepath.Join(t.TempDir(), "pgwarden.yaml")
	writeCfg := func(allow string) { writeServeConfig(t, cfgFile, port, pg.Addr(), certFile, keyFile, allow, "") }
	writeCfg("127.0.0.2/32")
	g := startBinary(t, "--config", cfgFile)

	connect := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=verify-full sslrootcert=%s",
			port, pg.User, pg.Password, pg.Database, caFile))
		if err == nil {
			_ = c.Close(ctx)
		}
		return err
	}
	require.Error(t, connect(), "127.0.0.1 is not in the allowlist yet")

	writeCfg("127.0.0.1/32")
	require.NoError(t, g.cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool { return connect() == nil }, 10*time.Second, 50*time.Millisecond)

	// A broken edit is refused and the working list stays.
	writeCfg("010.0.0.1")
	require.NoError(t, g.cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool {
		for _, l := range g.logLines() {
			if l["msg"] == "configuration reload failed; the running configuration stays in force, nothing changed" {
				return true
			}
		}
		return false
	}, 10*time.Second, 50*time.Millisecond)
	require.NoError(t, connect())
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
	require.NoError(t, err)
	c.Close()
}

// TestSIGHUPReloadsBanSettingsAndTLSVersion: settings that only applied at
// start before now change with SIGHUP, through the config file: after
// lowering ban-max-retry to 1 one wrong password bans the source, and after
// tls-min-version 1.3 a TLS 1.2 client is refused. The log names what
// changed, and that a changed listen address waits for a restart.
func TestSIGHUPReloadsBanSettingsAndTLSVersion(t *testing.T) {
	pg := pgtest.Start(t)
	certFile, keyFile, caFile := tlsFiles(t)
	port := freePort(t)
	cfgFile := filepath.Join(t.TempDir(), "pgwarden.yaml")
	writeCfg := func(extra string) {
		writeServeConfig(t, cfgFile, port, pg.Addr(), certFile, keyFile, "127.0.0.0/8", extra)
	}
	writeCfg("")
	g := startBinary(t, "--config", cfgFile)
	connect := func(source, password string, maxTLS uint16) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=verify-full sslrootcert=%s",
			port, pg.User, password, pg.Database, caFile))
		require.NoError(t, err)
		cfg.TLSConfig.MaxVersion = maxTLS
		cfg.DialFunc = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}).DialContext
		c, err := pgconn.ConnectConfig(ctx, cfg)
		if err == nil {
			_ = c.Close(ctx)
		}
		return err
	}
	require.NoError(t, connect("127.0.0.1", pg.Password, tls.VersionTLS12))
	require.Error(t, connect("127.0.0.2", "wrong", tls.VersionTLS13))
	require.NoError(t, connect("127.0.0.2", pg.Password, tls.VersionTLS13), "one failure of five does not ban")

	mark := len(g.logLines())
	writeCfg(fmt.Sprintf("ban-max-retry: 1\ntls-min-version: \"1.3\"\nlisten: [127.0.0.1:%d, 127.0.0.1:%d]\n", port, freePort(t)))
	// listen appears twice in the file now: the YAML is refused whole.
	require.NoError(t, g.cmd.Process.Signal(syscall.SIGHUP))
	waitLog(t, g, mark, "a refused reload", func(l map[string]any) bool {
		return l["msg"] == "configuration reload failed; the running configuration stays in force"
	})
	require.NoError(t, connect("127.0.0.1", pg.Password, tls.VersionTLS12), "nothing changed")

	mark = len(g.logLines())
	cfg := fmt.Sprintf("listen: [127.0.0.1:%d, 127.0.0.1:%d]\nupstream: %s\nallow: [127.0.0.0/8]\ntls-cert: %s\ntls-key: %s\nban-max-retry: 1\ntls-min-version: \"1.3\"\n",
		port, freePort(t), pg.Addr(), certFile, keyFile)
	require.NoError(t, os.WriteFile(cfgFile, []byte(cfg), 0o600))
	require.NoError(t, g.cmd.Process.Signal(syscall.SIGHUP))
	line := waitLogLine(t, g, mark, "the reload", func(l map[string]any) bool { return l["msg"] == "configuration reloaded" })
	require.ElementsMatch(t, []any{"--ban-max-retry", "--tls-min-version"}, line["changed"])
	line = waitLogLine(t, g, mark, "the restart notice", func(l map[string]any) bool { return l["restart_needed"] != nil })
	require.Equal(t, []any{"--listen"}, line["restart_needed"])

	require.Error(t, connect("127.0.0.1", pg.Password, tls.VersionTLS12), "TLS 1.2 refused")
	require.Error(t, connect("127.0.0.3", "wrong", tls.VersionTLS13))
	var err error
	require.Eventually(t, func() bool { // the ban follows the failure the client saw
		err = connect("127.0.0.3", pg.Password, tls.VersionTLS13)
		return err != nil
	}, 10*time.Second, 20*time.Millisecond, "one failure bans now")
	require.NotContains(t, err.Error(), "password authentication failed", "refused at accept, before postgres")
}

// waitLogLine waits for a log line after mark that match accepts and
// returns it.
func waitLogLine(t *testing.T, g *process, mark int, what string, match func(map[string]any) bool) map[string]any {
	t.Helper()
	var found map[string]any
	require.Eventually(t, func() bool {
		for _, l := range logsSince(g, mark) {
			if match(l) {
				found = l
				return true
			}
		}
		return false
	}, 20*time.Second, 20*time.Millisecond, "no log line: %s; log since mark:\n%v", what, logsSince(g, mark))
	return found
}

// writeServeConfig writes a one-route config file: listen on 127.0.0.1
// port, in front of upstream, admitting allow; extra is more YAML.
func writeServeConfig(t *testing.T, path string, port int, upstream, certFile, keyFile, allow, extra string) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, []byte(fmt.Sprintf(
		"listen: [127.0.0.1:%d]\nupstream: %s\nallow: [%s]\ntls-cert: %s\ntls-key: %s\n%s",
		port, upstream, allow, certFile, keyFile, extra)), 0o600))
}
