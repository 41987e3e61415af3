package main

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
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

// The certificate operations of a year, end to end through the binary:
// renewing the server certificate under a running gateway, a separate
// client CA for CI, and revoking a client certificate.

// clientCADir runs `pgwarden certs init-client-ca` into a fresh directory.
func clientCADir(t *testing.T) *certsDir {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ci")
	out, code := runCertsCmd(t, "init-client-ca", "--dir", dir)
	require.Equal(t, 0, code, "certs init-client-ca: %s", out)
	return &certsDir{dir: dir, caCert: filepath.Join(dir, "ca.crt"), caKey: filepath.Join(dir, "ca.key")}
}

func (d *certsDir) crl() string { return filepath.Join(d.dir, "crl.pem") }

// issue runs `pgwarden certs issue` for name and returns the libpq/pgx
// keywords that present the certificate, and its serial.
func (d *certsDir) issue(t *testing.T, name string) (string, *big.Int) {
	t.Helper()
	out, code := runCertsCmd(t, "issue", "--dir", d.dir, "--client", name, "--ttl", "2h")
	require.Equal(t, 0, code, "certs issue: %s", out)
	crt, key := filepath.Join(d.dir, name+".crt"), filepath.Join(d.dir, name+".key")
	return fmt.Sprintf("sslcert=%s sslkey=%s", crt, key), certFromFile(t, crt).SerialNumber
}

func mustReadFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	return data
}

// refusedBeforePostgres connects with pgx and with psql, both of which must
// be refused with FATAL 28000 carrying want, without postgres seeing a
// connection.
func refusedBeforePostgres(t *testing.T, pg *pgtest.Postgres, addr, rootCert, extra, want string) {
	t.Helper()
	err := requireUnseenByPostgres(t, pg, func() error {
		c, err := pgxConnect(addr, rootCert, pg.User, pg.Password, pg.Database, extra, false)
		if err == nil {
			_ = c.Close(context.Background())
		}
		return err
	})
	requirePgError(t, err, "28000", want)
	var out string
	requireUnseenByPostgres(t, pg, func() error {
		var err error
		out, err = runPsql(t, psqlConnInfo(addr, rootCert, pg, extra), pg.Password, "SELECT 1")
		return err
	})
	require.Contains(t, out, "FATAL:  "+want)
}

// acceptedByPgxAndPsql logs in as pg.User with extra through addr.
func acceptedByPgxAndPsql(t *testing.T, pg *pgtest.Postgres, addr, rootCert, extra string) {
	t.Helper()
	conn := mustPgx(t, addr, rootCert, pg.User, pg.Password, pg.Database, extra)
	require.Equal(t, pg.User, queryValue(t, conn, "SELECT current_user"))
	require.NoError(t, conn.Close(context.Background()))
	out, err := runPsql(t, psqlConnInfo(addr, rootCert, pg, extra), pg.Password, "SELECT current_user")
	require.NoError(t, err, out)
	require.Equal(t, pg.User, out)
}

func psqlConnInfo(addr, rootCert string, pg *pgtest.Postgres, extra string) string {
	_, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf("host=localhost hostaddr=127.0.0.1 port=%s user=%s dbname=%s sslmode=verify-full sslrootcert=%s %s",
		port, pg.User, pg.Database, rootCert, extra)
}

// TestCertsRenewUnderRunningGateway: `certs renew` replaces the server pair
// from the same CA; the gateway picks it up by its file watch, an open
// session continues on the old certificate, a new one gets the new serial,
// and the CA files (so every client's sslrootcert and every client
// certificate) are unchanged byte for byte.
func TestCertsRenewUnderRunningGateway(t *testing.T) {
	d := certsInit(t)
	withAlice, _ := d.issue(t, "alice")
	caBefore, caKeyBefore := mustReadFile(t, d.caCert), mustReadFile(t, d.caKey)
	old := certFromFile(t, d.serverCert)

	pg := pgtest.Start(t)
	g, addr := d.serve(t, pg, "--tls-client-ca", d.caCert)
	open := mustPgx(t, addr, d.caCert, pg.User, pg.Password, pg.Database, withAlice)
	require.Equal(t, "1", queryValue(t, open, "SELECT 1"))
	require.Zero(t, old.SerialNumber.Cmp(peerSerial(t, open)))

	out, code := runCertsCmd(t, "renew", "--dir", d.dir)
	require.Equal(t, 0, code, "certs renew: %s", out)
	renewed := certFromFile(t, d.serverCert)
	require.NotZero(t, old.SerialNumber.Cmp(renewed.SerialNumber))
	require.Contains(t, out, "serial "+renewed.SerialNumber.Text(16))
	require.Equal(t, old.DNSNames, renewed.DNSNames, "the names are kept")
	require.Equal(t, fmt.Sprint(old.IPAddresses), fmt.Sprint(renewed.IPAddresses))
	require.Equal(t, caBefore, mustReadFile(t, d.caCert), "ca.crt changed")
	require.Equal(t, caKeyBefore, mustReadFile(t, d.caKey), "ca.key changed")

	// No SIGHUP: the watcher loads the new pair.
	waitServedSerial(t, addr, d.roots, renewed.SerialNumber, g)
	waitLog(t, g, 0, "certificate reloaded with the renewed serial", func(l map[string]any) bool {
		return l["msg"] == "certificate reloaded" && l["serial"] == renewed.SerialNumber.Text(16)
	})
	fresh := mustPgx(t, addr, d.caCert, pg.User, pg.Password, pg.Database, withAlice)
	require.Zero(t, renewed.SerialNumber.Cmp(peerSerial(t, fresh)))
	require.Equal(t, "2", queryValue(t, fresh, "SELECT 2"))
	// The open session continues on the certificate it was set up with.
	require.Equal(t, "still here", queryValue(t, open, "SELECT 'still here'"))
	require.Zero(t, old.SerialNumber.Cmp(peerSerial(t, open)))
	// libpq verifies the new certificate with the old sslrootcert, and the
	// client certificate issued before the renewal still logs in.
	acceptedByPgxAndPsql(t, pg, addr, d.caCert, withAlice)
}

// TestCertsClientCAForCI is the set-up the README recommends for CI: the
// server's CA (certs init) stays with the gateway's operator, CI holds only
// a client CA (certs init-client-ca) to issue runner certificates.
func TestCertsClientCAForCI(t *testing.T) {
	server := certsInit(t)
	ci := clientCADir(t)
	entries, err := os.ReadDir(ci.dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	require.ElementsMatch(t, []string{"ca.crt", "ca.key", "crl.pem"}, names, "no server certificate, no --host needed")
	out, code := runCertsCmd(t, "issue", "--dir", ci.dir, "--client", "alice", "--ttl", "2h")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "sslrootcert=SERVER-CA.crt", "the hint must not send clients to the client CA for sslrootcert")
	withAlice := fmt.Sprintf("sslcert=%s sslkey=%s", filepath.Join(ci.dir, "alice.crt"), filepath.Join(ci.dir, "alice.key"))

	pg := pgtest.Start(t)
	_, addr := server.serve(t, pg, "--tls-client-ca", ci.caCert, "--tls-client-crl", ci.crl())
	// Clients verify the server with the server CA and present the CI one.
	acceptedByPgxAndPsql(t, pg, addr, server.caCert, withAlice)
	// A certificate from the server's CA is not a client certificate here.
	withServerCAs, _ := server.issue(t, "alice")
	refusedBeforePostgres(t, pg, addr, server.caCert, withServerCAs, "client certificate not trusted: unknown authority")

	// What the client CA's key cannot do: make a server certificate that a
	// client accepts, even a client that wrongly trusts the client CA as
	// its sslrootcert (the CA's extended key usage is clientAuth only).
	forgedDir := t.TempDir()
	certPEM, keyPEM := ci.ca(t).Server(t, "localhost", "127.0.0.1")
	forged := &certsDir{
		serverCert: certstest.WriteFile(t, filepath.Join(forgedDir, "server.crt"), certPEM),
		serverKey:  certstest.WriteFile(t, filepath.Join(forgedDir, "server.key"), keyPEM),
	}
	_, forgedAddr := forged.serve(t, pg)
	for _, root := range []string{server.caCert, ci.caCert} {
		_, err := pgxConnect(forgedAddr, root, pg.User, pg.Password, pg.Database, "", true)
		require.Error(t, err, "pgx accepted a server certificate of the client CA (sslrootcert %s)", root)
		out, err := runPsql(t, psqlConnInfo(forgedAddr, root, pg, ""), pg.Password, "SELECT 1")
		require.Error(t, err, out)
		require.Contains(t, out, "certificate verify failed", "psql with sslrootcert %s", root)
	}
	// And renewing in the client CA's directory is refused.
	out, code = runCertsCmd(t, "renew", "--dir", ci.dir, "--host", "localhost")
	require.Equal(t, 2, code, out)
	require.Contains(t, out, "cannot sign server certificates")
}

// TestCertsRevokeEndToEnd: `certs revoke` writes the CRL, the running
// gateway reloads it by itself, the sessions open with the revoked
// certificate are ended and it is refused with FATAL 28000 before postgres
// is dialed, while other certificates keep working; a corrupt replacement
// keeps the old list; an expired list refuses everyone (ending nobody's
// session) until `certs crl` re-signs it.
func TestCertsRevokeEndToEnd(t *testing.T) {
	server := certsInit(t)
	ci := clientCADir(t)
	withAlice, _ := ci.issue(t, "alice")
	withBob, bobSerial := ci.issue(t, "bob")
	withCarol, _ := ci.issue(t, "carol")

	pg := pgtest.Start(t)
	// All three log in as pg.User (alice).
	g, addr := server.serve(t, pg, "--tls-client-ca", ci.caCert, "--tls-client-crl", ci.crl(),
		"--tls-map-user", "bob="+pg.User, "--tls-map-user", "carol="+pg.User)
	for _, who := range []string{withAlice, withBob, withCarol} {
		acceptedByPgxAndPsql(t, pg, addr, server.caCert, who)
	}
	open := mustPgx(t, addr, server.caCert, pg.User, pg.Password, pg.Database, withAlice)
	openBob := mustPgx(t, addr, server.caCert, pg.User, pg.Password, pg.Database, withBob)

	// revoke NAME: the watcher reloads the list, no SIGHUP.
	mark := len(g.logLines())
	out, code := runCertsCmd(t, "revoke", "--dir", ci.dir, "--reason", "keyCompromise", "alice")
	require.Equal(t, 0, code, "certs revoke: %s", out)
	require.Contains(t, out, "(CN=alice, until ")
	waitLog(t, g, mark, "the CRL with one entry loaded", func(l map[string]any) bool {
		return l["msg"] == "certificate revocation list loaded" && l["revoked"] == float64(1)
	})
	// The session alice opened before is ended; bob's is not.
	waitLog(t, g, mark, "alice's open session ended", func(l map[string]any) bool {
		return l["msg"] == "connection closed" && l["outcome"] == "certificate_revoked"
	})
	waitLog(t, g, mark, "the sweep's summary", func(l map[string]any) bool {
		return l["msg"] == "sessions ended: their client certificate is revoked" && l["sessions"] == float64(1)
	})
	requireSessionEnded(t, open)
	require.Equal(t, "1", queryValue(t, openBob, "SELECT 1"))
	refusedBeforePostgres(t, pg, addr, server.caCert, withAlice, "client certificate revoked")
	acceptedByPgxAndPsql(t, pg, addr, server.caCert, withBob)
	waitLog(t, g, mark, "a connection closed as cert_rejected", func(l map[string]any) bool {
		return l["msg"] == "connection closed" && l["outcome"] == "cert_rejected"
	})

	// A corrupt replacement (watcher) and SIGHUP on it: refused, the
	// previous list stays in force.
	good := mustReadFile(t, ci.crl())
	crlFailed := func(l map[string]any) bool {
		return l["level"] == "error" && strings.Contains(str(l["error"]), "--tls-client-crl "+ci.crl())
	}
	mark = len(g.logLines())
	replaceFile(t, ci.crl(), []byte("-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n"))
	waitLog(t, g, mark, "CRL reload refused", crlFailed)
	mark = len(g.logLines())
	require.NoError(t, g.cmd.Process.Signal(syscall.SIGHUP))
	waitLog(t, g, mark, "CRL reload on SIGHUP refused", crlFailed)
	refusedBeforePostgres(t, pg, addr, server.caCert, withAlice, "client certificate revoked")
	acceptedByPgxAndPsql(t, pg, addr, server.caCert, withBob)
	replaceFile(t, ci.crl(), good)

	// revoke SERIAL, as openssl prints it (upper case, colons).
	hex := strings.ToUpper(bobSerial.Text(16))
	if len(hex)%2 == 1 {
		hex = "0" + hex
	}
	var pairs []string
	for i := 0; i < len(hex); i += 2 {
		pairs = append(pairs, hex[i:i+2])
	}
	mark = len(g.logLines())
	out, code = runCertsCmd(t, "revoke", "--dir", ci.dir, strings.Join(pairs, ":"))
	require.Equal(t, 0, code, "certs revoke SERIAL: %s", out)
	require.Contains(t, out, "(CN=bob, until ")
	waitLog(t, g, mark, "the CRL with two entries loaded", func(l map[string]any) bool {
		return l["msg"] == "certificate revocation list loaded" && l["revoked"] == float64(2)
	})
	refusedBeforePostgres(t, pg, addr, server.caCert, withBob, "client certificate revoked")
	requireSessionEnded(t, openBob)
	acceptedByPgxAndPsql(t, pg, addr, server.caCert, withCarol)
	openCarol := mustPgx(t, addr, server.caCert, pg.User, pg.Password, pg.Database, withCarol)

	// The same list past its NextUpdate: the gateway cannot vouch for any
	// certificate of the CA any more and refuses them all...
	mark = len(g.logLines())
	replaceFile(t, ci.crl(), expiredCopy(t, ci))
	waitLog(t, g, mark, "the expired CRL loaded", func(l map[string]any) bool {
		return l["msg"] == "certificate revocation list has expired; every client certificate of its CA is refused until it is re-signed (pgwarden certs crl)"
	})
	refusedBeforePostgres(t, pg, addr, server.caCert, withCarol, "client certificate status unknown: certificate revocation list expired")
	// An expired list revokes nothing: carol's open session goes on.
	require.Equal(t, "1", queryValue(t, openCarol, "SELECT 1"))
	// ... until `certs crl` re-signs it, keeping the revocations.
	mark = len(g.logLines())
	out, code = runCertsCmd(t, "crl", "--dir", ci.dir)
	require.Equal(t, 0, code, "certs crl: %s", out)
	require.Contains(t, out, "2 revoked")
	waitLog(t, g, mark, "the re-signed CRL loaded", func(l map[string]any) bool {
		return l["msg"] == "certificate revocation list loaded" && l["revoked"] == float64(2)
	})
	acceptedByPgxAndPsql(t, pg, addr, server.caCert, withCarol)
	refusedBeforePostgres(t, pg, addr, server.caCert, withAlice, "client certificate revoked")
	select {
	case err := <-g.done:
		t.Fatalf("pgwarden exited: %v", err)
	default:
	}
}

// requireSessionEnded: the gateway closed conn's connection, so the next
// query fails.
func requireSessionEnded(t *testing.T, conn *pgconn.PgConn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, err := conn.Exec(ctx, "SELECT 1").ReadAll()
	require.Error(t, err, "the session is still open")
}

// expiredCopy re-signs the CRL in d with the next number and a NextUpdate
// an hour ago, as a list nobody renewed would be.
func expiredCopy(t *testing.T, d *certsDir) []byte {
	t.Helper()
	block, _ := pem.Decode(mustReadFile(t, d.crl()))
	require.NotNil(t, block)
	cur, err := x509.ParseRevocationList(block.Bytes)
	require.NoError(t, err)
	ca := d.ca(t)
	tmpl := &x509.RevocationList{
		Number:     new(big.Int).Add(cur.Number, big.NewInt(1)),
		ThisUpdate: time.Now().Add(-2 * time.Hour),
		NextUpdate: time.Now().Add(-time.Hour),
	}
	for _, e := range cur.RevokedCertificateEntries {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries,
			x509.RevocationListEntry{SerialNumber: e.SerialNumber, RevocationTime: e.RevocationTime})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.Key)
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
}

// TestServeCRLConfigErrors: a CRL that cannot be used at start is a
// configuration error: exit 2, one line naming the flag, nothing listening.
func TestServeCRLConfigErrors(t *testing.T) {
	bin := pgwardenBinary(t)
	server := certsInit(t)
	ci, other := clientCADir(t), clientCADir(t)
	dir := t.TempDir()
	garbage := certstest.WriteFile(t, filepath.Join(dir, "garbage.pem"), []byte("not a CRL\n"))
	corrupt := certstest.WriteFile(t, filepath.Join(dir, "corrupt.pem"), []byte("-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n"))
	unreadable := certstest.WriteFile(t, filepath.Join(dir, "unreadable.pem"), mustReadFile(t, ci.crl()))
	require.NoError(t, os.Chmod(unreadable, 0))
	port := freePort(t)
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	base := []string{"serve", "--listen", listen, "--upstream", "127.0.0.1:5432", "--allow", "127.0.0.1/32",
		"--tls-cert", server.serverCert, "--tls-key", server.serverKey}

	tests := []struct {
		name string
		args []string
		want string
	}{
		{"missing", []string{"--tls-client-ca", ci.caCert, "--tls-client-crl", filepath.Join(dir, "nope.pem")}, "--tls-client-crl " + filepath.Join(dir, "nope.pem") + ": reading: no such file or directory"},
		{"garbage", []string{"--tls-client-ca", ci.caCert, "--tls-client-crl", garbage}, "--tls-client-crl " + garbage + ": no PEM X509 CRL block found"},
		{"corrupt", []string{"--tls-client-ca", ci.caCert, "--tls-client-crl", corrupt}, "--tls-client-crl " + corrupt + ": parsing CRL #1"},
		{"another CA's", []string{"--tls-client-ca", ci.caCert, "--tls-client-crl", other.crl()}, "--tls-client-crl " + other.crl() + ": CRL #1 (issuer"},
		{"without a client CA", []string{"--tls-client-crl", ci.crl()}, "--tls-client-crl needs --tls-client-ca"},
		{"a directory", []string{"--tls-client-ca", ci.caCert, "--tls-client-crl", dir}, "--tls-client-crl " + dir + ": reading: is a directory"},
	}
	if os.Geteuid() != 0 { // root reads a mode-0 file anyway
		tests = append(tests, struct {
			name string
			args []string
			want string
		}{"unreadable", []string{"--tls-client-ca", ci.caCert, "--tls-client-crl", unreadable}, "--tls-client-crl " + unreadable + ": reading: permission denied"})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, append(append([]string{}, base...), tc.args...)...)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			require.True(t, errors.As(err, &ee), "want exit 2, got %v\n%s", err, stderr.String())
			require.Equal(t, 2, ee.ExitCode(), stderr.String())
			var problems []string
			for _, line := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
				if strings.HasPrefix(line, "pgwarden: ") {
					problems = append(problems, line)
				}
			}
			require.Len(t, problems, 1, "one line per problem:\n%s", stderr.String())
			require.Contains(t, problems[0], tc.want)
			c, err := net.DialTimeout("tcp", listen, time.Second)
			if err == nil {
				c.Close()
				t.Fatalf("something listens on %s", listen)
			}
		})
	}
}
