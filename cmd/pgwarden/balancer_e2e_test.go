package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/pgtest"
	"github.com/pgwarden/pgwarden/internal/proxyproto/pptest"
)

// The trusted balancer and the clients it names. Every address is on
// loopback (127/8); only the balancer is in --proxy-protocol-from, and
// only the allowed clients are in --allow.
const (
	balancerIP   = "127.0.0.2"
	allowedIP    = "127.0.0.50"
	attackerIP   = "127.0.0.51"
	deniedIP     = "127.0.0.60"
	directIP     = "127.0.0.1"
	lbMaxRetries = 5
)

// lbEnv is a pgwarden behind a (simulated) load balancer.
type lbEnv struct {
	pg     *pgtest.Postgres
	gw     *process
	addr   string
	admin  string
	caFile string
}

func startLBEnv(t *testing.T, pg *pgtest.Postgres, extra ...string) *lbEnv {
	t.Helper()
	certFile, keyFile, caFile := tlsFiles(t)
	e := &lbEnv{pg: pg, caFile: caFile, addr: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		admin: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	args := append([]string{"--listen", e.addr, "--upstream", pg.Addr(),
		"--allow", allowedIP, "--allow", attackerIP, "--allow", directIP,
		"--proxy-protocol-from", balancerIP + "/32",
		"--tls-cert", certFile, "--tls-key", keyFile, "--admin", e.admin, "--drain-timeout", "1s",
		"--ban-max-retry", fmt.Sprint(lbMaxRetries), "--ban-find-time", "10m", "--ban-time", "10m"}, extra...)
	e.gw = startBinary(t, args...)
	return e
}

// proxyHeader is a PROXY header (version 1 or 2) naming client
// (ip:port) as the source of a connection to the gateway.
func proxyHeader(t testing.TB, version byte, client, gateway string) []byte {
	t.Helper()
	return pptest.Header(t, version, client, gateway)
}

// localHeader is a v2 LOCAL header: a balancer's own health check.
func localHeader(t testing.TB) []byte { return pptest.Local(t) }

// dialWith connects from source and writes prefix (a header) first.
func dialWith(ctx context.Context, addr, source string, prefix []byte) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if len(prefix) > 0 {
		if _, err := conn.Write(prefix); err != nil {
			conn.Close()
			return nil, err
		}
	}
	return conn, nil
}

// config is a pgconn config for a client that reaches the gateway through
// the balancer, which names client with a header of this version (0: the
// client connects directly from client's address).
func (e *lbEnv) config(t testing.TB, client string, version byte, password string) *pgconn.Config {
	t.Helper()
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=verify-full sslrootcert=%s connect_timeout=10",
		mustPort(t, e.addr), e.pg.User, password, e.pg.Database, e.caFile))
	require.NoError(t, err)
	host, _, err := net.SplitHostPort(client)
	require.NoError(t, err)
	cfg.DialFunc = func(ctx context.Context, _, addr string) (net.Conn, error) {
		if version == 0 {
			return dialWith(ctx, addr, host, nil)
		}
		return dialWith(ctx, addr, balancerIP, proxyHeader(t, version, client, addr))
	}
	return cfg
}

// login connects as client through the balancer (or directly, version 0).
func (e *lbEnv) login(t testing.TB, client string, version byte, password string) (*pgconn.PgConn, error) {
	return pgConnect(e.config(t, client, version, password))
}

func pgConnect(cfg *pgconn.Config) (*pgconn.PgConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return pgconn.ConnectConfig(ctx, cfg)
}

func closeConn(c *pgconn.PgConn) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.Close(ctx)
}

// barrier waits until postgres has logged every earlier connection.
func barrier(pg *pgtest.Postgres) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return pg.LogBarrier(ctx)
}

func mustPort(t testing.TB, addr string) int {
	t.Helper()
	ap, err := netip.ParseAddrPort(addr)
	require.NoError(t, err)
	return int(ap.Port())
}

// requireSelect1 logs in, runs SELECT 1 and closes.
func (e *lbEnv) requireLogin(t *testing.T, client string, version byte) {
	t.Helper()
	conn, err := e.login(t, client, version, e.pg.Password)
	require.NoError(t, err, "login as %s (PROXY v%d)", client, version)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := conn.Exec(ctx, "SELECT 1").ReadAll()
	require.NoError(t, err)
	require.Equal(t, "1", string(res[0].Rows[0][0]))
	require.NoError(t, conn.Close(ctx))
}

// exchange dials from source, sends data, hands the connection (or the
// error that ended it early) to check, and then requires that postgres
// heard nothing of it.
func (e *lbEnv) exchange(t *testing.T, source string, data []byte, check func(conn net.Conn, err error)) {
	t.Helper()
	before := e.pg.TCPConnectionsReceived()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := dialWith(ctx, e.addr, source, data)
	if err == nil {
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	}
	check(conn, err)
	require.NoError(t, e.pg.LogBarrier(ctx))
	require.Equal(t, before, e.pg.TCPConnectionsReceived(), "postgres heard of it")
}

// requireResetUnread sends prefix from source and requires an RST and not
// a single byte back, and that postgres heard nothing.
func (e *lbEnv) requireResetUnread(t *testing.T, source string, prefix []byte) {
	t.Helper()
	e.exchange(t, source, prefix, func(conn net.Conn, err error) {
		if err == nil {
			// After the header, what a client would send next: it must
			// not matter, the refusal comes first. A reset that arrives
			// before this write is reported by the write (the read then
			// sees only the end of the stream).
			_, err = conn.Write(binary.BigEndian.AppendUint32([]byte{0, 0, 0, 8}, 80877103))
		}
		if err == nil {
			var n int64
			n, err = io.Copy(io.Discard, conn)
			require.Zero(t, n, "a refused client got bytes")
		}
		require.True(t, errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE), "want a reset, got %v", err)
	})
}

// requireClosedUnread sends data from source and requires the gateway to
// close (EOF or reset) without a byte back, postgres untouched.
func (e *lbEnv) requireClosedUnread(t *testing.T, source string, data []byte) {
	t.Helper()
	e.exchange(t, source, data, func(conn net.Conn, err error) {
		require.NoError(t, err)
		n, err := io.Copy(io.Discard, conn)
		require.Zero(t, n, "got bytes back")
		if err != nil {
			require.ErrorIs(t, err, syscall.ECONNRESET)
		}
	})
}

// requireRefusedAsStartup sends data (a PROXY header) from source, which is
// not a trusted balancer, and requires it to be refused as the startup
// packet it is not: the gateway closes, with at most a FATAL 08P01, and
// postgres hears nothing.
func (e *lbEnv) requireRefusedAsStartup(t *testing.T, source string, data []byte) {
	t.Helper()
	e.exchange(t, source, data, func(conn net.Conn, err error) {
		require.NoError(t, err)
		got, err := io.ReadAll(conn)
		if err != nil {
			require.ErrorIs(t, err, syscall.ECONNRESET)
		}
		if len(got) > 0 {
			require.Equal(t, byte('E'), got[0], "answer %q", got)
			require.Contains(t, string(got), "08P01")
		}
	})
}

// closedLine finds the "connection closed" line whose source starts with
// source, waiting for it.
func (e *lbEnv) closedLine(t *testing.T, source, outcome string) map[string]any {
	t.Helper()
	var found map[string]any
	require.Eventually(t, func() bool {
		for _, l := range e.gw.logLines() {
			if l["msg"] == "connection closed" && l["outcome"] == outcome && strings.HasPrefix(fmt.Sprint(l["source"]), source) {
				found = l
				return true
			}
		}
		return false
	}, 20*time.Second, 20*time.Millisecond, "no %q line for %s", outcome, source)
	return found
}

// metric reads one sample, which must be exposed (metricValue reads an
// absent one as 0, which would let a misspelt label pass).
func (e *lbEnv) metric(t *testing.T, sample string) float64 {
	t.Helper()
	return mustMetric(t, e.admin, sample)
}

// mustMetric is metricValue for a sample that must be exposed.
func mustMetric(t *testing.T, admin, sample string) float64 {
	t.Helper()
	require.Contains(t, metricsText(t, admin), "\n"+sample+" ", "sample not exposed")
	return metricValue(t, admin, sample)
}

// getBans reads the admin endpoint's GET /bans.
func getBans(t *testing.T, admin string) []banEntry {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/bans")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var out []banEntry
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	return out
}

// TestProxyProtocolBehindBalancer drives a gateway behind a trusted
// balancer: clients named in v1 and v2 headers are judged and logged by
// their own address, a refused one gets a reset and postgres never hears
// of it, a balancer that sends no header is closed, a header from anyone
// else is garbage, and health checks never reach postgres.
func TestProxyProtocolBehindBalancer(t *testing.T) {
	pg := pgtest.Start(t)
	e := startLBEnv(t, pg)

	// v2, an allowed client: the session works and its line names both.
	e.requireLogin(t, allowedIP+":40001", 2)
	line := e.closedLine(t, allowedIP+":40001", "ok")
	require.True(t, strings.HasPrefix(fmt.Sprint(line["balancer"]), balancerIP+":"), "balancer field: %v", line)

	// v1 works the same.
	e.requireLogin(t, allowedIP+":40002", 1)
	line = e.closedLine(t, allowedIP+":40002", "ok")
	require.True(t, strings.HasPrefix(fmt.Sprint(line["balancer"]), balancerIP+":"), "balancer field: %v", line)

	// A client outside the allowlist: reset, zero bytes, postgres untouched,
	// counted like a refusal at accept.
	e.requireResetUnread(t, balancerIP, proxyHeader(t, 2, deniedIP+":40003", e.addr))
	e.requireResetUnread(t, balancerIP, proxyHeader(t, 1, deniedIP+":40004", e.addr))
	require.Equal(t, 2.0, e.metric(t, `pgwarden_rejections_total{reason="not_allowed",route="default"}`))

	// The balancer without a header (a client that bypassed it, say) is
	// closed unread.
	e.requireClosedUnread(t, balancerIP, binary.BigEndian.AppendUint32([]byte{0, 0, 0, 8}, 80877103))
	require.Equal(t, 1.0, e.metric(t, `pgwarden_proxy_header_errors_total{reason="no_header"}`))
	require.Equal(t, 1.0, e.metric(t, `pgwarden_connections_total{outcome="bad_proxy_header",route="default"}`))

	// A health check (v2 LOCAL) is closed without reaching postgres.
	e.requireClosedUnread(t, balancerIP, localHeader(t))
	require.Equal(t, 1.0, e.metric(t, `pgwarden_connections_total{outcome="health_check",route="default"}`))

	// A header from a peer that is not a trusted balancer is what it is to
	// postgres's protocol: garbage. Even naming an allowed client, it gets
	// no session, and it cannot pose as anyone: the allowed client it sent
	// from is judged by its own address, the denied one is reset.
	e.requireRefusedAsStartup(t, directIP, proxyHeader(t, 2, allowedIP+":40005", e.addr))
	e.requireRefusedAsStartup(t, directIP, proxyHeader(t, 1, allowedIP+":40005", e.addr))
	e.requireResetUnread(t, deniedIP, proxyHeader(t, 2, allowedIP+":40006", e.addr))
	// A direct allowed client still works.
	e.requireLogin(t, directIP+":0", 0)

	// Nothing reached postgres but the sessions.
	require.Equal(t, 0.0, e.metric(t, `pgwarden_rejections_total{reason="banned",route="default"}`))
}

// TestProxyProtocolSlowBalancerBlocksNobody: a balancer connection that
// never finishes its header holds only its own goroutine; other clients,
// through the balancer and directly, log in meanwhile, and the stalled one
// is closed at --proxy-protocol-timeout.
func TestProxyProtocolSlowBalancerBlocksNobody(t *testing.T) {
	pg := pgtest.Start(t)
	e := startLBEnv(t, pg, "--proxy-protocol-timeout", "3s")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	header := proxyHeader(t, 2, allowedIP+":40010", e.addr)
	var stalled []net.Conn
	for i := range 5 {
		// Half a header, or nothing at all.
		c, err := dialWith(ctx, e.addr, balancerIP, header[:i*3])
		require.NoError(t, err)
		defer c.Close()
		stalled = append(stalled, c)
	}
	e.requireLogin(t, allowedIP+":40011", 2)
	e.requireLogin(t, directIP+":0", 0)
	for _, c := range stalled {
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		n, err := io.Copy(io.Discard, c)
		require.Zero(t, n)
		require.NoError(t, err, "the stalled connection was not closed in time")
	}
	require.Equal(t, 5.0, e.metric(t, `pgwarden_proxy_header_errors_total{reason="timeout"}`))
}

// TestProxyProtocolBansTheClient: wrong passwords through the balancer
// ban the client the header names, never the balancer; the ban holds for
// that client through the balancer, and others keep working. Cancel
// requests are routed by the header's client too.
func TestProxyProtocolBansTheClient(t *testing.T) {
	pg := pgtest.Start(t)
	e := startLBEnv(t, pg)
	for i := range lbMaxRetries {
		_, err := e.login(t, fmt.Sprintf("%s:%d", attackerIP, 41000+i), 2, "wrong-password")
		require.Error(t, err)
		require.Equal(t, "28P01", pgtest.Code(err), "attempt %d: %v", i+1, err)
	}
	bans := getBans(t, e.admin)
	require.Len(t, bans, 1)
	require.Equal(t, attackerIP, bans[0].IP)
	e.requireResetUnread(t, balancerIP, proxyHeader(t, 2, attackerIP+":41010", e.addr))
	require.Equal(t, 1.0, e.metric(t, `pgwarden_rejections_total{reason="banned",route="default"}`))
	e.requireLogin(t, allowedIP+":41011", 2)

	// A session through the balancer is cancelled by a cancel request that
	// comes through it too (pgconn dials it with the same DialFunc).
	conn, err := e.login(t, allowedIP+":41012", 2, pg.Password)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	done := sleepingQuery(t, pg, conn)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	require.NoError(t, conn.CancelRequest(ctx))
	requireCancelled(t, done)
	require.Equal(t, 1.0, e.metric(t, `pgwarden_cancel_requests_total{result="forwarded"}`))
	e.closedLine(t, allowedIP+":", "cancel_forwarded")
}

// TestProxyProtocolGrantsTheClient: an access grant admits the client a
// balancer names, not the balancer; its revocation refuses that client
// again at the gate.
func TestProxyProtocolGrantsTheClient(t *testing.T) {
	pg := pgtest.Start(t)
	e := startLBEnv(t, pg)
	const granted = "127.0.0.70"
	e.requireResetUnread(t, balancerIP, proxyHeader(t, 2, granted+":42000", e.addr))
	code, _, stderr := runGrantsBinary(t, nil, "add", granted, "--ttl", "1h", "--reason", "behind the balancer", "--admin", e.admin)
	require.Equal(t, 0, code, stderr)
	e.requireLogin(t, granted+":42001", 2)
	code, _, stderr = runGrantsBinary(t, nil, "revoke", granted, "--admin", e.admin)
	require.Equal(t, 0, code, stderr)
	e.requireResetUnread(t, balancerIP, proxyHeader(t, 2, granted+":42002", e.addr))
}
