package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/pgtest"
	"github.com/pgwarden/pgwarden/internal/systemd/sdtest"
)

// notifySocket is a unixgram socket standing in for systemd's
// NOTIFY_SOCKET: it collects every datagram the service sends.
type notifySocket struct {
	path string
	msgs <-chan string
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	sock := sdtest.ListenNotify(t)
	return &notifySocket{path: sock.Path, msgs: sock.Msgs}
}

// next returns the next datagram that is not a plain watchdog ping (those
// come at any time), counting the pings it skipped.
func (n *notifySocket) next(t *testing.T, pings *int) string {
	t.Helper()
	for {
		select {
		case m, ok := <-n.msgs:
			require.True(t, ok, "notify socket closed")
			if strings.HasPrefix(m, "WATCHDOG=1") {
				*pings++
				continue
			}
			return m
		case <-time.After(30 * time.Second):
			t.Fatal("no notification within 30s")
		}
	}
}

// waitPing waits for a watchdog ping whose STATUS matches want.
func (n *notifySocket) waitPing(t *testing.T, want *regexp.Regexp) string {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case m := <-n.msgs:
			if strings.HasPrefix(m, "WATCHDOG=1") && want.MatchString(m) {
				return m
			}
		case <-deadline:
			t.Fatalf("no WATCHDOG=1 with %s within 30s", want)
		}
	}
}

// TestSystemdNotifySequence runs the gateway as systemd runs a Type=notify
// service with WatchdogSec: READY=1 once it listens, WATCHDOG=1 every half
// period with STATUS= counting sessions and bans, RELOADING=1 with
// MONOTONIC_USEC in one datagram on SIGHUP followed by READY=1 (also when
// the reload fails), and STOPPING=1 when draining begins.
func TestSystemdNotifySequence(t *testing.T) {
	pg := pgtest.Start(t)
	certFile, keyFile, caFile := tlsFiles(t)
	port := freePort(t)
	notify := listenNotify(t)
	cfgFile := filepath.Join(t.TempDir(), "pgwarden.yaml")
	writeCfg := func(allow string) {
		writeServeConfig(t, cfgFile, port, pg.Addr(), certFile, keyFile, allow, "admin: 127.0.0.1:0\ndrain-timeout: 2s\n")
	}
	writeCfg("127.0.0.1/32")

	cmd := exec.Command(pgwardenBinary(t), "serve", "--config", cfgFile)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify.path, "WATCHDOG_USEC=400000")
	g := startCommand(t, cmd, "pgwarden started")

	pings := 0
	require.Equal(t, "READY=1\nSTATUS=serving: 0 sessions, 0 bans", notify.next(t, &pings))

	// A session and a ban show in the STATUS the pings carry.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=verify-full sslrootcert=%s",
		port, pg.User, pg.Password, pg.Database, caFile))
	require.NoError(t, err)
	defer conn.Close(context.Background())
	adminURL := "http://" + adminAddr(t, g) + "/bans"
	resp, err := http.Post(adminURL, "application/json", strings.NewReader(`{"ip": "192.0.2.7", "for": "1h"}`))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	notify.waitPing(t, regexp.MustCompile(`^WATCHDOG=1\nSTATUS=serving: 1 sessions, 1 bans$`))

	// A good reload, then a broken one: each is RELOADING=1 with the
	// monotonic clock, then READY=1.
	reloading := regexp.MustCompile(`^RELOADING=1\nMONOTONIC_USEC=[0-9]+\nSTATUS=reloading the configuration$`)
	for _, allow := range []string{"127.0.0.0/8", "010.0.0.1"} {
		writeCfg(allow)
		require.NoError(t, g.cmd.Process.Signal(syscall.SIGHUP))
		require.Regexp(t, reloading, notify.next(t, &pings))
		require.Equal(t, "READY=1\nSTATUS=serving: 1 sessions, 1 bans", notify.next(t, &pings))
	}

	require.NoError(t, g.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, "STOPPING=1\nSTATUS=draining: 1 sessions, 1 bans", notify.next(t, &pings))
	select {
	case err := <-g.done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("pgwarden did not exit")
	}
}

// adminAddr is the admin endpoint's address, from its log line.
func adminAddr(t *testing.T, p *process) string {
	t.Helper()
	for _, l := range p.logLines() {
		if l["msg"] == "admin endpoint listening" {
			return l["address"].(string)
		}
	}
	t.Fatalf("no admin endpoint in %v", p.logLines())
	return ""
}

func withoutEnv(names ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		drop := false
		for _, n := range names {
			drop = drop || name == n
		}
		if !drop {
			out = append(out, kv)
		}
	}
	return out
}

// TestSystemdSocketActivation runs the gateway under
// systemd-socket-activate, which binds the port, waits for the first
// connection and only then starts the service with the socket as fd 3
// (LISTEN_FDS, LISTEN_FDNAMES): that first connection is served, and so
// are the next ones.
func TestSystemdSocketActivation(t *testing.T) {
	activate, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("systemd-socket-activate is not installed (Debian's systemd package has it); TestSystemdInheritedSockets passes the socket directly")
	}
	pg := pgtest.Start(t)
	certFile, keyFile, caFile := tlsFiles(t)
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(activate, "--listen", addr, "--fdname", "pg", pgwardenBinary(t), "serve",
		"--listen", "systemd:pg", "--upstream", pg.Addr(), "--allow", "127.0.0.1", "--tls-cert", certFile, "--tls-key", keyFile)
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	logs := make(chan string, 256)
	go scanLines(stderr, logs)
	waitLine(t, logs, "Listening on "+addr)

	// Nothing runs pgwarden yet: this connection starts it.
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=verify-full sslrootcert=%s",
		port, pg.User, pg.Password, pg.Database, caFile)
	for i := range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		conn, err := pgconn.Connect(ctx, dsn)
		require.NoError(t, err, "connection %d", i)
		res, err := conn.Exec(ctx, "SELECT 1").ReadAll()
		require.NoError(t, err)
		require.Equal(t, "1", string(res[0].Rows[0][0]))
		require.NoError(t, conn.Close(ctx))
		cancel()
	}
	line := waitLine(t, logs, `"msg":"listening"`)
	require.Contains(t, line, `"address":"`+addr+`"`)
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
}

// TestSystemdInheritedSockets passes listening sockets the way systemd
// does, without systemd: as fds 3 and up with LISTEN_PID set to the
// service's pid (a shell that execs it keeps its pid), LISTEN_FDS and
// LISTEN_FDNAMES. systemd:NAME takes the socket of that name; sockets for
// another pid are not taken.
func TestSystemdInheritedSockets(t *testing.T) {
	pg := pgtest.Start(t)
	certFile, keyFile, caFile := tlsFiles(t)
	serve := []string{"--upstream", pg.Addr(), "--allow", "127.0.0.1", "--tls-cert", certFile, "--tls-key", keyFile}

	// Two sockets; the service listens on the second only.
	var files []*os.File
	var addrs []string
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		f, err := ln.(*net.TCPListener).File()
		require.NoError(t, err)
		require.NoError(t, ln.Close()) // the duplicate in f stays open and listening
		t.Cleanup(func() { _ = f.Close() })
		files = append(files, f)
		addrs = append(addrs, ln.Addr().String())
	}
	wrapped := func(pid string, args ...string) *exec.Cmd {
		script := `LISTEN_PID=$$; [ -n "$PID" ] && LISTEN_PID=$PID; export LISTEN_PID; exec "$@"`
		cmd := exec.Command("sh", append([]string{"-c", script, "sh", pgwardenBinary(t), "serve"}, args...)...)
		cmd.Env = append(withoutEnv("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"), "LISTEN_FDS=2", "LISTEN_FDNAMES=admin:pg", "PID="+pid)
		cmd.ExtraFiles = files
		return cmd
	}

	g := startCommand(t, wrapped("", append([]string{"--listen", "systemd:pg"}, serve...)...), "pgwarden started")
	var listening []string
	for _, l := range g.logLines() {
		if l["msg"] == "listening" {
			listening = append(listening, l["address"].(string))
		}
	}
	require.Equal(t, []string{addrs[1]}, listening)
	require.True(t, g.hasLog("systemd passed sockets that no --listen systemd:NAME takes; they stay unused"))
	_, port, _ := net.SplitHostPort(addrs[1])
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%s user=%s password=%s dbname=%s sslmode=verify-full sslrootcert=%s",
		port, pg.User, pg.Password, pg.Database, caFile))
	require.NoError(t, err)
	require.NoError(t, conn.Close(ctx))
	require.NoError(t, g.cmd.Process.Signal(syscall.SIGTERM))
	<-g.done

	// Mistakes are reported before anything serves.
	for _, tc := range []struct {
		pid, listen, want string
	}{
		{"1", "systemd:pg", "the sockets in LISTEN_FDS are for process 1, not this one"},
		{"", "systemd:other", `systemd passed no socket named "other" (it passed admin, pg)`},
	} {
		out, err := wrapped(tc.pid, append([]string{"--listen", tc.listen}, serve...)...).CombinedOutput()
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee, "%s", out)
		require.Contains(t, string(out), "--listen "+tc.listen+": "+tc.want)
	}
}

func scanLines(r interface{ Read([]byte) (int, error) }, out chan<- string) {
	buf := make([]byte, 0, 64<<10)
	tmp := make([]byte, 4096)
	for {
		n, err := r.Read(tmp)
		buf = append(buf, tmp[:n]...)
		for {
			i := strings.IndexByte(string(buf), '\n')
			if i < 0 {
				break
			}
			out <- string(buf[:i])
			buf = buf[i+1:]
		}
		if err != nil {
			close(out)
			return
		}
	}
}

// waitLine returns the first line containing want.
func waitLine(t *testing.T, lines <-chan string, want string) string {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			require.True(t, ok, "output ended before %q", want)
			if strings.Contains(l, want) {
				return l
			}
		case <-deadline:
			t.Fatalf("no line with %q within 30s", want)
		}
	}
}
