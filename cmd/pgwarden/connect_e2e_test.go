package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/certstest"
	"github.com/pgwarden/pgwarden/internal/fakepg"
	"github.com/pgwarden/pgwarden/internal/pgtest"
)

// The client-side commands (connect, probe) driven as a user would: the
// built binary, a real postgres behind a real `pgwarden serve`, and psql.

// clientPKI is a CA with the gateway's server pair and a client pair for
// role alice, written to files.
type clientPKI struct {
	ca                    *certstest.CA
	dir                   string
	caFile                string
	serverCert, serverKey string
	aliceCert, aliceKey   string
}

func newClientPKI(t *testing.T) *clientPKI {
	t.Helper()
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	f := ca.WriteFiles(t, dir, "localhost", "127.0.0.1")
	certPEM, keyPEM := ca.Client(t, "alice")
	return &clientPKI{
		ca: ca, dir: dir, caFile: f.CA, serverCert: f.Cert, serverKey: f.Key,
		aliceCert: certstest.WriteFile(t, filepath.Join(dir, "alice.crt"), certPEM),
		aliceKey:  certstest.WriteFile(t, filepath.Join(dir, "alice.key"), keyPEM),
	}
}

// startServe runs `pgwarden serve` in front of pg, admitting sources in
// allow, and returns its address.
func startServe(t *testing.T, pg *pgtest.Postgres, pki *clientPKI, allow string, extra ...string) (string, *process) {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	args := append([]string{"--listen", addr, "--upstream", pg.Addr(), "--allow", allow,
		"--tls-cert", pki.serverCert, "--tls-key", pki.serverKey, "--drain-timeout", "2s"}, extra...)
	return addr, startBinary(t, args...)
}

// startConnect runs `pgwarden connect args... --log-format json` and waits
// until it listens.
func startConnect(t *testing.T, args ...string) *process {
	t.Helper()
	return startProcess(t, "pgwarden connect listening", append(append([]string{"connect"}, args...), "--log-format", "json")...)
}

// psqlEnv is the environment for psql: none of the caller's PG* settings.
func psqlEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return append(append(env, "PGCONNECT_TIMEOUT=20"), extra...)
}

// psql runs psql with a conninfo and a command; it returns stdout, stderr
// and the exit status.
func psql(t *testing.T, password, conninfo, sql string) (string, string, int) {
	t.Helper()
	bin, ok := pgtest.HavePsql()
	if !ok {
		t.Skip("no psql")
	}
	cmd := exec.Command(bin, conninfo, "-XAtc", sql)
	cmd.Env = psqlEnv("PGPASSWORD=" + password)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	code := exitStatus(t, cmd.Run(), errb.String())
	return strings.TrimSpace(out.String()), errb.String(), code
}

// exitStatus is a finished command's exit status; any other error fails t.
func exitStatus(t *testing.T, err error, stderr string) int {
	t.Helper()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	require.NoError(t, err, stderr)
	return 0
}

func localConninfo(port int, pg *pgtest.Postgres, sslmode string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s sslmode=%s", port, pg.User, pg.Database, sslmode)
}

func TestConnectEndToEnd(t *testing.T) {
	pg := pgtest.Start(t)
	pki := newClientPKI(t)
	gw, serve := startServe(t, pg, pki, "127.0.0.1/32")
	mtls, _ := startServe(t, pg, pki, "127.0.0.1/32", "--tls-client-ca", pki.caFile)

	t.Run("psql sslmode disable and prefer", func(t *testing.T) {
		port := freePort(t)
		startConnect(t, "--to", gw, "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--server-name", "localhost", "--sslrootcert", pki.caFile)
		for _, mode := range []string{"disable", "prefer"} {
			out, stderr, code := psql(t, pg.Password, localConninfo(port, pg, mode)+" application_name=via-connect-"+mode, "select 40+2")
			require.Equal(t, 0, code, stderr)
			require.Equal(t, "42", out)
		}
		// The gateway saw both sessions arrive over TLS.
		require.Eventually(t, func() bool {
			n := 0
			for _, l := range serve.logLines() {
				if l["msg"] == "connection closed" && strings.HasPrefix(fmt.Sprint(l["application_name"]), "via-connect-") && l["tls_version"] != nil && l["tls_version"] != "" {
					n++
				}
			}
			return n == 2
		}, 10*time.Second, 50*time.Millisecond)
	})

	t.Run("client certificate to an mTLS route", func(t *testing.T) {
		port := freePort(t)
		startConnect(t, "--to", mtls, "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--sslrootcert", pki.caFile,
			"--sslcert", pki.aliceCert, "--sslkey", pki.aliceKey)
		out, stderr, code := psql(t, pg.Password, localConninfo(port, pg, "disable"), "select current_user")
		require.Equal(t, 0, code, stderr)
		require.Equal(t, pg.User, out)

		// Without a certificate the gateway's refusal reaches the client.
		port2 := freePort(t)
		startConnect(t, "--to", mtls, "--listen", fmt.Sprintf("127.0.0.1:%d", port2), "--sslrootcert", pki.caFile)
		_, stderr, code = psql(t, pg.Password, localConninfo(port2, pg, "disable"), "select 1")
		require.Equal(t, 2, code)
		require.Contains(t, stderr, "client certificate required")
	})

	t.Run("verify-full failures tell the client why", func(t *testing.T) {
		other := certstest.NewCA(t)
		otherCA := certstest.WriteFile(t, filepath.Join(t.TempDir(), "other.crt"), other.CertPEM())
		for _, tc := range []struct {
			name string
			args []string
			want []string
		}{
			{"wrong name", []string{"--server-name", "db.example.com", "--sslrootcert", pki.caFile},
				[]string{"certificate:", `not valid for "db.example.com"`, "localhost"}},
			{"unrelated CA", []string{"--sslrootcert", otherCA}, []string{"certificate:", "does not chain to a trusted CA", "--sslrootcert"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				port := freePort(t)
				startConnect(t, append([]string{"--to", gw, "--listen", fmt.Sprintf("127.0.0.1:%d", port)}, tc.args...)...)
				_, stderr, code := psql(t, pg.Password, localConninfo(port, pg, "disable"), "select 1")
				t.Logf("psql: %s", stderr)
				require.Equal(t, 2, code, stderr)
				require.Contains(t, stderr, "FATAL")
				for _, w := range tc.want {
					require.Contains(t, stderr, w)
				}
			})
		}
	})

	t.Run("Ctrl-C cancels pg_sleep through both hops", func(t *testing.T) {
		bin, ok := pgtest.HavePsql()
		if !ok {
			t.Skip("no psql")
		}
		port := freePort(t)
		c := startConnect(t, "--to", gw, "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--sslrootcert", pki.caFile)
		cmd := exec.Command(bin, localConninfo(port, pg, "disable")+" application_name=sleeper", "-XAtc", "select pg_sleep(120)")
		cmd.Env = psqlEnv("PGPASSWORD=" + pg.Password)
		var errb bytes.Buffer
		cmd.Stderr = &errb
		require.NoError(t, cmd.Start())
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		require.Eventually(t, func() bool {
			v, err := pg.QueryValue(ctx, "select count(*) from pg_stat_activity where application_name = 'sleeper' and state = 'active' and query like 'select pg_sleep%'")
			return err == nil && v == "1"
		}, 30*time.Second, 50*time.Millisecond)
		// psql's SIGINT handler sends a plaintext CancelRequest to connect,
		// which carries it over TLS to the gateway, which forwards it.
		require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
		select {
		case err := <-exited:
			var ee *exec.ExitError
			require.ErrorAs(t, err, &ee)
			require.Equal(t, 1, ee.ExitCode(), errb.String())
		case <-time.After(60 * time.Second):
			t.Fatal("psql did not return after SIGINT")
		}
		require.Contains(t, errb.String(), "canceling statement due to user request")
		require.Eventually(t, func() bool { return c.hasLog("cancel request forwarded") }, 10*time.Second, 50*time.Millisecond)
	})

	t.Run("unix socket listener", func(t *testing.T) {
		dir, err := os.MkdirTemp("", "pgwc") // short: sun_path is 107 bytes
		require.NoError(t, err)
		defer os.RemoveAll(dir)
		startConnect(t, "--to", gw, "--listen", dir+":6543", "--sslrootcert", pki.caFile)
		fi, err := os.Stat(filepath.Join(dir, ".s.PGSQL.6543"))
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
		out, stderr, code := psql(t, pg.Password, fmt.Sprintf("host=%s port=6543 user=%s dbname=%s", dir, pg.User, pg.Database), "select 'over a socket'")
		require.Equal(t, 0, code, stderr)
		require.Equal(t, "over a socket", out)
	})

	t.Run("gateway down gets a FATAL naming the layer", func(t *testing.T) {
		port := freePort(t)
		startConnect(t, "--to", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--sslrootcert", pki.caFile)
		_, stderr, code := psql(t, pg.Password, localConninfo(port, pg, "prefer"), "select 1")
		t.Logf("psql: %s", stderr)
		require.Equal(t, 2, code)
		require.Contains(t, stderr, "FATAL:  pgwarden connect: cannot reach the gateway")
		require.Contains(t, stderr, "tcp: connection to")
		require.Contains(t, stderr, "refused")
		require.Contains(t, stderr, "pgwarden probe")
	})

	t.Run("a gateway sending S plus extra bytes is refused", func(t *testing.T) {
		fake := fakepg.Start(t, fakepg.Config{Negotiation: fakepg.AnswerSAndExtra})
		port := freePort(t)
		startConnect(t, "--to", fake.Addr(), "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--sslrootcert", pki.caFile)
		_, stderr, code := psql(t, pg.Password, localConninfo(port, pg, "disable"), "select 1")
		require.Equal(t, 2, code)
		require.Contains(t, stderr, "negotiate: received unencrypted data after SSL response")
		require.Empty(t, fake.Sessions())
	})

	t.Run("SIGTERM drains", func(t *testing.T) {
		port := freePort(t)
		c := startConnect(t, "--to", gw, "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--sslrootcert", pki.caFile, "--drain-timeout", "2s")
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=disable", port, pg.User, pg.Password, pg.Database))
		require.NoError(t, err)
		defer conn.Close(ctx)
		require.NoError(t, c.cmd.Process.Signal(syscall.SIGTERM))
		require.Eventually(t, func() bool {
			nc, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
			if err == nil {
				nc.Close()
			}
			return err != nil
		}, 10*time.Second, 20*time.Millisecond)
		res, err := conn.Exec(ctx, "select 'still here'").ReadAll()
		require.NoError(t, err)
		require.Equal(t, "still here", string(res[0].Rows[0][0]))
		select {
		case err := <-c.done:
			require.NoError(t, err, "exit status")
		case <-time.After(20 * time.Second):
			t.Fatal("pgwarden connect did not exit after the drain timeout")
		}
		_, err = conn.Exec(ctx, "select 1").ReadAll()
		require.Error(t, err, "the session outlived the drain")
	})
}

func TestConnectUsageErrorsExit2(t *testing.T) {
	bin := pgwardenBinary(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--to is required"},
		{[]string{"--to", "db.example.com"}, "--to db.example.com: want HOST:PORT"},
		{[]string{"--to", "db:5432", "--listen", "0.0.0.0:5432"}, "--allow-remote-listen"},
		{[]string{"--to", "db:5432", "--sslcert", "x.crt"}, "--sslcert and --sslkey go together"},
		{[]string{"--to", "db:5432", "--github"}, "--github needs --grant-url"},
		{[]string{"--to", "db:5432", "--grant-url", "https://db:8443"}, "--grant-url needs a token"},
		{[]string{"--to", "db:5432", "--grant-url", "https://db:8443", "--github", "--token-env", "X"}, "exclude each other"},
		{[]string{"--to", "db:5432", "--sslrootcert", "/nonexistent.crt"}, "--sslrootcert /nonexistent.crt"},
		{[]string{"--to", "db:5432", "--sslcert", "/nonexistent.crt", "--sslkey", "/nonexistent.key"}, "--sslcert /nonexistent.crt"},
		{[]string{"--to", "db:5432", "extra"}, "unexpected argument"},
	} {
		out, err := exec.Command(bin, append([]string{"connect"}, tc.args...)...).CombinedOutput()
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee, "%v: %s", tc.args, out)
		require.Equal(t, 2, ee.ExitCode(), "%v: %s", tc.args, out)
		require.Contains(t, string(out), tc.want, tc.args)
	}
}

// TestConnectGrantURL runs connect against a grant endpoint that follows
// the grant contract: the grant is requested before anything listens, with
// the token from --token-env, and a refusal stops connect with its reason.
func TestConnectGrantURL(t *testing.T) {
	pki := newClientPKI(t)
	var mu sync.Mutex
	var auths, bodies []string
	status := http.StatusCreated
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<10))
		mu.Lock()
		auths, bodies = append(auths, r.Header.Get("Authorization")), append(bodies, string(body))
		st := status
		mu.Unlock()
		if r.Method != http.MethodPost || r.URL.Path != "/v1/grants/self" {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(st)
		if st != http.StatusCreated {
			_, _ = io.WriteString(w, `{"error":"repository acme/fork may not have a grant"}`)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"id": "g-1", "source": "127.0.0.1", "until": time.Now().Add(20 * time.Minute).Format(time.RFC3339),
			"reason": "ci", "users": []string{"app"}, "databases": []string{"app"}, "created_by": "repo:acme/app"})
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pki.ca.ServerCertificate(t, "127.0.0.1")}}
	srv.StartTLS()
	defer srv.Close()

	connect := func(extra ...string) *exec.Cmd {
		args := []string{"connect", "--to", "127.0.0.1:5432", "--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--sslrootcert", pki.caFile,
			"--grant-url", srv.URL, "--token-env", "CI_TOKEN", "--log-format", "json"}
		return exec.Command(pgwardenBinary(t), append(args, extra...)...)
	}
	cmd := connect("--ttl", "20m")
	cmd.Env = append(psqlEnv(), "CI_TOKEN=the-jwt")
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	sc := bufio.NewScanner(stderr)
	var order []string
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) == nil {
			order = append(order, fmt.Sprint(line["msg"]))
			if line["msg"] == "grant obtained" {
				require.Equal(t, "g-1", line["grant_id"])
			}
			if line["msg"] == "pgwarden connect listening" {
				break
			}
		}
	}
	require.Equal(t, []string{"grant obtained", "pgwarden connect listening"}, order, "the grant comes before listening")
	mu.Lock()
	require.Equal(t, []string{"Bearer the-jwt"}, auths)
	require.JSONEq(t, `{"ttl":"20m"}`, bodies[0])
	status = http.StatusForbidden
	mu.Unlock()

	// A refused grant: connect exits 1 before listening, saying why.
	cmd2 := connect()
	cmd2.Env = append(psqlEnv(), "CI_TOKEN=the-jwt")
	out, err := cmd2.CombinedOutput()
	require.Equal(t, 1, exitStatus(t, err, string(out)), string(out))
	require.Contains(t, string(out), "--grant-url: grant refused (403")
	require.Contains(t, string(out), "acme/fork")
}
