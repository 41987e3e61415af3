package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/pgtest"
)

// pgFailureLine is what postgres logs for each password it checked and
// rejected (log_connections is on in pgtest).
const pgFailureLine = "password authentication failed for user"

// waitingFrom counts the gateway's debug lines (from line mark on) about
// authentications from source waiting for a slot: the jail's per-source
// one, or the upstream cap's.
func waitingFrom(g *process, mark int, source string) int {
	n := 0
	for _, l := range logsSince(g, mark) {
		src := str(l["source"])
		if strings.HasPrefix(str(l["msg"]), "authentication waiting") &&
			(src == source || strings.HasPrefix(src, source+":")) {
			n++
		}
	}
	return n
}

// attack runs logins from one source, each on its own goroutine, and keeps
// their results.
type attack struct {
	t        *testing.T
	addr     string
	caFile   string
	source   string
	user, db string
	deadline time.Time

	fire    chan struct{} // closed: every login at the proof step sends it
	fireOne sync.Once
	settled atomic.Int32 // logins at the proof step, or already ended
	wg      sync.WaitGroup
	mu      sync.Mutex
	results map[int]error
}

func newAttack(t *testing.T, addr, caFile, source, user, db string) *attack {
	a := &attack{t: t, addr: addr, caFile: caFile, source: source, user: user, db: db,
		deadline: time.Now().Add(2 * time.Minute), fire: make(chan struct{}), results: map[int]error{}}
	t.Cleanup(a.release) // a failed test does not leave logins waiting
	return a
}

func (a *attack) release() { a.fireOne.Do(func() { close(a.fire) }) }

// login starts login i: through TLS, the StartupMessage and SCRAM's first
// round, then it waits for fire and sends the proof for password. With
// password "" it stays silent at the SCRAM prompt instead, holding its
// postgres backend, until the gateway ends the connection.
func (a *attack) login(i int, password string) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		err := a.run(password)
		a.mu.Lock()
		a.results[i] = err
		a.mu.Unlock()
	}()
}

func (a *attack) run(password string) error {
	c, err := dialTLS(a.addr, a.caFile, a.source, a.user, a.db, a.deadline)
	if err != nil {
		a.settled.Add(1)
		return err
	}
	defer c.conn.Close()
	if err := c.prompt(); err != nil {
		a.settled.Add(1)
		return err
	}
	if password == "" {
		a.settled.Add(1)
		_, err := c.receive()
		return err
	}
	if err := c.firstRound(); err != nil {
		a.settled.Add(1)
		return err
	}
	a.settled.Add(1)
	<-a.fire
	return c.prove(password)
}

// settle waits until n logins are at the proof step, ended, or waiting in
// the gateway for a slot (the gateway logs each wait at debug from line
// mark on).
func (a *attack) settle(g *process, mark, n int) {
	a.t.Helper()
	require.Eventually(a.t, func() bool { return int(a.settled.Load())+waitingFrom(g, mark, a.source) >= n },
		time.Minute, 20*time.Millisecond, "logins from %s never settled: %d", a.source, a.settled.Load())
}

// finish sends every proof at once and waits for all logins to end.
func (a *attack) finish() map[int]error {
	a.release()
	a.wg.Wait()
	return a.results
}

// startAuthLimitEnv runs pgwarden in front of pg with --ban-max-retry 3, a
// 10-minute window and ban, its admin endpoint, debug logs (the waits for
// authentication slots are logged there) and the extra flags. It returns
// the environment and the gateway's address.
func startAuthLimitEnv(t *testing.T, pg *pgtest.Postgres, extra ...string) (*banEnv, string) {
	certFile, keyFile, caFile := tlsFiles(t)
	e := &banEnv{pg: pg, port: freePort(t), caFile: caFile}
	e.admin = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	e.gw = startBinary(t, append([]string{"--listen", fmt.Sprintf("127.0.0.1:%d", e.port), "--upstream", pg.Addr(),
		"--allow", "127.0.0.0/8", "--tls-cert", certFile, "--tls-key", keyFile,
		"--ban-max-retry", "3", "--ban-find-time", "10m", "--ban-time", "10m",
		"--admin", e.admin, "--log-level", "debug", "--drain-timeout", "1s"}, extra...)...)
	return e, fmt.Sprintf("127.0.0.1:%d", e.port)
}

// TestParallelProofsCannotOutrunTheBan is the attack on a ban's timing: a
// source takes 30 connections to SCRAM's last step, then sends every proof
// at once, and a 31st connection with the right password waits its turn.
// postgres must check no more than --ban-max-retry of the guesses, the
// source must end banned, the right password must not get in after the
// ban, and postgres must never see the connections beyond max-retry.
func TestParallelProofsCannotOutrunTheBan(t *testing.T) {
	pg := pgtest.Start(t)
	e, addr := startAuthLimitEnv(t, pg)
	caFile := e.caFile
	const attacker, pool, operatorBanned, bystander = "127.0.0.2", "127.0.0.5", "127.0.0.6", "127.0.0.4"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	t.Run("a pool opening more logins than max-retry at once is served", func(t *testing.T) {
		errs := make(chan error, 10)
		for range 10 {
			go func() { errs <- e.connectFrom(pool, pg.Password) }()
		}
		for range 10 {
			require.NoError(t, <-errs)
		}
	})

	t.Run("parallel proofs", func(t *testing.T) {
		require.NoError(t, pg.LogBarrier(ctx))
		pgMark, tcpBefore, logMark := pg.LogSize(), pg.TCPConnectionsReceived(), len(e.gw.logLines())
		const n = 30
		a := newAttack(t, addr, caFile, attacker, pg.User, pg.Database)
		for i := range n {
			a.login(i, fmt.Sprintf("guess-%d", i))
		}
		a.settle(e.gw, logMark, n)
		a.login(n, pg.Password) // last in line
		a.settle(e.gw, logMark, n+1)
		results := a.finish()

		require.NoError(t, pg.LogBarrier(ctx))
		require.Equal(t, 3, strings.Count(pg.LogSince(pgMark), pgFailureLine),
			"postgres checked more guesses than --ban-max-retry")
		require.Error(t, results[n], "the right password got in after the ban")
		codes := map[string]int{}
		for i, err := range results {
			require.Error(t, err, "login %d", i)
			codes[sqlstate(err)]++
		}
		// Three guesses were checked; everything else was ended by the ban
		// with FATAL 28000, before postgres heard of it.
		require.Equal(t, map[string]int{"28P01": 3, "28000": n + 1 - 3}, codes)
		require.Equal(t, tcpBefore+3, pg.TCPConnectionsReceived(), "postgres saw connections beyond max-retry")
		bans := e.bans(t)
		require.Len(t, bans, 1)
		require.Equal(t, attacker, bans[0].IP)
		require.Equal(t, 3, bans[0].Failures)
		e.requireRefusedAtAccept(t, attacker)
		require.NoError(t, e.connectFrom(bystander, pg.Password))
		metrics := e.get(t, "/metrics", http.StatusOK)
		require.Contains(t, metrics, fmt.Sprintf(`pgwarden_connections_total{outcome="banned",route="default"} %d`, n+1-3))
	})

	t.Run("an operator's ban ends logins in progress", func(t *testing.T) {
		require.NoError(t, pg.LogBarrier(ctx))
		pgMark, logMark := pg.LogSize(), len(e.gw.logLines())
		a := newAttack(t, addr, caFile, operatorBanned, pg.User, pg.Database)
		a.login(0, pg.Password)
		a.login(1, pg.Password)
		a.settle(e.gw, logMark, 2)
		resp, err := http.Post("http://"+e.admin+"/bans", "application/json",
			strings.NewReader(`{"ip": "`+operatorBanned+`", "for": "1h"}`))
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusCreated, resp.StatusCode)
		// Both are ended before their proofs are sent...
		require.Eventually(t, func() bool {
			n := 0
			for _, l := range logsSince(e.gw, logMark) {
				if str(l["msg"]) == "connection closed" && str(l["outcome"]) == "banned" &&
					strings.HasPrefix(str(l["source"]), operatorBanned+":") {
					n++
				}
			}
			return n == 2
		}, time.Minute, 20*time.Millisecond, "the logins in progress were not ended")
		// ...so even the right password gets the FATAL, and postgres never
		// checked it.
		for i, err := range a.finish() {
			require.Equal(t, "28000", sqlstate(err), "login %d: %v", i, err)
		}
		require.NoError(t, pg.LogBarrier(ctx))
		require.NotContains(t, pg.LogSince(pgMark), "connection authorized: user="+pg.User)
		require.NotContains(t, pg.LogSince(pgMark), pgFailureLine)
	})
}

// TestSilentClientsCannotHoldPostgresSlots is the attack on postgres's
// connection slots: from two allowed sources, connections for a role that
// does not exist go silent at the SCRAM prompt, more of them than postgres
// has slots. A legitimate login from a third source must still succeed (and
// the superuser over the unix socket), the silent connections must be
// ended per step and counted, and both sources must end banned.
func TestSilentClientsCannotHoldPostgresSlots(t *testing.T) {
	pg := pgtest.Start(t, pgtest.WithConf("max_connections", "20"))
	// The overall deadline is far: only the step deadline can end the
	// silent connections in this test's time.
	e, addr := startAuthLimitEnv(t, pg,
		"--auth-timeout", "5m", "--auth-step-timeout", "2s", "--max-upstream-startups", "4")
	caFile := e.caFile
	attackers := []string{"127.0.0.2", "127.0.0.3"}
	const legit, perSource = "127.0.0.4", 12 // 24 silent connections for 20 slots
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	require.NoError(t, pg.LogBarrier(ctx))
	pgMark, tcpBefore, logMark := pg.LogSize(), pg.TCPConnectionsReceived(), len(e.gw.logLines())

	var attacks []*attack
	for _, src := range attackers {
		a := newAttack(t, addr, caFile, src, "nosuchuser", pg.Database)
		for i := range perSource {
			a.login(i, "")
		}
		attacks = append(attacks, a)
	}
	for _, a := range attacks {
		a.settle(e.gw, logMark, perSource)
	}

	// Every silent connection is at the prompt or waiting in the gateway.
	v, err := pg.QueryValue(ctx, "SELECT 1")
	require.NoError(t, err, "the superuser could not connect over the unix socket")
	require.Equal(t, "1", v)
	require.NoError(t, e.connectFrom(legit, pg.Password), "a legitimate login failed during the attack")

	// Each source's silent connections that reached postgres time out per
	// step, count as failures, and ban it; the ban ends the rest.
	require.Eventually(t, func() bool { return len(e.bans(t)) == 2 }, time.Minute, 50*time.Millisecond,
		"both attacking sources should end banned")
	for i, a := range attacks {
		codes := map[string]int{}
		for _, err := range a.finish() {
			require.Error(t, err)
			codes[sqlstate(err)]++
		}
		require.Equal(t, map[string]int{"": 3, "28000": perSource - 3}, codes, "source %s", attackers[i])
	}
	require.NoError(t, pg.LogBarrier(ctx))
	require.Equal(t, tcpBefore+2*3+1, pg.TCPConnectionsReceived(),
		"postgres saw more than max-retry connections per attacking source")
	require.NotContains(t, pg.LogSince(pgMark), pgFailureLine)
	metrics := e.get(t, "/metrics", http.StatusOK)
	require.Contains(t, metrics, `pgwarden_auth_total{result="timed_out"} 6`)
	timeouts := 0
	for _, l := range logsSince(e.gw, logMark) {
		if str(l["msg"]) == "auth failure" && str(l["reason"]) == "timeout" {
			timeouts++
		}
	}
	require.Equal(t, 6, timeouts)
	for _, src := range attackers {
		e.requireRefusedAtAccept(t, src)
	}
	require.NoError(t, e.connectFrom(legit, pg.Password))
}
