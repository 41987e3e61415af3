package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/pgtest"
	"github.com/pgwarden/pgwarden/internal/redistest"
)

// fleetWait is the generous deadline for "the other gateway knows": the
// tests assert outcomes, not latencies (the latency is logged).
const fleetWait = 20 * time.Second

// resetAtAccept reports whether e resets a connection from source before
// reading it (banned or not allowed), as opposed to answering its
// SSLRequest.
func (e *banEnv) resetAtAccept(t *testing.T, source string) bool {
	t.Helper()
	conn, err := dialFrom(fmt.Sprintf("127.0.0.1:%d", e.port), source)
	if errors.Is(err, errResetAtAccept) {
		return true
	}
	require.NoError(t, err)
	defer conn.Close()
	if _, err := conn.Write(binary.BigEndian.AppendUint32([]byte{0, 0, 0, 8}, 80877103)); err != nil {
		return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
	}
	var b [1]byte
	_, err = io.ReadFull(conn, b[:])
	if errors.Is(err, syscall.ECONNRESET) {
		return true
	}
	require.NoError(t, err)
	require.Equal(t, byte('S'), b[0])
	return false
}

// requireResetWithin waits until e resets source at accept (want true) or
// answers it (want false), and returns how long that took.
func (e *banEnv) requireResetEventually(t *testing.T, source string, want bool, why string) time.Duration {
	t.Helper()
	start := time.Now()
	require.Eventually(t, func() bool { return e.resetAtAccept(t, source) == want }, fleetWait, 10*time.Millisecond, why)
	return time.Since(start)
}

func (e *banEnv) logsWith(msg string) int {
	n := 0
	for _, l := range e.gw.logLines() {
		if strings.HasPrefix(fmt.Sprint(l["msg"]), msg) {
			n++
		}
	}
	return n
}

// startFleet starts two gateways sharing srv, with the jail at its
// defaults but for long bans (nothing lifts during the test).
func startFleet(t *testing.T, pg *pgtest.Postgres, srv *redistest.Server) (a, b *banEnv) {
	t.Helper()
	prefix := fmt.Sprintf("e2e-%d", time.Now().UnixNano())
	flags := []string{"--redis", srv.URL(), "--redis-prefix", prefix,
		"--ban-max-retry", "5", "--ban-time", "10m", "--ban-find-time", "10m", "--ban-time-factor", "2"}
	return startBanEnv(t, pg, flags...), startBanEnv(t, pg, flags...)
}

// TestFleetSharesTheJail runs two gateways on one Redis: failures add up
// across them, a ban or unban on one is enforced by the other, and while
// Redis is down each keeps enforcing and making its own bans, stays ready,
// and says Redis is down once; when Redis comes back (empty), both push
// what they did meanwhile and converge.
func TestFleetSharesTheJail(t *testing.T) {
	srv := redistest.Start(t)
	pg := pgtest.Start(t)
	a, b := startFleet(t, pg, srv)
	const spread, manual, outageA, outageB = "127.0.0.5", "127.0.0.6", "127.0.0.7", "127.0.0.8"
	for _, e := range []*banEnv{a, b} {
		require.Eventually(t, func() bool { return mustMetric(t, e.admin, "pgwarden_redis_up") == 1 },
			fleetWait, 20*time.Millisecond, "redis_up never read 1")
	}

	// 3 failures on A and 2 on B: the 5th, on B, bans the source on both.
	a.failLogins(t, spread, 3)
	b.failLogins(t, spread, 2)
	b.requireRefusedAtAccept(t, spread)
	took := a.requireResetEventually(t, spread, true, "A never enforced B's ban")
	t.Logf("B's automatic ban enforced by A after %s", took)
	a.requireRefusedAtAccept(t, spread)
	require.Len(t, a.bans(t), 1)
	require.Equal(t, spread, a.bans(t)[0].IP)
	require.Equal(t, 5, b.bans(t)[0].Failures)

	// A manual ban on A is refused at accept by B; an unban on B lifts it
	// on A.
	a.cli(t, "ban", manual, "--for", "1h")
	took = b.requireResetEventually(t, manual, true, "B never enforced A's manual ban")
	t.Logf("A's manual ban enforced by B after %s", took)
	b.cli(t, "unban", manual)
	took = a.requireResetEventually(t, manual, false, "B's unban never reached A")
	t.Logf("B's unban applied by A after %s", took)
	require.NoError(t, a.connectFrom(manual, pg.Password))

	// Redis goes away.
	srv.Kill()
	for _, e := range []*banEnv{a, b} {
		require.Eventually(t, func() bool { return mustMetric(t, e.admin, "pgwarden_redis_up") == 0 },
			fleetWait, 20*time.Millisecond, "redis_up never read 0")
		e.get(t, "/readyz", http.StatusOK)
	}
	// /readyz connects to postgres: let it log those connections before
	// counting the refused ones.
	require.NoError(t, barrier(pg))
	// Local bans hold; new ones still work, locally.
	a.requireRefusedAtAccept(t, spread)
	b.requireRefusedAtAccept(t, spread)
	a.failLogins(t, outageA, 5)
	a.requireRefusedAtAccept(t, outageA)
	require.NoError(t, b.connectFrom(outageA, pg.Password), "B cannot know A's ban yet")
	b.cli(t, "ban", outageB, "--for", "1h")
	b.requireRefusedAtAccept(t, outageB)
	// An unban during the outage: A lifts the ban both hold; B learns of
	// it when Redis is back.
	a.cli(t, "unban", spread)
	require.NoError(t, a.connectFrom(spread, pg.Password))
	for _, e := range []*banEnv{a, b} {
		e.get(t, "/readyz", http.StatusOK)
		require.Equal(t, 1, e.logsWith("redis unavailable"), "one warning per outage")
	}
	require.NoError(t, barrier(pg))

	// Redis is back, empty: the instances converge, both ways.
	srv.Restart(t)
	took = b.requireResetEventually(t, outageA, true, "A's outage ban never reached B")
	t.Logf("A's outage ban reached B %s after the restart", took)
	a.requireResetEventually(t, outageB, true, "B's outage ban never reached A")
	b.requireResetEventually(t, spread, false, "A's unban during the outage never reached B")
	for _, e := range []*banEnv{a, b} {
		require.NoError(t, e.connectFrom(spread, pg.Password))
		require.Eventually(t, func() bool { return mustMetric(t, e.admin, "pgwarden_redis_up") == 1 },
			fleetWait, 20*time.Millisecond)
		require.Equal(t, 1, e.logsWith("redis unavailable"), "still one warning for that outage")
		got := map[string]bool{}
		for _, x := range e.bans(t) {
			got[x.IP] = true
		}
		require.Equal(t, map[string]bool{outageA: true, outageB: true}, got)
	}
	// And the fleet works as before.
	b.cli(t, "unban", outageA)
	a.requireResetEventually(t, outageA, false, "B's unban never reached A after the outage")
}

// admits reports whether e admits source now (a login works), as
// opposed to resetting it at accept.
func (e *grantEnv) admits(t *testing.T, source string) bool {
	t.Helper()
	conn, err := e.connect(source, e.pg.User, e.pg.Password, e.pg.Database)
	if err != nil {
		require.True(t, isReset(err), "%s: want a session or a reset, got %v", source, err)
		return false
	}
	_ = closeConn(conn)
	return true
}

// grantUntil is the until of the grant e lists for source ("" if none).
func (e *grantEnv) grantUntil(t *testing.T, source string) string {
	t.Helper()
	code, stdout, stderr := e.cli(t, "list", "--json")
	require.Equal(t, 0, code, stderr)
	var list []map[string]any
	require.NoError(t, json.Unmarshal([]byte(stdout), &list))
	for _, g := range list {
		if g["source"] == source {
			return fmt.Sprint(g["until"])
		}
	}
	return ""
}

// TestFleetSharesGrants: a grant made on A admits its source on B; an
// extension on B (which extends A's grant, same id) reaches A; a revoke on
// B refuses the source on A and ends the session A admitted with it.
func TestFleetSharesGrants(t *testing.T) {
	srv := redistest.Start(t)
	pg := pgtest.Start(t)
	flags := []string{"--redis", srv.URL(), "--redis-prefix", fmt.Sprintf("grants-%d", time.Now().UnixNano())}
	a := startGrantEnv(t, pg, grantEnvOptions{args: flags})
	b := startGrantEnv(t, pg, grantEnvOptions{args: flags})
	const source = "127.0.0.2"
	for _, e := range []*grantEnv{a, b} {
		require.Eventually(t, func() bool { return mustMetric(t, e.admin, "pgwarden_redis_up") == 1 },
			fleetWait, 20*time.Millisecond)
		e.requireRefusedAtAccept(t, source)
	}

	code, stdout, stderr := a.cli(t, "add", source, "--ttl", "1h", "--reason", "fleet test")
	require.Equal(t, 0, code, stderr)
	id := decodeGrant(t, stdout)["id"].(string)
	start := time.Now()
	require.Eventually(t, func() bool { return b.admits(t, source) }, fleetWait, 10*time.Millisecond, "B never admitted A's grant")
	t.Logf("A's grant admitted by B after %s", time.Since(start))
	code, stdout, _ = b.cli(t, "list", "--json")
	require.Equal(t, 0, code)
	require.Contains(t, stdout, id, "B holds A's grant under its id")

	// Extended on B: the same grant, ending later, everywhere.
	before := a.grantUntil(t, source)
	code, stdout, stderr = b.cli(t, "add", source, "--ttl", "3h", "--reason", "longer")
	require.Equal(t, 0, code, stderr)
	ext := decodeGrant(t, stdout)
	require.Equal(t, id, ext["id"], "B extended A's grant")
	require.Eventually(t, func() bool { return a.grantUntil(t, source) == ext["until"] }, fleetWait, 10*time.Millisecond,
		"A never saw B's extension (was %s)", before)

	// A session on A, admitted by the grant; revoked on B.
	sess := a.session(t, source)
	code, _, stderr = b.cli(t, "revoke", id)
	require.Equal(t, 0, code, stderr)
	start = time.Now()
	require.Eventually(t, func() bool { return !a.admits(t, source) }, fleetWait, 10*time.Millisecond, "A still admits after B's revoke")
	t.Logf("B's revoke applied by A after %s", time.Since(start))
	a.requireRefusedAtAccept(t, source)
	require.Eventually(t, func() bool { return query(sess, "SELECT 1") != nil }, fleetWait, 20*time.Millisecond,
		"the session A admitted with the revoked grant still runs")
	require.Equal(t, "", a.grantUntil(t, source))

	// Counted where they were made: one grant, on A.
	require.Contains(t, a.metrics(t), `pgwarden_grants_total{via="admin"} 1`+"\n")
	require.Contains(t, b.metrics(t), `pgwarden_grants_total{via="admin"} 0`+"\n")
}
