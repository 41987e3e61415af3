package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
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
	return startProcessIn(t, "", ready, args...)
}

// startProcessIn is startProcess in working directory dir ("": this one).
func startProcessIn(t *testing.T, dir, ready string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(pgwardenBinary(t), args...)
	cmd.Dir = dir
	return startCommand(t, cmd, ready)
}

// startCommand runs cmd, a pgwarden command (perhaps behind a wrapper or
// with an environment of its own), and waits for its log line ready.
func startCommand(t *testing.T, cmd *exec.Cmd, ready string) *process {
	t.Helper()
	args := cmd.Args[1:]
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
	dir := t.TempDir()
	unknownKey, badYAML := filepath.Join(dir, "unknown.yaml"), filepath.Join(dir, "bad.yaml")
	require.NoError(t, os.WriteFile(unknownKey, []byte("listen: ["+listen+"]\nupstrem: 127.0.0.1:5432\n"), 0o600))
	require.NoError(t, os.WriteFile(badYAML, []byte("listen: ["+listen+"\nupstream: 127.0.0.1:5432\n"), 0o600))
	machine, noPassword, bouncerKey := filepath.Join(dir, "machine.yaml"), filepath.Join(dir, "nopw.yaml"), filepath.Join(dir, "bouncer.key")
	require.NoError(t, os.WriteFile(machine, []byte("url: http://127.0.0.1:8081/\nlogin: pgwarden\npassword: pw\n"), 0o600))
	require.NoError(t, os.WriteFile(noPassword, []byte("url: http://127.0.0.1:8080/\nlogin: pgwarden\n"), 0o600))
	require.NoError(t, os.WriteFile(bouncerKey, []byte("key\n"), 0o600))
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
		{"missing crowdsec machine credentials", []string{"--listen", listen, "--upstream", "127.0.0.1:5432", "--allow", "127.0.0.1", "--tls-cert", certFile, "--tls-key", keyFile, "--crowdsec-machine-credentials", "/nonexistent.yaml"}, "--crowdsec-machine-credentials: open /nonexistent.yaml: no such file or directory; create it with `cscli machines add pgwarden --auto -f /nonexistent.yaml`"},
		{"crowdsec machine without password", []string{"--listen", listen, "--upstream", "127.0.0.1:5432", "--allow", "127.0.0.1", "--tls-cert", certFile, "--tls-key", keyFile, "--crowdsec-machine-credentials", noPassword}, "--crowdsec-machine-credentials " + noPassword + ": login and password are required"},
		{"crowdsec machine on another LAPI", []string{"--listen", listen, "--upstream", "127.0.0.1:5432", "--allow", "127.0.0.1", "--tls-cert", certFile, "--tls-key", keyFile, "--crowdsec-machine-credentials", machine, "--crowdsec-lapi", "http://127.0.0.1:8080/", "--crowdsec-key-file", bouncerKey}, "--crowdsec-machine-credentials: its url http://127.0.0.1:8081/ is not --crowdsec-lapi http://127.0.0.1:8080/"},
		// The certificate loads (and would log so) before the allowlist is refused.
		{"bad allow after a good certificate", []string{"--listen", listen, "--upstream", "127.0.0.1:5432", "--allow", "10.0.0.0/33", "--tls-cert", certFile, "--tls-key", keyFile}, `--allow "10.0.0.0/33"`},
		{"missing config file", []string{"--config", filepath.Join(dir, "nope.yaml")}, "nope.yaml: no such file"},
		{"unknown config key", []string{"--config", unknownKey}, `line 2: unknown key "upstrem"`},
		{"bad YAML", []string{"--config", badYAML}, "not valid YAML: line 1"},
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
			// The errors are the only output: no log line before them.
			for _, line := range strings.Split(strings.TrimSuffix(string(out), "\n"), "\n") {
				require.True(t, strings.HasPrefix(line, "pgwarden: "), "not an error line: %q", line)
			}
			// Nothing was left listening.
			c, err := net.DialTimeout("tcp", listen, time.Second)
			if err == nil {
				c.Close()
				t.Fatalf("something listens on %s", listen)
			}
		})
	}
}

// TestServeReportsEveryBadAllow: one line per bad --allow value, not only
// the first.
func TestServeReportsEveryBadAllow(t *testing.T) {
	certFile, keyFile, _ := tlsFiles(t)
	out, err := exec.Command(pgwardenBinary(t), "serve", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:5432",
		"--allow", "010.0.0.1", "--allow", "host.example", "--allow", "10.0.0.0/33", "--allow", "127.0.0.1",
		"--tls-cert", certFile, "--tls-key", keyFile).CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "output: %s", out)
	require.Equal(t, 2, ee.ExitCode())
	require.Equal(t, `pgwarden: --allow "010.0.0.1": leading zeros are ambiguous (octal or decimal?); write 10.0.0.1
pgwarden: --allow "host.example": hostnames are not allowed: the list is matched against the peer IP and never resolved; write an IP address or CIDR
pgwarden: --allow "10.0.0.0/33": prefix length 33 is out of range for IPv4 (0-32)
`, string(out))
}

// TestServeConfigFileRelativePaths starts serve from a directory other
// than its config file's, with relative paths in the file: they are found
// next to the file. The admin endpoint's start is logged once.
func TestServeConfigFileRelativePaths(t *testing.T) {
	certFile, keyFile, _ := tlsFiles(t)
	etc := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(etc, "tls"), 0o700))
	for src, dst := range map[string]string{certFile: "tls/server.crt", keyFile: "tls/server.key"} {
		b, err := os.ReadFile(src)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(etc, dst), b, 0o600))
	}
	config := filepath.Join(etc, "pgwarden.yaml")
	require.NoError(t, os.WriteFile(config, []byte(`listen: ["127.0.0.1:0"]
upstream: 127.0.0.1:1
allow: [127.0.0.1]
tls-cert: tls/server.crt
tls-key: tls/server.key
ban-state: bans.db
admin: 127.0.0.1:0
`), 0o600))
	elsewhere := t.TempDir()
	p := startProcessIn(t, elsewhere, "pgwarden started", "serve", "--config", config)
	_, err := os.Stat(filepath.Join(etc, "bans.db"))
	require.NoError(t, err, "the ban state goes next to the config file")
	_, err = os.Stat(filepath.Join(elsewhere, "bans.db"))
	require.ErrorIs(t, err, os.ErrNotExist)
	n := 0
	for _, l := range p.logLines() {
		if l["msg"] == "admin endpoint listening" {
			n++
		}
	}
	require.Equal(t, 1, n, "%v", p.logLines())
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-p.done:
		require.NoError(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("pgwarden did not stop")
	}
}

// TestServeWarnsOfHostBits: a CIDR with host bits set starts, with a
// warning naming the flag, what it matches, and the /32 for one host.
func TestServeWarnsOfHostBits(t *testing.T) {
	certFile, keyFile, _ := tlsFiles(t)
	p := startBinary(t, "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--allow", "127.0.0.1/8",
		"--ban-ignore", "10.1.2.3/8", "--tls-cert", certFile, "--tls-key", keyFile)
	var warnings []string
	for _, l := range p.logLines() {
		if l["msg"] == "configuration warning" {
			warnings = append(warnings, fmt.Sprint(l["error"]))
		}
	}
	require.ElementsMatch(t, []string{
		`--ban-ignore "10.1.2.3/8" has host bits set: it matches every address in 10.0.0.0/8; write 10.1.2.3/32 for the one host, or 10.0.0.0/8 for the network`,
		`--allow "127.0.0.1/8" has host bits set: it matches every address in 127.0.0.0/8; write 127.0.0.1/32 for the one host, or 127.0.0.0/8 for the network`,
	}, warnings)
}

// TestRefusalsVisibleAtInfo: a source outside the allowlist is reset
// without a byte, and at the default log level an info line says so,
// naming the route, the reason and the source; the counter carries the
// route.
func TestRefusalsVisibleAtInfo(t *testing.T) {
	certFile, keyFile, _ := tlsFiles(t)
	port, admin := freePort(t), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := startBinary(t, "--name", "app", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--upstream", "127.0.0.1:1",
		"--allow", "127.0.0.3/32", "--tls-cert", certFile, "--tls-key", keyFile, "--admin", admin)
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	if c, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, _ := c.Read(make([]byte, 1))
		require.Zero(t, n, "a refused source got a byte")
		_ = c.Close()
	}
	waitLog(t, p, 0, "refusal summary", func(l map[string]any) bool {
		if l["msg"] != "connections refused at accept" || l["level"] != "info" {
			return false
		}
		reasons, _ := l["by_reason"].([]any)
		sources, _ := l["top_sources"].([]any)
		return len(reasons) == 1 && len(sources) == 1 &&
			fmt.Sprint(reasons[0]) == "map[count:1 reason:not_allowed route:app]" &&
			fmt.Sprint(sources[0]) == "map[count:1 source:127.0.0.2]"
	})
	require.Equal(t, 1.0, metricValue(t, admin, `pgwarden_rejections_total{reason="not_allowed",route="app"}`))
	require.Contains(t, metricsText(t, admin), `pgwarden_rejections_total{reason="banned",route="app"} 0`)
}

// metricsText is the admin endpoint's /metrics.
func metricsText(t *testing.T, admin string) string {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(body)
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
