package main

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/certstest"
	"github.com/pgwarden/pgwarden/internal/pgtest"
)

// Certificates end to end: made by `pgwarden certs`, served by
// `pgwarden serve`, checked by psql (libpq) and pgx; hot reload with a
// session open; a broken replacement; client-certificate identity.

// certsDir is one `pgwarden certs init` output directory.
type certsDir struct {
	dir                   string
	caCert, caKey         string
	serverCert, serverKey string
	roots                 *x509.CertPool
}

// runCertsCmd runs `pgwarden certs ARGS...` and returns its combined output
// and exit code.
func runCertsCmd(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, pgwardenBinary(t), append([]string{"certs"}, args...)...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	t.Fatalf("pgwarden certs %v: %v\n%s", args, err, out)
	return "", -1
}

// certsInit runs `pgwarden certs init` for localhost and 127.0.0.1 into a
// fresh directory (which the command creates).
func certsInit(t *testing.T) *certsDir {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "certs")
	out, code := runCertsCmd(t, "init", "--dir", dir, "--host", "localhost", "--host", "127.0.0.1")
	require.Equal(t, 0, code, "certs init: %s", out)
	d := &certsDir{
		dir:        dir,
		caCert:     filepath.Join(dir, "ca.crt"),
		caKey:      filepath.Join(dir, "ca.key"),
		serverCert: filepath.Join(dir, "server.crt"),
		serverKey:  filepath.Join(dir, "server.key"),
		roots:      x509.NewCertPool(),
	}
	caPEM, err := os.ReadFile(d.caCert)
	require.NoError(t, err)
	require.True(t, d.roots.AppendCertsFromPEM(caPEM))
	return d
}

// ca loads the directory's CA so the test can issue more certificates from
// it, as an operator's own tooling (or cert-manager) would.
func (d *certsDir) ca(t *testing.T) *certstest.CA {
	t.Helper()
	keyPEM, err := os.ReadFile(d.caKey)
	require.NoError(t, err)
	block, _ := pem.Decode(keyPEM)
	require.NotNil(t, block, "%s: no PEM block", d.caKey)
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	require.NoError(t, err)
	return &certstest.CA{Cert: certFromFile(t, d.caCert), Key: key.(crypto.Signer)}
}

// serve starts `pgwarden serve` on a free loopback port with the
// directory's server pair, in front of pg.
func (d *certsDir) serve(t *testing.T, pg *pgtest.Postgres, extra ...string) (*process, string) {
	t.Helper()
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	args := append([]string{"--listen", addr, "--upstream", pg.Addr(), "--allow", "127.0.0.1/32",
		"--tls-cert", d.serverCert, "--tls-key", d.serverKey, "--drain-timeout", "1s"}, extra...)
	g := startBinary(t, args...)
	return g, addr
}

func certFromFile(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	return certFromPEM(t, data)
}

func certFromPEM(t *testing.T, data []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(data)
	require.NotNil(t, block, "no PEM block")
	c, err := x509.ParseCertificate(block.Bytes)
	require.NoError(t, err)
	return c
}

// servedCert does what a client does before its StartupMessage (SSLRequest,
// 'S', TLS handshake verified against roots for "localhost") and returns
// the certificate the gateway presented. It returns errors rather than
// failing, for use inside require.Eventually.
func servedCert(addr string, roots *x509.CertPool) (*x509.Certificate, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return nil, err
	}
	if _, err := conn.Write([]byte{0, 0, 0, 8, 4, 210, 22, 47}); err != nil { // SSLRequest
		return nil, err
	}
	var b [1]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		return nil, err
	}
	if b[0] != 'S' {
		return nil, fmt.Errorf("SSLRequest answered %q, want 'S'", b[0])
	}
	tc := tls.Client(conn, &tls.Config{RootCAs: roots, ServerName: "localhost", NextProtos: []string{"postgresql"}})
	if err := tc.Handshake(); err != nil {
		return nil, err
	}
	defer tc.Close()
	return tc.ConnectionState().PeerCertificates[0], nil
}

func requireServedSerial(t *testing.T, addr string, roots *x509.CertPool, want *big.Int) {
	t.Helper()
	c, err := servedCert(addr, roots)
	require.NoError(t, err)
	require.Zero(t, want.Cmp(c.SerialNumber), "served serial %x, want %x", c.SerialNumber, want)
}

// waitServedSerial polls new handshakes until the gateway presents want.
func waitServedSerial(t *testing.T, addr string, roots *x509.CertPool, want *big.Int, g *process) {
	t.Helper()
	require.Eventually(t, func() bool {
		c, err := servedCert(addr, roots)
		return err == nil && c.SerialNumber.Cmp(want) == 0
	}, 20*time.Second, 50*time.Millisecond, "the gateway never served serial %x; log:\n%v", want, g.logLines())
}

// replaceFile writes data to a temporary file in path's directory and
// renames it over path, as cert-manager, certbot and editors do.
func replaceFile(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-replace-*")
	require.NoError(t, err)
	_, err = f.Write(data)
	require.NoError(t, errors.Join(err, f.Chmod(0o600), f.Close()))
	require.NoError(t, os.Rename(f.Name(), path))
}

// pgxConnect connects with pgx to the gateway at addr with sslmode
// verify-full for host name "localhost" (resolved to 127.0.0.1 only, where
// the gateway listens). extra is appended to the DSN (e.g. sslcert=...).
// With noClientCert, whatever client certificate pgx found by default
// (~/.postgresql/postgresql.crt) is dropped, so the case is hermetic.
func pgxConnect(addr, rootCert, user, password, database, extra string, noClientCert bool) (*pgconn.PgConn, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=localhost port=%s user=%s password=%s dbname=%s sslmode=verify-full sslrootcert=%s connect_timeout=10 %s",
		port, user, password, database, rootCert, extra))
	if err != nil {
		return nil, err
	}
	cfg.LookupFunc = func(context.Context, string) ([]string, error) { return []string{"127.0.0.1"}, nil }
	if noClientCert {
		cfg.TLSConfig.Certificates = nil
		cfg.TLSConfig.GetClientCertificate = nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return pgconn.ConnectConfig(ctx, cfg)
}

func mustPgx(t *testing.T, addr, rootCert, user, password, database, extra string) *pgconn.PgConn {
	t.Helper()
	conn, err := pgxConnect(addr, rootCert, user, password, database, extra, false)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(ctx)
	})
	return conn
}

// queryValue runs sql on conn and returns the first value.
func queryValue(t *testing.T, conn *pgconn.PgConn, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	res, err := conn.Exec(ctx, sql).ReadAll()
	require.NoError(t, err)
	require.NotEmpty(t, res)
	require.NotEmpty(t, res[0].Rows)
	return string(res[0].Rows[0][0])
}

// peerSerial is the serial of the server certificate conn's TLS session
// was established with.
func peerSerial(t *testing.T, conn *pgconn.PgConn) *big.Int {
	t.Helper()
	tc, ok := conn.Conn().(*tls.Conn)
	require.True(t, ok, "pgconn's connection is %T, not *tls.Conn", conn.Conn())
	cs := tc.ConnectionState()
	require.NotEmpty(t, cs.VerifiedChains, "verify-full session without a verified chain")
	return cs.PeerCertificates[0].SerialNumber
}

// runPsql runs psql -c sql with conninfo. No client certificate is sent
// unless conninfo names one (PGSSLCERT points nowhere), and no password
// file or other PG* variable of the environment leaks in.
func runPsql(t *testing.T, conninfo, password, sql string) (string, error) {
	t.Helper()
	psql, ok := pgtest.HavePsql()
	require.True(t, ok, "psql is required (it is installed with postgresql-client)")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, psql, "-X", "-A", "-t", "-w", "-c", sql, conninfo)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	none := filepath.Join(t.TempDir(), "none")
	cmd.Env = append(cmd.Env, "PGPASSWORD="+password, "PGPASSFILE="+none, "PGSSLCERT="+none+".crt", "PGSSLKEY="+none+".key",
		"PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// logsSince returns the gateway's log lines after the first mark lines.
func logsSince(g *process, mark int) []map[string]any {
	lines := g.logLines()
	if mark > len(lines) {
		return nil
	}
	return lines[mark:]
}

func hasLog(lines []map[string]any, match func(map[string]any) bool) bool {
	for _, l := range lines {
		if match(l) {
			return true
		}
	}
	return false
}

// waitLog polls the gateway's log (from line mark on) for a matching line.
func waitLog(t *testing.T, g *process, mark int, what string, match func(map[string]any) bool) {
	t.Helper()
	require.Eventually(t, func() bool { return hasLog(logsSince(g, mark), match) },
		20*time.Second, 20*time.Millisecond, "no log line: %s; log since mark:\n%v", what, logsSince(g, mark))
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

// requireUnseenByPostgres runs connect, which must fail, and checks that
// postgres never received a connection for it (the gateway refused before
// dialing upstream). It returns connect's error.
func requireUnseenByPostgres(t *testing.T, pg *pgtest.Postgres, connect func() error) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(t, pg.LogBarrier(ctx))
	before := pg.TCPConnectionsReceived()
	err := connect()
	require.Error(t, err)
	require.NoError(t, pg.LogBarrier(ctx))
	require.Equal(t, before, pg.TCPConnectionsReceived(), "postgres saw a connection the gateway should have refused (%v)", err)
	return err
}

func requirePgError(t *testing.T, err error, code, msgPart string) {
	t.Helper()
	var pe *pgconn.PgError
	require.True(t, errors.As(err, &pe), "want a postgres ErrorResponse, got %v", err)
	require.Equal(t, code, pe.Code, "%v", err)
	require.Contains(t, pe.Message, msgPart)
}

func TestCertsInitVerifyFull(t *testing.T) {
	d := certsInit(t)

	// Modes: the directory and keys are private, the certificates public.
	for path, want := range map[string]os.FileMode{
		d.dir: 0o700 | os.ModeDir, d.caKey: 0o600, d.serverKey: 0o600, d.caCert: 0o644, d.serverCert: 0o644,
	} {
		fi, err := os.Stat(path)
		require.NoError(t, err)
		require.Equal(t, want, fi.Mode(), "mode of %s", path)
	}
	server := certFromFile(t, d.serverCert)
	require.Equal(t, []string{"localhost"}, server.DNSNames)
	require.Len(t, server.IPAddresses, 1)
	require.Equal(t, "127.0.0.1", server.IPAddresses[0].String())
	_, err := server.Verify(x509.VerifyOptions{Roots: d.roots, DNSName: "localhost"})
	require.NoError(t, err)

	// A second init without --force refuses, exit 1, and touches nothing.
	type snap struct {
		data  []byte
		mtime time.Time
	}
	snapshot := func() map[string]snap {
		m := map[string]snap{}
		entries, err := os.ReadDir(d.dir)
		require.NoError(t, err)
		for _, e := range entries {
			p := filepath.Join(d.dir, e.Name())
			data, err := os.ReadFile(p)
			require.NoError(t, err)
			fi, err := os.Stat(p)
			require.NoError(t, err)
			m[e.Name()] = snap{data, fi.ModTime()}
		}
		return m
	}
	before := snapshot()
	require.Len(t, before, 4)
	out, code := runCertsCmd(t, "init", "--dir", d.dir, "--host", "localhost", "--host", "127.0.0.1")
	require.Equal(t, 1, code, "second certs init: %s", out)
	require.Contains(t, out, "already exists")
	require.Contains(t, out, "--force")
	require.Equal(t, before, snapshot(), "a refused certs init changed the directory")

	pg := pgtest.Start(t)
	_, addr := d.serve(t, pg)
	_, port, _ := net.SplitHostPort(addr)

	// psql: verify-full against the generated CA, by name (hostaddr keeps
	// it off ::1) and by IP SAN.
	for _, host := range []string{"host=localhost hostaddr=127.0.0.1", "host=127.0.0.1"} {
		out, err := runPsql(t, fmt.Sprintf("%s port=%s user=%s dbname=%s sslmode=verify-full sslrootcert=%s",
			host, port, pg.User, pg.Database, d.caCert), pg.Password, "SELECT current_user || ' ' || 40+2")
		require.NoError(t, err, "psql %s: %s", host, out)
		require.Equal(t, "alice 42", out)
	}
	// ... and libpq really verifies: a name the certificate lacks, and
	// another CA, are refused.
	out, err = runPsql(t, fmt.Sprintf("host=db.example hostaddr=127.0.0.1 port=%s user=%s dbname=%s sslmode=verify-full sslrootcert=%s",
		port, pg.User, pg.Database, d.caCert), pg.Password, "SELECT 1")
	require.Error(t, err)
	require.Contains(t, out, `does not match host name "db.example"`)
	other := certsInit(t)
	out, err = runPsql(t, fmt.Sprintf("host=localhost hostaddr=127.0.0.1 port=%s user=%s dbname=%s sslmode=verify-full sslrootcert=%s",
		port, pg.User, pg.Database, other.caCert), pg.Password, "SELECT 1")
	require.Error(t, err)
	require.Contains(t, out, "certificate verify failed")

	// pgx: verify-full, and the session's certificate is server.crt.
	conn := mustPgx(t, addr, d.caCert, pg.User, pg.Password, pg.Database, "")
	require.Equal(t, "42", queryValue(t, conn, "SELECT 40+2"))
	require.Zero(t, server.SerialNumber.Cmp(peerSerial(t, conn)))
	_, err = pgxConnect(addr, other.caCert, pg.User, pg.Password, pg.Database, "", false)
	require.Error(t, err)
	var uae x509.UnknownAuthorityError
	require.ErrorAs(t, err, &uae)
}

func TestCertsReloadWithSessionOpen(t *testing.T) {
	d := certsInit(t)
	pg := pgtest.Start(t)
	// Debug level: the watcher logs each file event it acts on, which the
	// SIGHUP case below uses to show the watcher did not do the reload.
	g, addr := d.serve(t, pg, "--log-level", "debug")
	serial0 := certFromFile(t, d.serverCert).SerialNumber
	requireServedSerial(t, addr, d.roots, serial0)

	s1 := mustPgx(t, addr, d.caCert, pg.User, pg.Password, pg.Database, "")
	require.Equal(t, "1", queryValue(t, s1, "SELECT 1"))
	require.Zero(t, serial0.Cmp(peerSerial(t, s1)))
	ca := d.ca(t)

	// 1. A new pair from the same CA, written to temporary files and
	// renamed over the old ones: the watcher picks it up.
	cert1, key1 := ca.Server(t, "localhost", "127.0.0.1")
	serial1 := certFromPEM(t, cert1).SerialNumber
	replaceFile(t, d.serverKey, key1)
	replaceFile(t, d.serverCert, cert1)
	waitServedSerial(t, addr, d.roots, serial1, g)
	waitLog(t, g, 0, "certificate reloaded with the new serial", func(l map[string]any) bool {
		return l["msg"] == "certificate reloaded" && l["serial"] == serial1.Text(16)
	})
	// The watcher did it (and says so at debug level; case 2 relies on it).
	require.True(t, hasLog(g.logLines(), func(l map[string]any) bool {
		return l["msg"] == "certificate file changed" && l["name"] == d.serverCert
	}), "no watcher event logged: %v", g.logLines())
	// The open session keeps working, on the keys it was set up with.
	require.Equal(t, "still here", queryValue(t, s1, "SELECT 'still here'"))
	require.Zero(t, serial0.Cmp(peerSerial(t, s1)))
	// A new session gets, and verifies, the new certificate.
	s2 := mustPgx(t, addr, d.caCert, pg.User, pg.Password, pg.Database, "")
	require.Zero(t, serial1.Cmp(peerSerial(t, s2)))
	require.Equal(t, "2", queryValue(t, s2, "SELECT 2"))

	// 2. SIGHUP. The pair is rewritten in place through hard links in
	// another directory: inotify reports a change only to the directory of
	// the path it was made through, so the watcher (on d.dir) cannot see
	// it and only SIGHUP can load it.
	hidden := t.TempDir()
	hiddenCert, hiddenKey := filepath.Join(hidden, "c"), filepath.Join(hidden, "k")
	require.NoError(t, os.Link(d.serverCert, hiddenCert))
	require.NoError(t, os.Link(d.serverKey, hiddenKey))
	cert2, key2 := ca.Server(t, "localhost", "127.0.0.1")
	serial2 := certFromPEM(t, cert2).SerialNumber
	mark := len(g.logLines())
	require.NoError(t, os.WriteFile(hiddenKey, key2, 0o600))
	require.NoError(t, os.WriteFile(hiddenCert, cert2, 0o600))
	requireServedSerial(t, addr, d.roots, serial1) // nothing reloaded it yet
	require.NoError(t, g.cmd.Process.Signal(syscall.SIGHUP))
	waitServedSerial(t, addr, d.roots, serial2, g)
	// The log is read from a pipe, so it may lag what the gateway does.
	waitLog(t, g, mark, "SIGHUP received", func(l map[string]any) bool { return strings.HasPrefix(str(l["msg"]), "SIGHUP") })
	waitLog(t, g, mark, "certificate reloaded with the SIGHUP serial", func(l map[string]any) bool {
		return l["msg"] == "certificate reloaded" && l["serial"] == serial2.Text(16)
	})
	since := logsSince(g, mark)
	require.False(t, hasLog(since, func(l map[string]any) bool { return l["msg"] == "certificate file changed" }),
		"the watcher saw the hidden rewrite, so this did not test SIGHUP: %v", since)

	// Both earlier sessions are still alive.
	require.Equal(t, "1", queryValue(t, s1, "SELECT 1"))
	require.Equal(t, "2", queryValue(t, s2, "SELECT 2"))
	s3 := mustPgx(t, addr, d.caCert, pg.User, pg.Password, pg.Database, "")
	require.Zero(t, serial2.Cmp(peerSerial(t, s3)))
}

func TestCertsBrokenReplacementKeepsOldPair(t *testing.T) {
	d := certsInit(t)
	pg := pgtest.Start(t)
	g, addr := d.serve(t, pg)
	serial0 := certFromFile(t, d.serverCert).SerialNumber
	ca := d.ca(t)

	// failedReload matches the error line of a refused reload naming the
	// key file.
	failedReload := func(l map[string]any) bool {
		return l["level"] == "error" && strings.Contains(str(l["msg"]), "reload failed") &&
			strings.Contains(str(l["error"]), d.serverKey)
	}
	stillServingOld := func() {
		t.Helper()
		requireServedSerial(t, addr, d.roots, serial0)
		conn := mustPgx(t, addr, d.caCert, pg.User, pg.Password, pg.Database, "")
		require.Zero(t, serial0.Cmp(peerSerial(t, conn)))
		require.Equal(t, "ok", queryValue(t, conn, "SELECT 'ok'"))
		require.NoError(t, conn.Close(context.Background()))
	}

	open := mustPgx(t, addr, d.caCert, pg.User, pg.Password, pg.Database, "")

	// A valid key of another pair: the watcher tries, the pair does not
	// match, the old one keeps serving.
	mark := len(g.logLines())
	_, otherKey := ca.Server(t, "localhost", "127.0.0.1")
	replaceFile(t, d.serverKey, otherKey)
	waitLog(t, g, mark, "reload failed naming "+d.serverKey, func(l map[string]any) bool {
		return failedReload(l) && strings.Contains(str(l["error"]), "do not match")
	})
	stillServingOld()

	// Garbage, and a SIGHUP on top of the watcher: refused again.
	mark = len(g.logLines())
	replaceFile(t, d.serverKey, []byte("this is not a key\n"))
	require.NoError(t, g.cmd.Process.Signal(syscall.SIGHUP))
	waitLog(t, g, mark, "SIGHUP received", func(l map[string]any) bool { return strings.HasPrefix(str(l["msg"]), "SIGHUP") })
	waitLog(t, g, mark, "reload of the garbage key failed naming "+d.serverKey, func(l map[string]any) bool {
		return failedReload(l) && strings.Contains(str(l["error"]), "no PEM private key block")
	})
	stillServingOld()
	require.Equal(t, "1", queryValue(t, open, "SELECT 1"))

	// A good pair afterwards is loaded: failures did not stop the watcher.
	cert1, key1 := ca.Server(t, "localhost", "127.0.0.1")
	serial1 := certFromPEM(t, cert1).SerialNumber
	replaceFile(t, d.serverKey, key1)
	replaceFile(t, d.serverCert, cert1)
	waitServedSerial(t, addr, d.roots, serial1, g)
	require.Equal(t, "1", queryValue(t, open, "SELECT 1"))
	select {
	case err := <-g.done:
		t.Fatalf("pgwarden exited: %v", err)
	default:
	}
}

func TestCertsClientCertificates(t *testing.T) {
	d := certsInit(t)
	out, code := runCertsCmd(t, "issue", "--dir", d.dir, "--client", "alice")
	require.Equal(t, 0, code, "certs issue: %s", out)
	aliceCert, aliceKey := filepath.Join(d.dir, "alice.crt"), filepath.Join(d.dir, "alice.key")
	fi, err := os.Stat(aliceKey)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	require.Equal(t, "alice", certFromFile(t, aliceCert).Subject.CommonName)
	withAlice := fmt.Sprintf("sslcert=%s sslkey=%s", aliceCert, aliceKey)

	// A client certificate for CN=alice from an unrelated CA.
	other := certsInit(t)
	out, code = runCertsCmd(t, "issue", "--dir", other.dir, "--client", "alice")
	require.Equal(t, 0, code, "certs issue: %s", out)
	withForeign := fmt.Sprintf("sslcert=%s sslkey=%s", filepath.Join(other.dir, "alice.crt"), filepath.Join(other.dir, "alice.key"))

	pg := pgtest.Start(t)
	g, addr := d.serve(t, pg, "--tls-client-ca", d.caCert)
	_, port, _ := net.SplitHostPort(addr)
	psqlInfo := func(user, extra string) string {
		return fmt.Sprintf("host=localhost hostaddr=127.0.0.1 port=%s user=%s dbname=%s sslmode=verify-full sslrootcert=%s %s",
			port, user, pg.Database, d.caCert, extra)
	}

	// Accepted: the right certificate (and, still, the password).
	conn := mustPgx(t, addr, d.caCert, pg.User, pg.Password, pg.Database, withAlice)
	require.Equal(t, "alice", queryValue(t, conn, "SELECT current_user"))
	out, err = runPsql(t, psqlInfo(pg.User, withAlice), pg.Password, "SELECT current_user")
	require.NoError(t, err, out)
	require.Equal(t, "alice", out)

	// Refused with 28000 before postgres is dialed: no certificate, one
	// from another CA, one whose CN is not the requested role.
	refusals := []struct {
		name, user, password, extra string
		noCert                      bool
		want                        string
	}{
		{"no certificate", pg.User, pg.Password, "", true, "client certificate required"},
		{"another CA", pg.User, pg.Password, withForeign, false, "client certificate not trusted: unknown authority"},
		{"CN alice as role bob", pg.OtherUser, pg.OtherPassword, withAlice, false, `certificate "alice" may not log in as role "bob"`},
	}
	for _, r := range refusals {
		t.Run(r.name, func(t *testing.T) {
			err := requireUnseenByPostgres(t, pg, func() error {
				c, err := pgxConnect(addr, d.caCert, r.user, r.password, pg.Database, r.extra, r.noCert)
				if err == nil {
					_ = c.Close(context.Background())
				}
				return err
			})
			requirePgError(t, err, "28000", r.want)
			var out string
			requireUnseenByPostgres(t, pg, func() error {
				var err error
				out, err = runPsql(t, psqlInfo(r.user, r.extra), r.password, "SELECT 1")
				return err
			})
			require.Contains(t, out, "FATAL:  "+r.want)
		})
	}
	waitLog(t, g, 0, "a connection closed with outcome cert_rejected", func(l map[string]any) bool {
		return l["msg"] == "connection closed" && l["outcome"] == "cert_rejected"
	})

	// --tls-map-user alice=bob: the alice certificate may log in as bob,
	// and, being mapped, only as bob.
	_, mapped := d.serve(t, pg, "--tls-client-ca", d.caCert, "--tls-map-user", "alice=bob")
	bob := mustPgx(t, mapped, d.caCert, pg.OtherUser, pg.OtherPassword, pg.Database, withAlice)
	require.Equal(t, "bob", queryValue(t, bob, "SELECT current_user"))
	err = requireUnseenByPostgres(t, pg, func() error {
		c, err := pgxConnect(mapped, d.caCert, pg.User, pg.Password, pg.Database, withAlice, false)
		if err == nil {
			_ = c.Close(context.Background())
		}
		return err
	})
	requirePgError(t, err, "28000", `certificate "alice" may not log in as role "alice"`)
	// The map does not open the door to a certificate of another CA.
	err = requireUnseenByPostgres(t, pg, func() error {
		c, err := pgxConnect(mapped, d.caCert, pg.OtherUser, pg.OtherPassword, pg.Database, withForeign, false)
		if err == nil {
			_ = c.Close(context.Background())
		}
		return err
	})
	requirePgError(t, err, "28000", "unknown authority")
}
