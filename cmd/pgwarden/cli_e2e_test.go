package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
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
	"github.com/pgwarden/pgwarden/internal/pgtest"
)

// The CLI tests drive the built binary exactly as a user (or an outside
// test) would: flags, exit codes, stderr, signals.

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

func pgwardenBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "pgwarden-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "pgwarden")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	require.NoError(t, binErr)
	return binPath
}

// tlsFiles writes a test CA and server pair into a temp dir.
func tlsFiles(t *testing.T) (certFile, keyFile, caFile string) {
	t.Helper()
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	certPEM, keyPEM := ca.Server(t, "localhost", "127.0.0.1")
	certFile, keyFile, caFile = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"), filepath.Join(dir, "ca.crt")
	require.NoError(t, os.WriteFile(certFile, certPEM, 0o600))
	require.NoError(t, os.WriteFile(keyFile, keyPEM, 0o600))
	require.NoError(t, os.WriteFile(caFile, ca.CertPEM(), 0o600))
	return
}

func freePort(t *testing.T) int {
	t.Helper()
	port, err := pgtest.FreePort()
	require.NoError(t, err)
	return port
}

// process is a running pgwarden command and its JSON log lines.
type process struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs []map[string]any
	done chan error
}

// startProcess runs `pgwarden args...` and waits for its log line ready.
func startProcess(t *testing.T, ready string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(pgwardenBinary(t), args...)
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	p := &process{cmd: cmd, done: make(chan error, 1)}
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			var line map[string]any
			if json.Unmarshal(sc.Bytes(), &line) != nil {
				line = map[string]any{"raw": sc.Text()}
			}
			p.mu.Lock()
			p.logs = append(p.logs, line)
			p.mu.Unlock()
			if line["msg"] == ready {
				once.Do(func() { close(listening) })
			}
		}
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	select {
	case <-listening:
	case err := <-p.done:
		t.Fatalf("pgwarden %s exited before listening: %v\n%v", args[0], err, p.logLines())
	case <-time.After(20 * time.Second):
		t.Fatalf("pgwarden %s did not start\n%v", args[0], p.logLines())
	}
	return p
}

// startBinary runs `pgwarden serve args...` and waits until it serves.
func startBinary(t *testing.T, args ...string) *process {
	t.Helper()
	return startProcess(t, "pgwarden started", append([]string{"serve"}, args...)...)
}

func (p *process) logLines() []map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]map[string]any(nil), p.logs...)
}

// hasLog reports a log line with this message.
func (p *process) hasLog(msg string) bool {
	for _, l := range p.logLines() {
		if l["msg"] == msg {
			return true
		}
	}
	return false
}

func TestServeBinaryEndToEnd(t *testing.T) {
	pg := pgtest.Start(t)
	certFile, keyFile, caFile := tlsFiles(t)
	port := freePort(t)
	g := startBinary(t, "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--upstream", pg.Addr(),
		"--allow", "127.0.0.1/32", "--tls-cert", certFile, "--tls-key", keyFile, "--drain-timeout", "3s")

	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=verify-full sslrootcert=%s application_name=cli-e2e",
		port, pg.User, pg.Password, pg.Database, caFile)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, dsn)
	require.NoError(t, err)
	res, err := conn.Exec(ctx, "SELECT 40+2").ReadAll()
	require.NoError(t, err)
	require.Equal(t, "42", string(res[0].Rows[0][0]))

	// SIGTERM: the listener closes at once, the open session keeps working
	// until the drain timeout, then the process exits 0.
	require.NoError(t, g.cmd.Process.Signal(syscall.SIGTERM))
	require.Eventually(t, func() bool {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	}, 10*time.Second, 20*time.Millisecond)
	res, err = conn.Exec(ctx, "SELECT 'still here'").ReadAll()
	require.NoError(t, err)
	require.Equal(t, "still here", string(res[0].Rows[0][0]))
	select {
	case err := <-g.done:
		require.NoError(t, err, "exit status")
	case <-time.After(20 * time.Second):
		t.Fatal("pgwarden did not exit after the drain timeout")
	}
	_, err = conn.Exec(ctx, "SELECT 1").ReadAll()
	require.Error(t, err, "the session outlived the drain")

	// One JSON line per connection, with the fields the README lists.
	var closed map[string]any
	for _, l := range g.logLines() {
		if l["msg"] == "connection closed" && l["application_name"] == "cli-e2e" {
			closed = l
		}
	}
	require.NotNil(t, closed, "no connection closed line in %v", g.logLines())
	for _, k := range []string{"conn_id", "source", "user", "database", "tls_version", "tls_cipher", "outcome", "bytes_in", "bytes_out", "duration"} {
		require.Contains(t, closed, k)
	}
	require.Equal(t, pg.User, closed["user"])
}

func TestServeConfigErrorsExit2BeforeListening(t *testing.T) {
	bin := pgwardenBinary(t)
	certFile, keyFile, _ := tlsFiles(t)
	port := freePort(t)
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no allow", []string{"--listen", listen, "--upstream", "127.0.0.1:5432", "--tls-cert", certFile, "--tls-key", keyFile}, "no allowlist: add --allow"},
		{"remote upstream", []string{"--listen", listen, "--upstream", "192.0.2.1:5432", "--allow", "127.0.0.1", "--tls-cert", certFile, "--tls-key", keyFile}, "--allow-remote-upstream"},
		{"leading zeros", []string{"--listen", listen, "--upstream", "127.0.0.1:5432", "--allow", "010.0.0.1", "--tls-cert", certFile, "--tls-key", keyFile}, "010.0.0.1"},
		{"no tls", []string{"--listen", listen, "--upstream", "127.0.0.1:5432", "--allow", "127.0.0.1"}, "--tls-cert and --tls-key are required"},
		{"missing cert file", []string{"--listen", listen, "--upstream", "127.0.0.1:5432", "--allow", "127.0.0.1", "--tls-cert", "/nonexistent.crt", "--tls-key", keyFile}, "/nonexistent.crt"},
		{"empty template", []string{"--listen", `{{ GetInterfaceIP "^nonexistent0$" }}:5432`, "--upstream", "127.0.0.1:5432", "--allow", "127.0.0.1", "--tls-cert", certFile, "--tls-key", keyFile}, "rendered no address"},
		{"bad balancer", []string{"--listen", listen, "--upstream", "127.0.0.1:5432", "--allow", "127.0.0.1", "--tls-cert", certFile, "--tls-key", keyFile, "--proxy-protocol-from", "10.0.0.256"}, `--proxy-protocol-from "10.0.0.256"`},
		{"bad redis url", []string{"--listen", listen, "--upstream", "127.0.0.1:5432", "--allow", "127.0.0.1", "--tls-cert", certFile, "--tls-key", keyFile, "--redis", "http://127.0.0.1:6379"}, `--redis scheme "http": use redis://`},
		{"bad redis prefix", []string{"--listen", listen, "--upstream", "127.0.0.1:5432", "--allow", "127.0.0.1", "--tls-cert", certFile, "--tls-key", keyFile, "--redis", "redis://127.0.0.1:6379", "--redis-prefix", "a}b"}, `--redis-prefix "a}b"`},
		{"missing crowdsec key", []string{"--listen", listen, "--upstream", "127.0.0.1:5432", "--allow", "127.0.0.1", "--tls-cert", certFile, "--tls-key", keyFile, "--crowdsec-lapi", "http://127.0.0.1:8080/", "--crowdsec-key-file", "/nonexistent.key"}, "--crowdsec-key-file"},
		{"crowdsec without key", []string{"--listen", listen, "--upstream", "127.0.0.1:5432", "--allow", "127.0.0.1", "--tls-cert", certFile, "--tls-key", keyFile, "--crowdsec-lapi", "http://127.0.0.1:8080/"}, "--crowdsec-key-file: the bouncer key file is required"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, append([]string{"serve"}, tc.args...)...)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			require.ErrorAs(t, err, &ee, "output: %s", out)
			require.Equal(t, 2, ee.ExitCode(), "output: %s", out)
			require.Contains(t, string(out), tc.want)
			require.NotContains(t, string(out), "panic")
			// Nothing was left listening.
			c, err := net.DialTimeout("tcp", listen, time.Second)
			if err == nil {
				c.Close()
				t.Fatalf("something listens on %s", listen)
			}
		})
	}
}

func TestVersionAndUsage(t *testing.T) {
	bin := pgwardenBinary(t)
	out, err := exec.Command(bin, "version").Output()
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(string(out), "pgwarden "), string(out))

	cmd := exec.Command(bin, "frobnicate")
	cmd.Stdout = io.Discard
	err = cmd.Run()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	require.Equal(t, 2, ee.ExitCode())
}
