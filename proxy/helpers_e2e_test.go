package proxy_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/certs"
	"github.com/pgwarden/pgwarden/internal/certstest"
	"github.com/pgwarden/pgwarden/internal/pgtest"
	"github.com/pgwarden/pgwarden/proxy"
)

// pg is the throwaway postgres all end-to-end tests in this package share.
var pg *pgtest.Postgres

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	p, err := pgtest.StartE(ctx)
	cancel()
	if err != nil {
		if os.Getenv("CI") != "" {
			fmt.Fprintln(os.Stderr, "starting postgres for the end-to-end tests:", err)
			os.Exit(1)
		}
		fmt.Fprintln(os.Stderr, "no postgres, end-to-end tests will skip:", err)
	}
	pg = p
	code := m.Run()
	if pg != nil {
		_ = pg.Stop()
	}
	os.Exit(code)
}

func needPostgres(t testing.TB) {
	t.Helper()
	if pg == nil {
		t.Skip("no PostgreSQL server binaries on this machine")
	}
}

// recordingObserver keeps every AuthOutcome.
type recordingObserver struct {
	mu       sync.Mutex
	outcomes []proxy.AuthOutcome
}

func (o *recordingObserver) ObserveAuth(a proxy.AuthOutcome) {
	o.mu.Lock()
	o.outcomes = append(o.outcomes, a)
	o.mu.Unlock()
}

func (o *recordingObserver) all() []proxy.AuthOutcome {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]proxy.AuthOutcome(nil), o.outcomes...)
}

// waitFor polls cond for up to 10 s: for effects that land asynchronously
// (a handler finishing after the client saw EOF). It is not a timing
// assertion; the bound only keeps a broken build from hanging.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// gateway is a pgwarden route running in-process in front of pg.
type gateway struct {
	addr     string
	host     string
	port     int
	server   *proxy.Server
	listener *acl.Listener
	observer *recordingObserver
	caFile   string
	caPool   *x509.CertPool
}

type gatewayOption func(*proxy.Config, *acl.ListenerConfig)

// withUpstream puts the gateway in front of addr instead of postgres.
func withUpstream(addr string) gatewayOption {
	return func(c *proxy.Config, _ *acl.ListenerConfig) {
		c.Upstream = proxy.Upstream{Network: "tcp", Address: addr}
	}
}

// startGateway runs a gateway on 127.0.0.1:0 that admits 127.0.0.1 only.
func startGateway(t testing.TB, opts ...gatewayOption) *gateway {
	t.Helper()
	return startGatewayOn(t, "127.0.0.1:0", opts...)
}

// startGatewayOn is startGateway listening on addr.
func startGatewayOn(t testing.TB, addr string, opts ...gatewayOption) *gateway {
	t.Helper()
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	certPEM, keyPEM := ca.Server(t, "localhost", "127.0.0.1", "::1")
	certFile, keyFile := filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	caFile := filepath.Join(dir, "ca.crt")
	require.NoError(t, os.WriteFile(certFile, certPEM, 0o600))
	require.NoError(t, os.WriteFile(keyFile, keyPEM, 0o600))
	require.NoError(t, os.WriteFile(caFile, ca.CertPEM(), 0o600))

	loader, err := certs.NewLoader(certFile, keyFile, zap.NewNop())
	require.NoError(t, err)
	tlsConfig, err := certs.ServerConfig(loader, certs.Policy{MinVersion: tls.VersionTLS12})
	require.NoError(t, err)
	allow, err := acl.ParseAllowlist([]string{"127.0.0.1/32"})
	require.NoError(t, err)

	obs := &recordingObserver{}
	cfg := proxy.Config{
		Name:     "test",
		TLS:      tlsConfig,
		Observer: obs,
		Logger:   zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
	}
	lcfg := acl.ListenerConfig{Allowlist: allow, Logger: zap.NewNop()}
	for _, o := range opts {
		o(&cfg, &lcfg)
	}
	if cfg.Upstream.Address == "" {
		// In front of the throwaway postgres, unless an option chose
		// another upstream (a scripted one).
		needPostgres(t)
		cfg.Upstream = proxy.Upstream{Network: "tcp", Address: pg.Addr()}
	}
	srv, err := proxy.New(cfg)
	require.NoError(t, err)
	inner, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	ln, err := acl.NewListener(inner, lcfg)
	require.NoError(t, err)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return &gateway{
		addr:     ln.Addr().String(),
		host:     ln.Addr().(*net.TCPAddr).IP.String(),
		port:     ln.Addr().(*net.TCPAddr).Port,
		server:   srv,
		listener: ln,
		observer: obs,
		caFile:   caFile,
		caPool:   ca.CertPool(),
	}
}

// connString is a libpq keyword/value string through the gateway as alice.
func (g *gateway) connString(extra string) string {
	host := g.host
	if host == "::" || host == "0.0.0.0" {
		host = "127.0.0.1"
	}
	return fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=%s sslmode=verify-full sslrootcert=%s connect_timeout=10 %s",
		host, g.port, pg.User, pg.Password, pg.Database, g.caFile, extra)
}

func (g *gateway) connect(t *testing.T, extra string) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, g.connString(extra))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func queryOne(t *testing.T, conn *pgconn.PgConn, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	res, err := conn.Exec(ctx, sql).ReadAll()
	require.NoError(t, err)
	require.Len(t, res, 1)
	require.Len(t, res[0].Rows, 1)
	return string(res[0].Rows[0][0])
}

// dialRaw opens a TCP connection to the gateway with a deadline, optionally
// from another loopback source address.
func (g *gateway) dialRaw(t *testing.T, source string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if source != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(source)}
	}
	conn, err := d.Dial("tcp", g.addr)
	require.NoError(t, err)
	require.NoError(t, conn.SetDeadline(time.Now().Add(15*time.Second)))
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// tlsClient is a TLS client config trusting the test CA.
func (g *gateway) tlsClient(alpn ...string) *tls.Config {
	return &tls.Config{RootCAs: g.caPool, ServerName: "localhost", NextProtos: alpn}
}

// sslRequest performs SSLRequest → 'S' → TLS on a raw connection.
func (g *gateway) sslRequest(t *testing.T, conn net.Conn) *tls.Conn {
	t.Helper()
	_, err := conn.Write(packet(80877103, nil))
	require.NoError(t, err)
	var b [1]byte
	_, err = io.ReadFull(conn, b[:])
	require.NoError(t, err)
	require.Equal(t, byte('S'), b[0])
	tconn := tls.Client(conn, g.tlsClient())
	require.NoError(t, tconn.Handshake())
	return tconn
}

// packet builds a startup-phase packet: length, code, body.
func packet(code uint32, body []byte) []byte {
	buf := make([]byte, 8, 8+len(body))
	binary.BigEndian.PutUint32(buf, uint32(8+len(body)))
	binary.BigEndian.PutUint32(buf[4:], code)
	return append(buf, body...)
}

// startupPacket builds a StartupMessage for protocol version with params.
func startupPacket(version uint32, params ...string) []byte {
	var body []byte
	for _, p := range params {
		body = append(body, p...)
		body = append(body, 0)
	}
	body = append(body, 0)
	return packet(version, body)
}

// readErrorResponse reads one backend message and requires an ErrorResponse.
func readErrorResponse(t *testing.T, r io.Reader) *pgproto3.ErrorResponse {
	t.Helper()
	fe := pgproto3.NewFrontend(r, io.Discard)
	msg, err := fe.Receive()
	require.NoError(t, err)
	er, ok := msg.(*pgproto3.ErrorResponse)
	require.Truef(t, ok, "want ErrorResponse, got %T", msg)
	return er
}

// requireResetAtAccept dials the gateway from source and asserts the
// connection is reset without a byte. The RST can beat connect() home, and
// then the dial itself reports it.
func (g *gateway) requireResetAtAccept(t *testing.T, source string) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if source != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(source)}
	}
	addr := g.addr
	if g.host == "::" || g.host == "0.0.0.0" {
		addr = net.JoinHostPort("127.0.0.1", fmt.Sprint(g.port))
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		require.ErrorIs(t, err, syscall.ECONNRESET)
		return
	}
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(15*time.Second)))
	// Even a client that speaks first gets no byte back.
	_, _ = conn.Write(packet(80877103, nil))
	requireNoMoreBytes(t, conn)
}

// requireNoMoreBytes asserts the peer closes without sending anything more.
func requireNoMoreBytes(t *testing.T, conn net.Conn) {
	t.Helper()
	buf := make([]byte, 64)
	n, err := conn.Read(buf)
	require.Zero(t, n, "unexpected bytes: %q", buf[:n])
	require.Error(t, err)
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "connection still open: %v", err)
}

// requirePostgresSawNothing asserts that no TCP connection reached postgres
// since before was read. The barrier makes postgres log a marker and waits
// for it, so a connection accepted earlier has logged by then.
func requirePostgresSawNothing(t *testing.T, before int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, pg.LogBarrier(ctx))
	require.Equal(t, before, pg.TCPConnectionsReceived(), "postgres saw a connection the gateway should have refused")
}
