package redistest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgwarden/pgwarden/internal/testproc"
)

// ErrNoRedis is wrapped by the errors StartE and FindBinary return when no
// redis-server binary can be found.
var ErrNoRedis = errors.New("no redis-server binary found: install redis-server (Debian: apt-get install redis-server) or set REDIS_SERVER")

const (
	// readyTimeout bounds one start, from exec to the first PONG. An empty
	// server is ready in milliseconds; the rest is room for a loaded CI box.
	readyTimeout = 30 * time.Second
	// startAttempts: freePort closes its probe socket before redis binds,
	// so another process may take the port in between.
	startAttempts = 3
)

// Server is a running throwaway redis-server.
type Server struct {
	Host string // "127.0.0.1"
	Port int
	Bin  string // the redis-server binary

	dir     string
	logPath string

	mu   sync.Mutex // guards proc
	proc *testproc.Process
}

// FindBinary returns the redis-server to run (see the package doc).
func FindBinary() (string, error) {
	if bin := os.Getenv("REDIS_SERVER"); bin != "" {
		// An explicit choice that does not work is an error, not a reason
		// to quietly run some other server.
		if !isExecutable(bin) {
			return "", fmt.Errorf("%w: REDIS_SERVER=%s is not an executable file", ErrNoRedis, bin)
		}
		return bin, nil
	}
	if bin, err := exec.LookPath("redis-server"); err == nil {
		return bin, nil
	}
	for _, bin := range []string{"/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"} {
		if isExecutable(bin) {
			return bin, nil
		}
	}
	return "", ErrNoRedis
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// Start starts a server for tb and stops it in tb.Cleanup. Without a
// redis-server binary it skips tb, unless CI is set, where it fails tb.
func Start(tb testing.TB) *Server {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout*startAttempts)
	defer cancel()
	s, err := StartE(ctx)
	if err != nil {
		if errors.Is(err, ErrNoRedis) && os.Getenv("CI") == "" {
			tb.Skipf("redistest: %v", err)
		}
		tb.Fatalf("redistest: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("redistest: redis log (last 20 lines):\n%s", s.LogTail(20))
		}
		if err := s.Stop(); err != nil {
			tb.Errorf("redistest: %v", err)
		}
	})
	return s
}

// StartE starts a server; the caller must call Stop. A missing binary
// yields an error wrapping ErrNoRedis.
func StartE(ctx context.Context) (s *Server, err error) {
	bin, err := FindBinary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "redistest-")
	if err != nil {
		return nil, fmt.Errorf("redistest: %w", err)
	}
	s = &Server{Host: "127.0.0.1", Bin: bin, dir: dir, logPath: filepath.Join(dir, "redis.log")}
	for attempt := 1; attempt <= startAttempts; attempt++ {
		if s.Port, err = freePort(); err != nil {
			break
		}
		if err = s.start(ctx); err == nil || ctx.Err() != nil || !strings.Contains(s.LogTail(5), "Address already in use") {
			break
		}
	}
	if err != nil {
		err = fmt.Errorf("%w\nredis log (last 20 lines):\n%s", err, s.LogTail(20))
		_ = s.Stop()
		return nil, err
	}
	return s, nil
}

// freePort asks the kernel for a free port on 127.0.0.1.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("redistest: finding a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// start runs redis-server on s.Port and waits for its PONG.
func (s *Server) start(ctx context.Context) error {
	logFile, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("redistest: %w", err)
	}
	defer logFile.Close() // the child keeps its own descriptor
	cmd := exec.Command(s.Bin,
		"--port", strconv.Itoa(s.Port),
		"--bind", "127.0.0.1",
		// A throwaway server: nothing on disk, so a restart is empty, which
		// is what an outage test wants.
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
		"--daemonize", "no",
		"--logfile", "",
		"--loglevel", "notice",
	)
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	proc, err := testproc.Start(cmd)
	if err != nil {
		return fmt.Errorf("redistest: starting %s: %w", s.Bin, err)
	}
	s.mu.Lock()
	s.proc = proc
	s.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var lastErr error
	for {
		if lastErr = ping(ctx, s.Addr()); lastErr == nil {
			return nil
		}
		select {
		case <-proc.Done:
			s.mu.Lock()
			s.proc = nil
			s.mu.Unlock()
			return fmt.Errorf("redistest: redis-server exited during startup: %v", proc.Err)
		case <-ctx.Done():
			s.kill()
			return fmt.Errorf("redistest: redis-server not ready: %w (last attempt: %v)", ctx.Err(), lastErr)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ping sends one inline PING and expects +PONG, without a client library.
func ping(ctx context.Context, addr string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}

// Addr is "127.0.0.1:PORT".
func (s *Server) Addr() string {
	return net.JoinHostPort(s.Host, strconv.Itoa(s.Port))
}

// URL is "redis://127.0.0.1:PORT/0".
func (s *Server) URL() string {
	return "redis://" + s.Addr() + "/0"
}

// Kill stops the server the hard way (SIGKILL) and waits for it: an
// outage. Clients see their connections reset and new dials refused.
func (s *Server) Kill() {
	s.kill()
}

func (s *Server) kill() {
	s.mu.Lock()
	proc := s.proc
	s.proc = nil
	s.mu.Unlock()
	if proc != nil {
		proc.Kill()
	}
}

// Restart starts the server again on the same port after Kill, empty (it
// persists nothing). It fails tb if the server cannot start.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.kill()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := s.start(ctx); err != nil {
		tb.Fatalf("redistest: restarting on port %d: %v\n%s", s.Port, err, s.LogTail(20))
	}
}

// Stop kills the server and removes its directory. It is safe to call more
// than once.
func (s *Server) Stop() error {
	s.kill()
	if s.dir == "" {
		return nil
	}
	err := os.RemoveAll(s.dir)
	s.dir = ""
	if err != nil {
		return fmt.Errorf("redistest: %w", err)
	}
	return nil
}

// LogTail returns the last n lines of the server's log.
func (s *Server) LogTail(n int) string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
