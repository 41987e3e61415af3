package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/pgtest"
)

// banEnv is a running pgwarden with the jail on short timers, its admin
// endpoint, and the postgres behind it.
type banEnv struct {
	pg        *pgtest.Postgres
	gw        *process
	args      []string
	port      int
	admin     string
	caFile    string
	statePath string
}

func (e *banEnv) dsn(password string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=verify-full sslrootcert=%s connect_timeout=10",
		e.port, e.pg.User, password, e.pg.Database, e.caFile)
}

// connectFrom logs in from a given loopback source address.
func (e *banEnv) connectFrom(source, password string) error {
	cfg, err := pgconn.ParseConfig(e.dsn(password))
	if err != nil {
		return err
	}
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
	cfg.DialFunc = d.DialContext
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

type banEntry struct {
	IP       string    `json:"ip"`
	Until    time.Time `json:"until"`
	Failures int       `json:"failures"`
	Bans     int       `json:"bans"`
}

func (e *banEnv) bans(t *testing.T) []banEntry {
	t.Helper()
	return getBans(t, e.admin)
}

// get fetches an admin endpoint path and requires the status code.
func (e *banEnv) get(t *testing.T, path string, status int) string {
	t.Helper()
	resp, err := http.Get("http://" + e.admin + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, status, resp.StatusCode, "%s: %s", path, body)
	return string(body)
}

// cli runs `pgwarden bans ...` against the admin endpoint.
func (e *banEnv) cli(t *testing.T, args ...string) string {
	t.Helper()
	args = append(append([]string{"bans"}, args...), "--admin", e.admin)
	out, err := exec.Command(pgwardenBinary(t), args...).CombinedOutput()
	require.NoError(t, err, "pgwarden %v: %s", args, out)
	return string(out)
}

// requireRefusedAtAccept asserts the source is closed at accept: the client
// gets no postgres message at all, and postgres hears nothing.
func (e *banEnv) requireRefusedAtAccept(t *testing.T, source string) {
	t.Helper()
	before := e.pg.TCPConnectionsReceived()
	err := e.connectFrom(source, e.pg.Password)
	require.Error(t, err)
	require.Empty(t, pgtest.Code(err), "a banned source got a postgres error: %v", err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, e.pg.LogBarrier(ctx))
	require.Equal(t, before, e.pg.TCPConnectionsReceived(), "postgres saw the banned source")
}

func (e *banEnv) failLogins(t *testing.T, source string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		err := e.connectFrom(source, "wrong-password")
		require.Error(t, err)
		require.Equal(t, "28P01", pgtest.Code(err), "attempt %d: %v", i+1, err)
	}
}

// startBanEnv starts the gateway; extra flags are appended (a flag given
// twice takes its last value).
func startBanEnv(t *testing.T, pg *pgtest.Postgres, extra ...string) *banEnv {
	certFile, keyFile, caFile := tlsFiles(t)
	e := &banEnv{pg: pg, port: freePort(t), caFile: caFile, statePath: filepath.Join(t.TempDir(), "bans.db")}
	e.admin = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	e.args = []string{"--listen", fmt.Sprintf("127.0.0.1:%d", e.port), "--upstream", pg.Addr(),
		"--allow", "127.0.0.0/8", "--tls-cert", certFile, "--tls-key", keyFile,
		"--ban-max-retry", "3", "--ban-find-time", "1m", "--ban-time", "1s", "--ban-time-factor", "20",
		"--ban-state", e.statePath, "--admin", e.admin, "--drain-timeout", "1s"}
	e.args = append(e.args, extra...)
	e.gw = startBinary(t, e.args...)
	return e
}

// TestBanIgnoreSelf: the host's own addresses are never banned (fail2ban's
// ignoreself), so a local application's failed logins cannot lock every
// other local client out: five failures from 127.0.0.1 do not ban it,
// five from 127.0.0.2 (in 127/8, but no interface's address) do. With
// --ban-ignore-self=false, 127.0.0.1 is banned like any source.
func TestBanIgnoreSelf(t *testing.T) {
	pg := pgtest.Start(t)
	start := func(extra ...string) *banEnv {
		certFile, keyFile, caFile := tlsFiles(t)
		e := &banEnv{pg: pg, port: freePort(t), caFile: caFile}
		e.admin = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		e.args = append([]string{"--listen", fmt.Sprintf("127.0.0.1:%d", e.port), "--upstream", pg.Addr(),
			"--allow", "127.0.0.0/8", "--tls-cert", certFile, "--tls-key", keyFile, "--admin", e.admin, "--drain-timeout", "1s"}, extra...)
		e.gw = startBinary(t, e.args...)
		return e
	}
	e := start()
	e.failLogins(t, "127.0.0.1", 5)
	require.NoError(t, e.connectFrom("127.0.0.1", pg.Password), "127.0.0.1 was banned")
	require.Empty(t, e.bans(t))
	require.True(t, hasLog(e.gw.logLines(), func(l map[string]any) bool {
		return l["msg"] == "auth failure" && l["source"] == "127.0.0.1" && l["ignored"] == true
	}), "the ignored failures are still logged")
	e.failLogins(t, "127.0.0.2", 5)
	e.requireRefusedAtAccept(t, "127.0.0.2")
	bans := e.bans(t)
	require.Len(t, bans, 1)
	require.Equal(t, "127.0.0.2", bans[0].IP)

	off := start("--ban-ignore-self=false")
	off.failLogins(t, "127.0.0.1", 5)
	off.requireRefusedAtAccept(t, "127.0.0.1")
}

func (e *banEnv) restart(t *testing.T) {
	t.Helper()
	require.NoError(t, e.gw.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-e.gw.done:
		require.NoError(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("pgwarden did not stop")
	}
	e.gw = startBinary(t, e.args...)
}

func TestBansEndToEnd(t *testing.T) {
	pg := pgtest.Start(t)
	e := startBanEnv(t, pg)
	const attacker, bystander, prompter = "127.0.0.3", "127.0.0.1", "127.0.0.4"

	// Three wrong passwords ban the attacker; then even the right password
	// is refused at accept, while another source keeps working.
	e.failLogins(t, attacker, 3)
	e.requireRefusedAtAccept(t, attacker)
	require.NoError(t, e.connectFrom(bystander, pg.Password))
	bans := e.bans(t)
	require.Len(t, bans, 1)
	require.Equal(t, attacker, bans[0].IP)
	require.Equal(t, 1, bans[0].Bans)
	require.Equal(t, 3, bans[0].Failures)
	metrics := e.get(t, "/metrics", http.StatusOK)
	require.Contains(t, metrics, "pgwarden_bans_active 1")
	require.Contains(t, metrics, `pgwarden_auth_failures_total{sqlstate="28P01"} 3`)
	require.Contains(t, metrics, `pgwarden_rejections_total{reason="banned",route="default"} 1`)
	require.Equal(t, "ok", strings.TrimSpace(e.get(t, "/healthz", http.StatusOK)))
	e.get(t, "/readyz", http.StatusOK)

	// The first ban (1 s plus jitter) lifts by itself.
	require.Eventually(t, func() bool { return e.connectFrom(attacker, pg.Password) == nil },
		15*time.Second, 100*time.Millisecond, "the first ban never lifted")

	// A repeat offender's next ban is ban-time × factor: 20 s, not 1 s.
	e.failLogins(t, attacker, 3)
	e.requireRefusedAtAccept(t, attacker)
	bans = e.bans(t)
	require.Len(t, bans, 1)
	require.Equal(t, 2, bans[0].Bans)
	require.Greater(t, time.Until(bans[0].Until), 5*time.Second, "second ban is not escalated: until %s", bans[0].Until)

	// Bans survive a restart.
	e.restart(t)
	e.requireRefusedAtAccept(t, attacker)
	out := e.cli(t, "list")
	require.Contains(t, out, attacker)

	// The CLI lifts the ban.
	e.cli(t, "unban", attacker)
	require.NoError(t, e.connectFrom(attacker, pg.Password))
	require.Empty(t, e.bans(t))

	// A client that leaves at the password prompt (psql does, then asks the
	// user) is not a failure, however often it happens.
	for i := 0; i < 5; i++ {
		leaveAtPasswordPrompt(t, e, prompter)
	}
	if psql, ok := pgtest.HavePsql(); ok {
		for i := 0; i < 4; i++ {
			cmd := exec.Command(psql, "-w", "-XAtc", "SELECT 1",
				fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s sslmode=require", e.port, pg.User, pg.Database))
			cmd.Env = append(os.Environ(), "PGPASSWORD=", "PGPASSFILE=/nonexistent")
			out, err := cmd.CombinedOutput()
			require.Error(t, err)
			require.Contains(t, string(out), "no password supplied")
		}
	}
	require.Empty(t, e.bans(t))

	// The CLI can also ban by hand, and the ban takes effect at accept.
	e.cli(t, "ban", prompter, "--for", "1h")
	e.requireRefusedAtAccept(t, prompter)
}

// leaveAtPasswordPrompt opens a TLS session from source, reads the
// authentication request, and hangs up, as psql does before prompting.
func leaveAtPasswordPrompt(t *testing.T, e *banEnv, source string) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
	conn, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", e.port))
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = conn.Write([]byte{0, 0, 0, 8, 4, 210, 22, 47}) // SSLRequest
	require.NoError(t, err)
	var b [1]byte
	_, err = io.ReadFull(conn, b[:])
	require.NoError(t, err)
	require.Equal(t, byte('S'), b[0])
	pem, err := os.ReadFile(e.caFile)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	tconn := tls.Client(conn, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	var body bytes.Buffer
	for _, s := range []string{"user", e.pg.User, "database", e.pg.Database, ""} {
		body.WriteString(s)
		body.WriteByte(0)
	}
	pkt := binary.BigEndian.AppendUint32(nil, uint32(8+body.Len()))
	pkt = binary.BigEndian.AppendUint32(pkt, 3<<16)
	_, err = tconn.Write(append(pkt, body.Bytes()...))
	require.NoError(t, err)
	msg, err := pgproto3.NewFrontend(tconn, io.Discard).Receive()
	require.NoError(t, err)
	require.IsType(t, &pgproto3.AuthenticationSASL{}, msg)
}
