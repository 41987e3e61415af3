package main

import (
	"context"
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
	writeCfg := func(allow string) {
		require.NoError(t, os.WriteFile(cfgFile, []byte(fmt.Sprintf(
			"listen: [127.0.0.1:%d]\nupstream: %s\nallow: [%s]\ntls-cert: %s\ntls-key: %s\n",
			port, pg.Addr(), allow, certFile, keyFile)), 0o600))
	}
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
