package pgtest_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/pgtest"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestServer covers what the gateway's tests rely on: alice reaches db app
// over TCP only with her password via SCRAM, and the log counts it.
func TestServer(t *testing.T) {
	pg := pgtest.Start(t)
	ctx := ctxT(t)

	require.Equal(t, "127.0.0.1:"+strconv.Itoa(pg.Port), pg.Addr())
	_, err := os.Stat(filepath.Join(pg.SocketDir, ".s.PGSQL."+strconv.Itoa(pg.Port)))
	require.NoError(t, err, "unix socket")

	require.NoError(t, pg.LogBarrier(ctx))
	all0, tcp0 := pg.ConnectionsReceived(), pg.TCPConnectionsReceived()

	conn, err := pgconn.Connect(ctx, pg.ConnString())
	require.NoError(t, err)
	res, err := conn.Exec(ctx, "SELECT current_user, current_database(), pg_backend_pid()").ReadAll()
	require.NoError(t, err)
	require.Equal(t, "alice", string(res[0].Rows[0][0]))
	require.Equal(t, "app", string(res[0].Rows[0][1]))
	require.NoError(t, conn.Close(ctx))

	require.True(t, pg.WaitTCPConnectionsReceived(tcp0+1, 10*time.Second), "TCP connection not logged:\n%s", pg.LogTail(20))
	require.Greater(t, pg.ConnectionsReceived(), all0)
	require.True(t, pg.WaitLogContains("connection authorized: user=alice database=app", 10*time.Second))

	// Passwords are stored as SCRAM verifiers, and hba requires scram-sha-256.
	v, err := pg.QueryValue(ctx, "SELECT count(*) FROM pg_authid WHERE rolname IN ('postgres','alice','bob') AND rolpassword LIKE 'SCRAM-SHA-256$%'")
	require.NoError(t, err)
	require.Equal(t, "3", v)
	v, err = pg.QueryValue(ctx, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'")
	require.NoError(t, err)
	require.Equal(t, "alice", v)

	// A wrong password is refused by the server itself (28P01).
	_, err = pgconn.Connect(ctx, pg.ConnStringFor(pg.User, "wrong", pg.Database))
	var pe *pgconn.PgError
	require.True(t, errors.As(err, &pe), "want a server error, got %v", err)
	require.Equal(t, "28P01", pe.Code)

	// The superuser and bob log in over TCP too.
	for _, cs := range []string{pg.SuperConnString(), pg.ConnStringFor(pg.OtherUser, pg.OtherPassword, pg.Database)} {
		c, err := pgconn.Connect(ctx, cs)
		require.NoError(t, err)
		require.NoError(t, c.Close(ctx))
	}

	// Socket connections never count as TCP.
	require.NoError(t, pg.LogBarrier(ctx))
	tcp1 := pg.TCPConnectionsReceived()
	require.NoError(t, pg.Exec(ctx, "CREATE TABLE t (x int); DROP TABLE t"))
	require.NoError(t, pg.LogBarrier(ctx))
	require.Equal(t, tcp1, pg.TCPConnectionsReceived())
	require.True(t, pg.WaitLogQuiet(10*time.Second))
}

func TestPsql(t *testing.T) {
	pg := pgtest.Start(t)
	psql, ok := pgtest.HavePsql()
	if !ok {
		t.Skip("no psql")
	}
	require.Equal(t, psql, pg.Bin("psql"))
	out, err := exec.Command(psql, "-X", "-A", "-t", "-c", "SELECT 1+1", pg.ConnString()).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Equal(t, "2", strings.TrimSpace(string(out)))
}

// TestStopCleansUp starts with options through StartE (the TestMain path) and
// checks that Stop leaves no process and no file behind.
func TestStopCleansUp(t *testing.T) {
	ctx := ctxT(t)
	pg, err := pgtest.StartE(ctx,
		pgtest.WithConf("max_connections", "20"),
		pgtest.WithHBA("host all alice 127.0.0.1/32 scram-sha-256", "host all all 127.0.0.1/32 reject"))
	if errors.Is(err, pgtest.ErrNoPostgres) && os.Getenv("CI") == "" {
		t.Skip(err)
	}
	require.NoError(t, err)
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = pg.Stop()
		}
	})

	v, err := pg.QueryValue(ctx, "SHOW max_connections")
	require.NoError(t, err)
	require.Equal(t, "20", v)
	_, err = pgconn.Connect(ctx, pg.ConnStringFor(pg.OtherUser, pg.OtherPassword, pg.Database))
	require.ErrorContains(t, err, "pg_hba.conf rejects connection")
	c, err := pgconn.Connect(ctx, pg.ConnString())
	require.NoError(t, err)
	defer c.Close(ctx)

	v, err = pg.QueryValue(ctx, "SELECT setting FROM pg_settings WHERE name = 'data_directory'")
	require.NoError(t, err)
	base := filepath.Dir(v)
	postmaster := readPostmasterPID(t, v)
	pids := append(childrenOf(postmaster), postmaster)
	require.Greater(t, len(pids), 2, "postmaster and its background processes")
	if os.Geteuid() == 0 {
		fi, err := os.Stat(v)
		require.NoError(t, err)
		require.NotZero(t, fi.Sys().(*syscall.Stat_t).Uid, "the server must not run as root")
	}

	start := time.Now()
	require.NoError(t, pg.Stop())
	stopped = true
	t.Logf("Stop took %v", time.Since(start))
	require.NoError(t, pg.Stop(), "Stop is idempotent")

	for _, pid := range pids {
		require.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "pid %d still exists", pid)
	}
	_, err = os.Stat(base)
	require.True(t, os.IsNotExist(err), "instance directory %s left behind: %v", base, err)
	require.Contains(t, pg.Log(), "database system is shut down", "log is kept after Stop")
}

func readPostmasterPID(t *testing.T, dataDir string) int {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	require.NoError(t, err)
	return pid
}

// childrenOf lists the processes whose parent is pid, from /proc.
func childrenOf(pid int) []int {
	var kids []int
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, s := range stats {
		b, err := os.ReadFile(s)
		if err != nil {
			continue
		}
		// comm may contain spaces; the fields after its closing ')' do not.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			if k, err := strconv.Atoi(filepath.Base(filepath.Dir(s))); err == nil {
				kids = append(kids, k)
			}
		}
	}
	return kids
}

func TestFindBinDirPGBIN(t *testing.T) {
	t.Setenv("PGBIN", t.TempDir())
	_, err := pgtest.FindBinDir()
	require.ErrorIs(t, err, pgtest.ErrNoPostgres)
	_, err = pgtest.StartE(context.Background())
	require.ErrorIs(t, err, pgtest.ErrNoPostgres)
}

func TestFreePort(t *testing.T) {
	p, err := pgtest.FreePort()
	require.NoError(t, err)
	require.Positive(t, p)
}
