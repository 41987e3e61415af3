package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/pgtest"
)

// cancelPacket is a CancelRequest for (pid, key).
func cancelPacket(pid uint32, key []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(12+len(key)))
	b = binary.BigEndian.AppendUint32(b, 80877102)
	b = binary.BigEndian.AppendUint32(b, pid)
	return append(b, key...)
}

// errResetAtAccept means the gateway reset the connection without reading
// it: the source is banned (or not allowed).
var errResetAtAccept = errors.New("connection reset at accept")

// plainCancel sends a plaintext CancelRequest from source, as psql before
// 17 does, and waits for the gateway to close. It returns nil once the
// gateway has handled it (a cancel never gets a reply, only a close), and
// errResetAtAccept when it was reset unread.
func plainCancel(addr, source string, pid uint32, key []byte) error {
	conn, err := dialFrom(addr, source)
	if err != nil {
		return err
	}
	defer conn.Close()
	// The reset can arrive before the write: the write then takes the
	// socket's error, and a read after it sees only the end of the stream.
	if _, err := conn.Write(cancelPacket(pid, key)); errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return errResetAtAccept
	}
	return awaitClose(conn)
}

// tlsCancel sends the CancelRequest inside TLS (SSLRequest first), as pgx
// and libpq 17 do, optionally with a client certificate.
func tlsCancel(addr, source string, roots *x509.CertPool, certs []tls.Certificate, pid uint32, key []byte) error {
	conn, err := dialFrom(addr, source)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.Write(binary.BigEndian.AppendUint32([]byte{0, 0, 0, 8}, 80877103)); err != nil {
		return err
	}
	var s [1]byte
	if _, err := io.ReadFull(conn, s[:]); err != nil || s[0] != 'S' {
		return fmt.Errorf("SSLRequest answered %q: %v", s[:], err)
	}
	tc := tls.Client(conn, &tls.Config{RootCAs: roots, ServerName: "localhost", Certificates: certs})
	if err := tc.Handshake(); err != nil {
		return err
	}
	if _, err := tc.Write(cancelPacket(pid, key)); err != nil {
		return err
	}
	return awaitClose(tc)
}

func dialFrom(addr, source string) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	if source != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(source)}
	}
	conn, err := d.Dial("tcp", addr)
	if errors.Is(err, syscall.ECONNRESET) {
		return nil, errResetAtAccept
	}
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	return conn, nil
}

// awaitClose reads until the gateway closes: EOF when it handled the
// request, a reset when it refused the connection at accept.
func awaitClose(conn net.Conn) error {
	n, err := io.Copy(io.Discard, conn)
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		return errResetAtAccept
	case err != nil:
		return err
	case n > 0:
		return fmt.Errorf("a cancel request got %d bytes back", n)
	}
	return nil
}

func randomKey(t *testing.T) (uint32, []byte) {
	t.Helper()
	b := make([]byte, 8)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return binary.BigEndian.Uint32(b), b[4:]
}

// sleepingQuery starts SELECT pg_sleep(60) on conn and waits until postgres
// runs it; the returned channel yields the query's error.
func sleepingQuery(t *testing.T, pg *pgtest.Postgres, conn *pgconn.PgConn) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		_, err := conn.Exec(ctx, "SELECT pg_sleep(60)").ReadAll()
		done <- err
	}()
	require.Eventually(t, func() bool { return activeSleeps(t, pg) == 1 }, 20*time.Second, 20*time.Millisecond, "pg_sleep never ran")
	return done
}

func activeSleeps(t *testing.T, pg *pgtest.Postgres) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := pg.QueryValue(ctx, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'")
	require.NoError(t, err)
	n, err := strconv.Atoi(v)
	require.NoError(t, err)
	return n
}

// requireCancelled waits for the query to end with query_canceled.
func requireCancelled(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		require.Error(t, err)
		require.Equal(t, "57014", pgtest.Code(err), "%v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the query was not cancelled")
	}
}

// metricValue reads one sample from the admin endpoint's /metrics.
func metricValue(t *testing.T, admin, sample string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sample) + ` (\S+)$`).FindStringSubmatch(metricsText(t, admin))
	if m == nil {
		return 0
	}
	v, err := strconv.ParseFloat(m[1], 64)
	require.NoError(t, err)
	return v
}

// One source floods the gateway with cancel requests for keys no session
// has: past its burst they are dropped unlooked-at (rate-limited), every
// 4 unknown keys count as one failed login, and at --ban-max-retry 3 the
// source is banned, 12 guesses in. Cancels from other sources, plaintext
// and over TLS, still reach their sessions.
func TestCancelFloodIsRateLimitedAndBanned(t *testing.T) {
	pg := pgtest.Start(t)
	certFile, keyFile, caFile := tlsFiles(t)
	port, admin := freePort(t), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	g := startBinary(t, "--listen", addr, "--upstream", pg.Addr(), "--allow", "127.0.0.0/8",
		"--tls-cert", certFile, "--tls-key", keyFile, "--admin", admin, "--drain-timeout", "1s",
		"--ban-max-retry", "3", "--ban-find-time", "10m", "--ban-time", "10m",
		// One token per ~17 minutes after a burst of 5: within the test,
		// only the burst passes.
		"--cancel-rate", "0.001", "--cancel-burst", "5", "--cancel-unknown-per-failure", "4")

	handled := 0
	var floodErr error
	for range 200 {
		pid, key := randomKey(t)
		if floodErr = plainCancel(addr, "127.0.0.2", pid, key); floodErr != nil {
			break
		}
		handled++
	}
	require.ErrorIs(t, floodErr, errResetAtAccept, "the flooding source was never banned")
	require.Equal(t, 12, handled, "banned after 3 failures of 4 unknown keys each")
	const connections = `pgwarden_connections_total{outcome="%s",route="default"}`
	// A connection is counted when its handler finishes, just after the
	// client saw the close: wait for the last one.
	for outcome, want := range map[string]float64{"cancel_unknown": 5, "cancel_rate_limited": 7} {
		sample := fmt.Sprintf(connections, outcome)
		require.Eventually(t, func() bool { return metricValue(t, admin, sample) >= want }, time.Minute, 20*time.Millisecond, "%s never reached %v", sample, want)
		require.Equal(t, want, metricValue(t, admin, sample), sample)
	}
	bans := (&banEnv{admin: admin}).bans(t)
	require.Len(t, bans, 1)
	require.Equal(t, "127.0.0.2", bans[0].IP)
	waitLog(t, g, 0, "failures counted for cancel guesses", func(l map[string]any) bool {
		return l["msg"] == "auth failure" && l["source"] == "127.0.0.2" && l["reason"] == "cancel_unknown_keys"
	})

	// A pgx session from another source: its TLS cancel and a psql-style
	// plaintext cancel from a third source both reach postgres.
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=verify-full sslrootcert=%s connect_timeout=10",
		port, pg.User, pg.Password, pg.Database, caFile))
	require.NoError(t, err)
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}}
	cfg.DialFunc = d.DialContext
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	require.NoError(t, err)
	defer conn.Close(ctx)

	done := sleepingQuery(t, pg, conn)
	require.NoError(t, conn.CancelRequest(ctx))
	requireCancelled(t, done)

	done = sleepingQuery(t, pg, conn)
	require.NoError(t, plainCancel(addr, "127.0.0.4", conn.PID(), conn.SecretKey()))
	requireCancelled(t, done)
}

// On a route that requires client certificates, a cancel must come over
// TLS with a certificate the client CA signed: a plaintext one (it carries
// no certificate) and a TLS one without a certificate are dropped before
// any key lookup, unless --cancel-plaintext allow says otherwise.
func TestCancelOnClientCertificateRoute(t *testing.T) {
	d := certsInit(t)
	out, code := runCertsCmd(t, "issue", "--dir", d.dir, "--client", "alice")
	require.Equal(t, 0, code, "certs issue: %s", out)
	withAlice := fmt.Sprintf("sslcert=%s sslkey=%s", filepath.Join(d.dir, "alice.crt"), filepath.Join(d.dir, "alice.key"))
	pg := pgtest.Start(t)
	g, addr := d.serve(t, pg, "--tls-client-ca", d.caCert)

	conn := mustPgx(t, addr, d.caCert, pg.User, pg.Password, pg.Database, withAlice)
	done := sleepingQuery(t, pg, conn)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	require.NoError(t, pg.LogBarrier(ctx))
	before := pg.TCPConnectionsReceived()
	require.NoError(t, plainCancel(addr, "", conn.PID(), conn.SecretKey()))
	require.NoError(t, tlsCancel(addr, "", d.roots, nil, conn.PID(), conn.SecretKey()))
	require.NoError(t, pg.LogBarrier(ctx))
	require.Equal(t, before, pg.TCPConnectionsReceived(), "a cancel without a client certificate reached postgres")
	require.Equal(t, 1, activeSleeps(t, pg), "the query was cancelled")
	for _, outcome := range []string{"cancel_plaintext_refused", "cancel_cert_rejected"} {
		waitLog(t, g, 0, outcome, func(l map[string]any) bool {
			return l["msg"] == "connection closed" && l["outcome"] == outcome
		})
	}

	// pgx cancels over TLS with the session's certificate: forwarded.
	require.NoError(t, conn.CancelRequest(ctx))
	requireCancelled(t, done)

	// --cancel-plaintext allow: psql before 17 can cancel on this route.
	_, allowing := d.serve(t, pg, "--tls-client-ca", d.caCert, "--cancel-plaintext", "allow")
	conn = mustPgx(t, allowing, d.caCert, pg.User, pg.Password, pg.Database, withAlice)
	done = sleepingQuery(t, pg, conn)
	require.NoError(t, plainCancel(allowing, "", conn.PID(), conn.SecretKey()))
	requireCancelled(t, done)
}
