package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgwarden/pgwarden/internal/testproc"
)

const (
	// readyTimeout bounds one start of the server, from exec to the first
	// accepted connection. A fresh cluster with fsync off is ready in well
	// under a second; 30 s leaves room for a loaded two-core CI machine.
	readyTimeout = 30 * time.Second
	// initdbTimeout bounds initdb when the caller's context has no deadline.
	initdbTimeout = 2 * time.Minute
	// startAttempts is how many ports are tried: FreePort closes its probe
	// socket before postgres binds, so another process can take the port in
	// between.
	startAttempts = 3
	// maxSocketPath is the usable length of sun_path on Linux (108 with NUL).
	maxSocketPath = 107
)

// Postgres is a running throwaway server. Its exported fields are read-only.
type Postgres struct {
	Host      string // "127.0.0.1": the server listens on IPv4 loopback only
	Port      int
	SocketDir string // unix socket directory (holds .s.PGSQL.<Port>)

	SuperUser, SuperPassword string // "postgres", random
	User, Password           string // "alice", random; LOGIN, owns Database
	Database                 string // "app"
	OtherUser, OtherPassword string // "bob", random; LOGIN, owns nothing

	BinDir string

	base    string              // temporary directory holding everything below
	dataDir string              // base/data
	logPath string              // base/postgres.log
	logFile *os.File            // the server's stderr, kept open until Stop
	cred    *syscall.Credential // non-nil when running the server as another user
	proc    *testproc.Process

	barrier  atomic.Uint64
	stopOnce sync.Once
	stopErr  error

	mu       sync.Mutex // guards the two fields below: Log may race with Stop
	stopped  bool
	finalLog string // the log as it was at Stop, after base is gone
}

// Option changes how the server is set up.
type Option func(*config)

type config struct {
	conf []string // "key=value", passed as -c after the defaults so they win
	hba  []string // host lines of pg_hba.conf; nil means the defaults
}

// WithConf sets a server parameter (postgres -c key=value). It is applied
// after the package's defaults, so it can override them.
func WithConf(key, value string) Option {
	return func(c *config) { c.conf = append(c.conf, key+"="+value) }
}

// WithHBA replaces the host lines of pg_hba.conf (by default scram-sha-256 for
// 127.0.0.1/32 and ::1/128). The first line, "local all all trust", is always
// kept: the package itself connects over the unix socket.
func WithHBA(lines ...string) Option {
	return func(c *config) { c.hba = append(c.hba, lines...) }
}

// Start starts a server for tb and stops it in tb.Cleanup. With no server
// binaries it skips tb, unless the environment variable CI is non-empty, where
// it fails tb instead: on CI a missing server is a broken machine.
func Start(tb testing.TB, opts ...Option) *Postgres {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), initdbTimeout+readyTimeout*startAttempts)
	defer cancel()
	p, err := StartE(ctx, opts...)
	if err != nil {
		if errors.Is(err, ErrNoPostgres) && os.Getenv("CI") == "" {
			tb.Skipf("pgtest: %v", err)
		}
		tb.Fatalf("pgtest: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("pgtest: postgres log (last 40 lines):\n%s", p.LogTail(40))
		}
		if err := p.Stop(); err != nil {
			tb.Errorf("pgtest: %v", err)
		}
	})
	return p
}

// StartE starts a server; the caller must call Stop. It is for TestMain,
// where there is no testing.TB. A missing server yields an error wrapping
// ErrNoPostgres.
func StartE(ctx context.Context, opts ...Option) (p *Postgres, err error) {
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	bin, err := FindBinDir()
	if err != nil {
		return nil, err
	}
	cred, err := serverCredential()
	if err != nil {
		return nil, err
	}
	base, err := os.MkdirTemp(tempParent(cred != nil), "pgtest-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	p = &Postgres{
		Host:      "127.0.0.1",
		SocketDir: filepath.Join(base, "sock"),
		SuperUser: "postgres",
		User:      "alice",
		Database:  "app",
		OtherUser: "bob",
		BinDir:    bin,
		base:      base,
		dataDir:   filepath.Join(base, "data"),
		logPath:   filepath.Join(base, "postgres.log"),
		cred:      cred,
	}
	defer func() {
		if err != nil {
			if tail := p.LogTail(30); tail != "" {
				err = fmt.Errorf("%w\npostgres log (last 30 lines):\n%s", err, tail)
			}
			_ = p.Stop()
			p = nil
		}
	}()
	p.SuperPassword, p.Password, p.OtherPassword = randomPassword(), randomPassword(), randomPassword()

	if err := p.prepareDirs(); err != nil {
		return nil, err
	}
	if err := p.initdb(ctx); err != nil {
		return nil, err
	}
	if err := p.writeHBA(cfg.hba); err != nil {
		return nil, err
	}
	if p.logFile, err = os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if err := p.start(ctx, cfg.conf); err != nil {
		return nil, err
	}
	if err := p.createFixtures(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// serverCredential returns the OS user to run initdb and postgres as: nil
// when not root (run as ourselves), else "postgres" if it exists (Debian's
// packages create it), else "nobody". Both programs refuse to run as root.
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	var errs []error
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil {
			errs = append(errs, fmt.Errorf("user %s: non-numeric uid/gid %s/%s", name, u.Uid, u.Gid))
			continue
		}
		// Groups empty with NoSetGroups false drops root's supplementary
		// groups, so the server has only the unprivileged user's rights.
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
	}
	return nil, fmt.Errorf("pgtest: running as root and no unprivileged user to run postgres as: %w", errors.Join(errs...))
}

// tempParent returns the directory to create the instance directory in:
// os.TempDir(), unless the unprivileged server user could not reach it (root
// with TMPDIR under /root, say) or the unix socket path would be too long, in
// which case /tmp.
func tempParent(otherUser bool) string {
	dir := os.TempDir()
	if len(dir)+len("/pgtest-1234567890/sock/.s.PGSQL.65535") > maxSocketPath {
		return "/tmp"
	}
	if otherUser && !worldTraversable(dir) {
		return "/tmp"
	}
	return dir
}

// worldTraversable reports whether every directory from / down to dir has
// the search bit for others.
func worldTraversable(dir string) bool {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for {
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}

// prepareDirs makes base reachable by the server user and creates the data
// and socket directories owned by it. The log file stays ours: the server
// writes to it through the stderr descriptor we hand it.
func (p *Postgres) prepareDirs() error {
	// MkdirTemp creates 0700; the server user must be able to traverse base.
	if err := os.Chmod(p.base, 0o755); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	for _, dir := range []string{p.dataDir, p.SocketDir} {
		if err := os.Mkdir(dir, 0o700); err != nil {
			return fmt.Errorf("pgtest: %w", err)
		}
		if err := p.chown(dir); err != nil {
			return err
		}
	}
	return nil
}

func (p *Postgres) chown(path string) error {
	if p.cred == nil {
		return nil
	}
	if err := os.Chown(path, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return nil
}

// command builds an exec.Cmd for one of the server binaries, running as the
// server user, in base (the caller's working directory may be unreadable to
// that user), with an environment that cannot redirect it.
func (p *Postgres) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	if ctx != nil {
		cmd = exec.CommandContext(ctx, filepath.Join(p.BinDir, name), args...)
	} else {
		cmd = exec.Command(filepath.Join(p.BinDir, name), args...)
	}
	cmd.Dir = p.base
	cmd.Env = childEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	return cmd
}

// childEnv is our environment without PG* variables (PGDATA, PGPORT... would
// otherwise change what the server does) and with LC_ALL=C, because the
// package reads the server's English messages from its log.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_ALL=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C")
}

func (p *Postgres) initdb(ctx context.Context) error {
	// The superuser password reaches initdb through a file, never argv.
	pwfile := filepath.Join(p.base, "pwfile")
	if err := os.WriteFile(pwfile, []byte(p.SuperPassword+"\n"), 0o600); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	defer os.Remove(pwfile)
	if err := p.chown(pwfile); err != nil {
		return err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, initdbTimeout)
		defer cancel()
	}
	cmd := p.command(ctx, "initdb",
		"-D", p.dataDir,
		"-U", p.SuperUser,
		"--auth-local=trust",
		"--auth-host=scram-sha-256",
		"--pwfile="+pwfile,
		"-E", "UTF8",
		"--locale=C",
		// A throwaway cluster need not survive a crash; skipping the fsyncs
		// roughly halves initdb's time.
		"--no-sync",
	)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("pgtest: initdb after %v: %w\n%s", time.Since(start).Round(time.Millisecond), err, out)
	}
	return nil
}

// writeHBA replaces initdb's pg_hba.conf, which would also trust local
// replication and depends on the initdb version, with an explicit one.
func (p *Postgres) writeHBA(hostLines []string) error {
	if hostLines == nil {
		hostLines = []string{
			"host all all 127.0.0.1/32 scram-sha-256",
			"host all all ::1/128 scram-sha-256",
		}
	}
	content := "# written by pgtest\nlocal all all trust\n" + strings.Join(hostLines, "\n") + "\n"
	// The file exists and belongs to the server user; rewriting it in place
	// keeps owner and mode.
	if err := os.WriteFile(filepath.Join(p.dataDir, "pg_hba.conf"), []byte(content), 0o600); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return nil
}

// start runs postgres on a free port and waits until it accepts a
// connection, retrying with another port when the chosen one was taken.
func (p *Postgres) start(ctx context.Context, extraConf []string) error {
	var err error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		var port int
		if port, err = FreePort(); err != nil {
			return err
		}
		mark := p.LogSize()
		if err = p.startOnce(ctx, port, extraConf); err == nil {
			return nil
		}
		// Retry only when the server gave up on the port and exited; any
		// other failure would recur.
		if p.proc != nil || ctx.Err() != nil || !strings.Contains(p.LogSince(mark), "could not bind") {
			return err
		}
	}
	return err
}

func (p *Postgres) startOnce(ctx context.Context, port int, extraConf []string) error {
	p.Port = port
	conf := []string{
		"listen_addresses=127.0.0.1",
		"port=" + strconv.Itoa(port),
		"unix_socket_directories=" + p.SocketDir,
		// The log is how tests see whether a client reached the server.
		"log_connections=on",
		"log_disconnections=on",
		"log_destination=stderr",
		"logging_collector=off",
		// Durability is pointless for a throwaway cluster and costs time.
		"fsync=off",
		"synchronous_commit=off",
		"full_page_writes=off",
		"max_connections=100",
		"password_encryption=scram-sha-256",
	}
	conf = append(conf, extraConf...)
	args := []string{"-D", p.dataDir}
	for _, c := range conf {
		args = append(args, "-c", c)
	}
	// No context: the server must outlive StartE's context.
	cmd := p.command(nil, "postgres", args...)
	cmd.Stdout, cmd.Stderr = p.logFile, p.logFile
	proc, err := testproc.Start(cmd)
	if err != nil {
		return fmt.Errorf("pgtest: starting postgres: %w", err)
	}
	p.proc = proc

	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	start := time.Now()
	var lastErr error
	for {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgconn.Connect(cctx, p.SocketConnString())
		ccancel()
		if err == nil {
			_ = conn.Close(ctx)
			return nil
		}
		lastErr = err
		select {
		case <-proc.Done:
			p.proc = nil
			return fmt.Errorf("pgtest: postgres exited during startup: %v", proc.Err)
		case <-ctx.Done():
			return fmt.Errorf("pgtest: postgres not ready after %v: %w (last attempt: %v)",
				time.Since(start).Round(time.Millisecond), ctx.Err(), lastErr)
		case <-time.After(25 * time.Millisecond):
		}
	}
}

func (p *Postgres) createFixtures(ctx context.Context) error {
	// CREATE DATABASE cannot run inside the implicit transaction of a
	// multi-statement query, so one statement at a time. The passwords are
	// hex, so quoting them needs no escaping.
	for _, sql := range []string{
		fmt.Sprintf("ALTER ROLE %s PASSWORD '%s'", p.SuperUser, p.SuperPassword),
		fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", p.User, p.Password),
		fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", p.OtherUser, p.OtherPassword),
		fmt.Sprintf("CREATE DATABASE %s OWNER %s", p.Database, p.User),
	} {
		if err := p.Exec(ctx, sql); err != nil {
			return fmt.Errorf("pgtest: creating fixtures: %w", err)
		}
	}
	return nil
}

// Stop shuts the server down (fast shutdown: SIGINT, which disconnects
// clients), waits for it, and removes every file the instance created. It is
// safe to call more than once; later calls return the first result.
func (p *Postgres) Stop() error {
	p.stopOnce.Do(func() { p.stopErr = p.stop() })
	return p.stopErr
}

func (p *Postgres) stop() error {
	var errs []error
	if proc := p.proc; proc != nil {
		select {
		case <-proc.Done:
			// It died on its own: a test should hear about that.
			errs = append(errs, fmt.Errorf("pgtest: postgres had already exited: %v", proc.Err))
		default:
			if err := terminate(proc); err != nil {
				errs = append(errs, err)
			}
		}
	}
	final := p.Log()
	p.mu.Lock()
	p.finalLog, p.stopped = final, true
	p.mu.Unlock()
	if p.logFile != nil {
		_ = p.logFile.Close()
	}
	if p.base != "" {
		if err := os.RemoveAll(p.base); err != nil {
			errs = append(errs, fmt.Errorf("pgtest: %w", err))
		}
	}
	return errors.Join(errs...)
}

// terminate escalates from fast shutdown to immediate shutdown to SIGKILL.
func terminate(proc *testproc.Process) error {
	steps := []struct {
		sig  syscall.Signal
		wait time.Duration
	}{
		{syscall.SIGINT, 20 * time.Second},
		{syscall.SIGQUIT, 5 * time.Second},
		{syscall.SIGKILL, 5 * time.Second},
	}
	for i, s := range steps {
		_ = proc.Cmd.Process.Signal(s.sig)
		select {
		case <-proc.Done:
			if i > 0 {
				return fmt.Errorf("pgtest: postgres ignored fast shutdown, needed %v", s.sig)
			}
			return nil
		case <-time.After(s.wait):
		}
	}
	return errors.New("pgtest: postgres did not exit after SIGKILL")
}

// Addr is the server's TCP address, "127.0.0.1:PORT".
func (p *Postgres) Addr() string {
	return net.JoinHostPort(p.Host, strconv.Itoa(p.Port))
}

// ConnStringFor is a keyword/value connection string straight to the server
// over TCP (sslmode=disable: the server has no TLS; pgwarden terminates it).
func (p *Postgres) ConnStringFor(user, password, database string) string {
	return fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=%s sslmode=disable connect_timeout=10",
		p.Host, p.Port, user, password, database)
}

// SuperConnString connects to database postgres as the superuser over TCP.
func (p *Postgres) SuperConnString() string {
	return p.ConnStringFor(p.SuperUser, p.SuperPassword, "postgres")
}

// ConnString connects to Database as User (alice) over TCP.
func (p *Postgres) ConnString() string {
	return p.ConnStringFor(p.User, p.Password, p.Database)
}

// SocketConnString connects as the superuser over the unix socket (trust).
// Such connections count in ConnectionsReceived but not in
// TCPConnectionsReceived.
func (p *Postgres) SocketConnString() string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=postgres sslmode=disable connect_timeout=10",
		p.SocketDir, p.Port, p.SuperUser)
}

// Exec runs sql (one or more statements, simple protocol) as the superuser
// over the unix socket, straight to the server.
func (p *Postgres) Exec(ctx context.Context, sql string) error {
	_, err := p.query(ctx, sql)
	return err
}

// QueryValue runs sql like Exec and returns the first column of the first
// row of its last result, as text ("" for NULL).
func (p *Postgres) QueryValue(ctx context.Context, sql string) (string, error) {
	res, err := p.query(ctx, sql)
	if err != nil {
		return "", err
	}
	if len(res) == 0 || len(res[len(res)-1].Rows) == 0 || len(res[len(res)-1].Rows[0]) == 0 {
		return "", fmt.Errorf("pgtest: %q returned no rows", sql)
	}
	return string(res[len(res)-1].Rows[0][0]), nil
}

func (p *Postgres) query(ctx context.Context, sql string) ([]*pgconn.Result, error) {
	conn, err := pgconn.Connect(ctx, p.SocketConnString())
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return conn.Exec(ctx, sql).ReadAll()
}

// Bin is the path of a client program such as psql or pgbench: the one in
// BinDir if present, else the one on PATH, else the BinDir path (so the
// caller's exec error names it).
func (p *Postgres) Bin(name string) string {
	path := filepath.Join(p.BinDir, name)
	if isExecutable(path) {
		return path
	}
	if lp, err := exec.LookPath(name); err == nil {
		return lp
	}
	return path
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. The
// probe socket is closed before returning, so the port can be taken by
// someone else before the caller binds it; callers retry.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randomPassword() string {
	b := make([]byte, 18)
	// crypto/rand.Read never returns an error on supported platforms (Go 1.24+).
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// FreeAddr is FreePort as 127.0.0.1:PORT, failing tb if there is none.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	port, err := FreePort()
	if err != nil {
		tb.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", port)
}

// Code returns the SQLSTATE of a pgconn error ("" if there is none).
func Code(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}
