package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/oidcauth/oidctest"
	"github.com/pgwarden/pgwarden/internal/pgtest"
)

// The grant tests run the real binary in front of a real postgres, with
// the route's allowlist holding 127.0.0.1 only: the CI runners are
// 127.0.0.2 and up (all of 127/8 is loopback), each client bound to its
// address, and their tokens are minted here with the test issuer's keys.

const grantAudience = "pgwarden-e2e"

// grantEnv is a running gateway serving grants, and its postgres.
type grantEnv struct {
	pg        *pgtest.Postgres
	gw        *process
	args      []string
	port      int    // the postgres route
	grantURL  string // https://127.0.0.1:PORT
	admin     string
	caFile    string
	issuer    *oidctest.Issuer
	statePath string
	config    string // the --config file
	oidcFile  string // its oidc: section
}

type grantEnvOptions struct {
	// keyServer serves the key set over HTTP on 127.0.0.1 (and names the
	// issuer); nil writes it to a file.
	keyServer *oidctest.Server
	args      []string // more serve flags
	config    string   // more config file keys, before its oidc: section
}

// grantRules admits acme/app's main branch (pinned by repository_id) as
// the test role to the test database, for at most 30 minutes.
func grantRules(pg *pgtest.Postgres) string {
	return fmt.Sprintf(`
    - name: deploy
      claims: {repository_id: "123456", ref: refs/heads/main}
      max-ttl: 30m
      users: [%s]
      databases: [%s]
`, pg.User, pg.Database)
}

func startGrantEnv(t *testing.T, pg *pgtest.Postgres, o grantEnvOptions) *grantEnv {
	t.Helper()
	certFile, keyFile, caFile := tlsFiles(t)
	dir := t.TempDir()
	e := &grantEnv{pg: pg, port: freePort(t), caFile: caFile, statePath: filepath.Join(dir, "state.db")}
	e.admin = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	grantAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	e.grantURL = "https://" + grantAddr

	// The issuer and key set come from the config file's oidc: section,
	// or from the flags; the rules only from the file.
	var oidcFile string
	var flags []string
	if o.keyServer != nil {
		e.issuer = o.keyServer.Issuer
		flags = []string{"--oidc-issuer", e.issuer.URL, "--oidc-audience", grantAudience, "--oidc-jwks", o.keyServer.URL + "/jwks"}
		oidcFile = "oidc:\n  rules:" + grantRules(pg)
	} else {
		e.issuer = oidctest.NewIssuer(t, "https://token.actions.githubusercontent.com")
		oidcFile = fmt.Sprintf("oidc:\n  issuer: %s\n  audience: %s\n  jwks: %s\n  rules:%s",
			e.issuer.URL, grantAudience, e.issuer.WriteJWKS(t), grantRules(pg))
	}
	e.config, e.oidcFile = filepath.Join(dir, "pgwarden.yaml"), oidcFile
	e.writeConfig(t, o.config)

	e.args = append([]string{"--config", e.config,
		"--listen", fmt.Sprintf("127.0.0.1:%d", e.port), "--upstream", pg.Addr(),
		"--allow", "127.0.0.1/32", "--tls-cert", certFile, "--tls-key", keyFile,
		"--ban-max-retry", "3", "--ban-time", "1h", "--ban-state", e.statePath,
		"--admin", e.admin, "--grant-listen", grantAddr, "--drain-timeout", "1s"}, flags...)
	e.args = append(e.args, o.args...)
	e.gw = startBinary(t, e.args...)
	return e
}

// writeConfig rewrites the config file with keys before its oidc: section.
func (e *grantEnv) writeConfig(t *testing.T, keys string) {
	t.Helper()
	require.NoError(t, os.WriteFile(e.config, []byte(keys+e.oidcFile), 0o600))
}

func (e *grantEnv) restart(t *testing.T) {
	t.Helper()
	require.NoError(t, e.gw.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-e.gw.done:
		require.NoError(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("pgwarden did not stop")
	}
	e.gw = startBinary(t, e.args...)
}

// token mints a token the rules admit, unless mutate changes it.
func (e *grantEnv) token(t *testing.T, mutate ...func(map[string]any)) string {
	t.Helper()
	c := e.issuer.Claims(grantAudience, time.Now())
	for _, m := range mutate {
		m(c)
	}
	return e.issuer.Sign(t, "RS256", "", c)
}

// request runs `pgwarden grants request` from source with token in $T.
func (e *grantEnv) request(t *testing.T, source, token string, extra ...string) (int, string, string) {
	t.Helper()
	args := append([]string{"request", "--url", e.grantURL, "--token-env", "T", "--cacert", e.caFile, "--bind", source}, extra...)
	return runGrantsBinary(t, []string{"T=" + token}, args...)
}

// post sends a grant request from source over HTTPS with an
// Authorization header (none when token is "") and a body.
func (e *grantEnv) post(t *testing.T, source, token, body string) (int, string) {
	t.Helper()
	status, data, err := e.postVia(t, source, nil, token, body)
	require.NoError(t, err)
	return status, data
}

// postVia is post from a load balancer at source that begins the
// connection with proxyHeader (nil: none); it returns the request's error.
func (e *grantEnv) postVia(t *testing.T, source string, proxyHeader []byte, token, body string) (int, string, error) {
	t.Helper()
	pem, err := os.ReadFile(e.caFile)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(pem))
	d := &net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err == nil && proxyHeader != nil {
			if _, err = c.Write(proxyHeader); err != nil {
				_ = c.Close()
			}
		}
		return c, err
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: dial, TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true,
	}}
	req, err := http.NewRequest(http.MethodPost, e.grantURL+"/v1/grants/self", strings.NewReader(body))
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(data), nil
}

// connect logs in from source as user to database.
func (e *grantEnv) connect(source, user, password, database string) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=verify-full sslrootcert=%s connect_timeout=10",
		e.port, user, password, database, e.caFile))
	if err != nil {
		return nil, err
	}
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
	cfg.DialFunc = d.DialContext
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return pgconn.ConnectConfig(ctx, cfg)
}

// session logs in from source as the test role and checks the session.
func (e *grantEnv) session(t *testing.T, source string) *pgconn.PgConn {
	t.Helper()
	conn, err := e.connect(source, e.pg.User, e.pg.Password, e.pg.Database)
	require.NoError(t, err, "from %s", source)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	require.NoError(t, query(conn, "SELECT 1"))
	return conn
}

func query(conn *pgconn.PgConn, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, err := conn.Exec(ctx, sql).ReadAll()
	return err
}

// requireRefusedAtAccept: the source gets no postgres message at all (a
// reset at accept), and postgres hears nothing.
func (e *grantEnv) requireRefusedAtAccept(t *testing.T, source string) {
	t.Helper()
	before := e.pg.TCPConnectionsReceived()
	conn, err := e.connect(source, e.pg.User, e.pg.Password, e.pg.Database)
	if err == nil {
		_ = conn.Close(context.Background())
	}
	require.Error(t, err, "%s was admitted", source)
	require.Empty(t, pgtest.Code(err), "%s got a postgres error instead of a reset: %v", source, err)
	require.True(t, isReset(err), "%s: want a connection reset, got %v", source, err)
	e.requirePostgresSawNothing(t, before)
}

func (e *grantEnv) requirePostgresSawNothing(t *testing.T, before int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, e.pg.LogBarrier(ctx))
	require.Equal(t, before, e.pg.TCPConnectionsReceived(), "postgres saw a connection the gateway should have refused")
}

// isReset reports a connection reset (or an EOF where the reset raced
// pgconn's first read): the peer got no byte.
func isReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "EOF") ||
		strings.Contains(err.Error(), "broken pipe"))
}

// metrics scrapes /metrics.
func (e *grantEnv) metrics(t *testing.T) string {
	t.Helper()
	resp, err := http.Get("http://" + e.admin + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(data)
}

// cli runs `pgwarden grants ARGS --admin` and returns the exit code,
// stdout and stderr.
func (e *grantEnv) cli(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return runGrantsBinary(t, nil, append(args, "--admin", e.admin)...)
}

// logsWith lists the gateway's log lines with this message.
func (e *grantEnv) logsWith(msg string) []map[string]any {
	var out []map[string]any
	for _, l := range e.gw.logLines() {
		if l["msg"] == msg {
			out = append(out, l)
		}
	}
	return out
}

func TestGrantsSelfServiceEndToEnd(t *testing.T) {
	pg := pgtest.Start(t)
	e := startGrantEnv(t, pg, grantEnvOptions{})
	const runner, other = "127.0.0.2", "127.0.0.3"

	// Outside the allowlist: reset at accept, nothing reaches postgres.
	e.requireRefusedAtAccept(t, runner)

	// The runner asks for a grant with its job's token, as a CI job would.
	tok := e.token(t)
	code, stdout, stderr := e.request(t, runner, tok, "--ttl", "20m")
	require.Equal(t, 0, code, "stderr: %s", stderr)
	g := decodeGrant(t, stdout)
	require.Equal(t, runner, g["source"], "the address the request came from")
	require.Equal(t, []any{pg.User}, g["users"])
	require.Equal(t, []any{pg.Database}, g["databases"])
	require.Equal(t, "repo:acme/app:environment:production", g["created_by"])
	require.Equal(t, `oidc rule "deploy"`, g["rule"])
	until, err := time.Parse(time.RFC3339, g["until"].(string))
	require.NoError(t, err)
	require.WithinDuration(t, time.Now().Add(20*time.Minute), until, time.Minute)

	// Now the runner logs in; another source is still refused.
	conn := e.session(t, runner)
	e.requireRefusedAtAccept(t, other)

	// The grant is limited to the rule's role and database: anything else
	// gets FATAL 28000 naming the rule (not the grant), before postgres is
	// dialed.
	before := pg.TCPConnectionsReceived()
	_, err = e.connect(runner, pg.OtherUser, pg.OtherPassword, pg.Database)
	require.Equal(t, "28000", pgtest.Code(err), "%v", err)
	require.ErrorContains(t, err, `user "`+pg.OtherUser+`" is not permitted by the access grant for this address (oidc rule "deploy")`)
	require.NotContains(t, err.Error(), g["id"].(string))
	_, err = e.connect(runner, pg.User, pg.Password, "postgres")
	require.Equal(t, "28000", pgtest.Code(err), "%v", err)
	require.ErrorContains(t, err, `database "postgres" is not permitted by the access grant for this address (oidc rule "deploy")`)
	e.requirePostgresSawNothing(t, before)
	// An allowlisted source is not limited by grants.
	c2, err := e.connect("127.0.0.1", pg.OtherUser, pg.OtherPassword, pg.Database)
	require.NoError(t, err)
	_ = c2.Close(context.Background())
	require.NoError(t, query(conn, "SELECT 2"), "the runner's session is untouched")

	// The same token again: 409, and nothing changes.
	code, stdout, stderr = e.request(t, runner, tok)
	require.Equal(t, 1, code)
	require.Empty(t, stdout)
	require.Contains(t, stderr, "409")
	require.Contains(t, stderr, "this token was used before")

	// A valid token that no rule admits: 403, not counted toward a ban.
	const noRule = "127.0.0.5"
	for i := 0; i < 4; i++ {
		status, body := e.post(t, noRule, e.token(t, func(c map[string]any) { c["repository_id"] = "31337" }), "")
		require.Equal(t, http.StatusForbidden, status, body)
		require.JSONEq(t, `{"error": "no rule admits this token"}`, body)
	}

	// Tokens that do not verify: 401 each, with a plain reason and nothing
	// of the token; three of them (--ban-max-retry 3) ban the source, whose
	// requests are then refused even with a good token, and whose
	// connections are reset at accept.
	const guesser = "127.0.0.4"
	code, _, stderr = e.request(t, guesser, e.token(t, func(c map[string]any) { c["aud"] = "someone-else" }))
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "grant refused (401, the token was not accepted): token audience not accepted")
	status, body := e.post(t, guesser, oidctest.NoneToken(e.issuer.Claims(grantAudience, time.Now())), "")
	require.Equal(t, http.StatusUnauthorized, status, body)
	require.NotContains(t, body, "eyJ", "nothing of the token is echoed")
	status, body = e.post(t, guesser, oidctest.HS256Token(e.issuer.RSAPublicPEM(), oidctest.RSAKeyID, e.issuer.Claims(grantAudience, time.Now())), "")
	require.Equal(t, http.StatusUnauthorized, status, body)
	status, body = e.post(t, guesser, e.token(t), "")
	require.Equal(t, http.StatusForbidden, status, body)
	require.JSONEq(t, `{"error": "this address is banned"}`, body)
	e.requireRefusedAtAccept(t, guesser)
	code, stdout, _ = runGrantsBinary(t, nil, "list", "--json", "--admin", e.admin)
	require.Equal(t, 0, code)
	bans, err := http.Get("http://" + e.admin + "/bans")
	require.NoError(t, err)
	banJSON, _ := io.ReadAll(bans.Body)
	bans.Body.Close()
	require.Contains(t, string(banJSON), `"ip":"`+guesser+`"`)
	require.NotContains(t, stdout, guesser, "no grant for the guesser")

	// A flood from one source: 429 with Retry-After once its burst is
	// spent (bad bodies: refused before any token work, and not counted
	// toward a ban).
	const flooder = "127.0.0.6"
	statuses := map[int]int{}
	for i := 0; i < 12; i++ {
		status, _ := e.post(t, flooder, "", `{"ttl": "soon"}`)
		statuses[status]++
	}
	require.Positive(t, statuses[http.StatusTooManyRequests], "statuses: %v", statuses)
	require.Positive(t, statuses[http.StatusBadRequest], "statuses: %v", statuses)

	// Audit: one line for the grant, with the claims the rule matched, and
	// one for its first use.
	created := e.logsWith("grant created")
	require.Len(t, created, 1)
	require.Equal(t, runner, created[0]["source"])
	require.Equal(t, "repo:acme/app:environment:production", created[0]["created_by"])
	require.Contains(t, created[0]["reason"], "run_id 4242")
	require.Equal(t, map[string]any{"repository_id": "123456", "ref": "refs/heads/main"}, created[0]["claims"])
	require.Len(t, e.logsWith("grant first used"), 1)

	m := e.metrics(t)
	for _, want := range []string{
		"pgwarden_grants_active 1",
		`pgwarden_grants_total{via="oidc"} 1`,
		`pgwarden_grants_total{via="admin"} 0`,
		`pgwarden_grant_requests_total{outcome="granted"} 1`,
		`pgwarden_grant_requests_total{outcome="replayed"} 1`,
		`pgwarden_grant_requests_total{outcome="no_rule"} 4`,
		`pgwarden_grant_requests_total{outcome="bad_token"} 3`,
		`pgwarden_grant_requests_total{outcome="banned"} 1`,
		`pgwarden_rejections_total{reason="not_permitted",route="default"} 2`,
	} {
		require.Contains(t, m, want+"\n")
	}
	require.Contains(t, m, `pgwarden_grant_requests_total{outcome="rate_limited"} `)
	require.NotContains(t, m, `pgwarden_grant_requests_total{outcome="rate_limited"} 0`+"\n")
}

func TestGrantsExpiryAndRevokeEndToEnd(t *testing.T) {
	pg := pgtest.Start(t)
	// The key set over HTTP from 127.0.0.1, the issuer and audience from
	// flags.
	e := startGrantEnv(t, pg, grantEnvOptions{keyServer: oidctest.Serve(t)})

	// A seconds-long grant: from its until on, new connections are reset
	// at accept, while the session it admitted keeps running (no
	// --grant-end-sessions).
	const runner = "127.0.0.2"
	code, stdout, stderr := e.request(t, runner, e.token(t), "--ttl", "6s")
	require.Equal(t, 0, code, "stderr: %s", stderr)
	g := decodeGrant(t, stdout)
	until, err := time.Parse(time.RFC3339, g["until"].(string))
	require.NoError(t, err)
	conn := e.session(t, runner)
	time.Sleep(time.Until(until) + 100*time.Millisecond)
	e.requireRefusedAtAccept(t, runner)
	require.Eventually(t, func() bool { return len(e.logsWith("grant expired")) == 1 }, 20*time.Second, 50*time.Millisecond)
	require.NoError(t, query(conn, "SELECT 1"), "the session outlived its grant (no --grant-end-sessions)")

	// Revoke --keep-sessions: new connections refused, the session stays.
	const admin = "127.0.0.3"
	code, stdout, stderr = e.cli(t, "add", admin, "--ttl", "10m", "--reason", "hotfix")
	require.Equal(t, 0, code, stderr)
	id := decodeGrant(t, stdout)["id"].(string)
	kept := e.session(t, admin)
	code, stdout, stderr = e.cli(t, "revoke", id, "--keep-sessions")
	require.Equal(t, 0, code, stderr)
	require.Equal(t, "revoked "+id+" (its sessions keep running)\n", stdout)
	e.requireRefusedAtAccept(t, admin)
	require.NoError(t, query(kept, "SELECT 1"), "--keep-sessions kept the session")

	// Revoke (by source): the session it admitted ends at once.
	code, _, stderr = e.cli(t, "add", admin, "--ttl", "10m", "--reason", "hotfix, again")
	require.Equal(t, 0, code, stderr)
	ended := e.session(t, admin)
	code, stdout, stderr = e.cli(t, "revoke", admin)
	require.Equal(t, 0, code, stderr)
	require.Equal(t, "revoked "+admin+"\n", stdout)
	require.Error(t, query(ended, "SELECT 1"), "the revoked grant's session still runs")
	require.NoError(t, query(kept, "SELECT 1"), "a session of the earlier grant is not this one's")
	e.requireRefusedAtAccept(t, admin)
	require.Eventually(t, func() bool {
		for _, l := range e.gw.logLines() {
			if l["msg"] == "connection closed" && l["outcome"] == "access_ended" {
				return true
			}
		}
		return false
	}, 10*time.Second, 50*time.Millisecond)
	require.Len(t, e.logsWith("sessions ended with their access grant"), 1)
	revoked := e.logsWith("grant revoked")
	require.Len(t, revoked, 2)
	require.Equal(t, true, revoked[0]["keep_sessions"])
	require.Equal(t, false, revoked[1]["keep_sessions"])
}

func TestGrantsExpiryEndsSessionsEndToEnd(t *testing.T) {
	pg := pgtest.Start(t)
	e := startGrantEnv(t, pg, grantEnvOptions{args: []string{"--grant-end-sessions"}})
	const runner = "127.0.0.2"
	code, stdout, stderr := e.request(t, runner, e.token(t), "--ttl", "6s")
	require.Equal(t, 0, code, "stderr: %s", stderr)
	until, err := time.Parse(time.RFC3339, decodeGrant(t, stdout)["until"].(string))
	require.NoError(t, err)
	conn := e.session(t, runner)
	// With --grant-end-sessions the session ends with its grant.
	require.Eventually(t, func() bool { return query(conn, "SELECT 1") != nil }, time.Until(until)+20*time.Second, 200*time.Millisecond)
	require.False(t, time.Now().Before(until), "the session ended before its grant did")
	e.requireRefusedAtAccept(t, runner)
	require.Len(t, e.logsWith("sessions ended with their access grant"), 1)
}

func TestGrantsAdminCLIAndRestartEndToEnd(t *testing.T) {
	pg := pgtest.Start(t)
	e := startGrantEnv(t, pg, grantEnvOptions{})
	const source = "127.0.0.2"

	code, stdout, stderr := e.cli(t, "list")
	require.Equal(t, 0, code, stderr)
	require.Equal(t, "no active grants\n", stdout)

	code, stdout, stderr = e.cli(t, "add", source, "--ttl", "1h", "--reason", "db maintenance",
		"--user", pg.User, "--database", pg.Database, "--route", "default")
	require.Equal(t, 0, code, stderr)
	require.Equal(t, 1, strings.Count(stdout, "\n"), "one JSON object on one line: %q", stdout)
	g := decodeGrant(t, stdout)
	for _, k := range []string{"id", "source", "until", "reason", "users", "databases", "created_by"} {
		require.Contains(t, g, k)
	}
	require.Regexp(t, `^g-[0-9a-f]{16}$`, g["id"])
	require.Equal(t, source, g["source"])
	until, err := time.Parse(time.RFC3339, g["until"].(string))
	require.NoError(t, err)
	require.WithinDuration(t, time.Now().Add(time.Hour), until, time.Minute)
	require.Equal(t, "db maintenance", g["reason"])
	require.Equal(t, []any{pg.User}, g["users"])
	require.Equal(t, []any{pg.Database}, g["databases"])
	require.Equal(t, "admin", g["created_by"])
	require.Equal(t, "default", g["route"])
	require.Contains(t, stderr, "granted "+source+" until")
	id := g["id"].(string)

	code, stdout, stderr = e.cli(t, "list")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "ID")
	require.Contains(t, stdout, id)
	require.Contains(t, stdout, "db maintenance")
	code, stdout, _ = e.cli(t, "list", "--json")
	require.Equal(t, 0, code)
	var list []map[string]any
	require.NoError(t, json.Unmarshal([]byte(stdout), &list))
	require.Len(t, list, 1)
	require.Equal(t, id, list[0]["id"])

	// Refusals: exit 2 for what the endpoint refuses as typed, before or
	// after sending; 1 for what is not there.
	code, _, stderr = e.cli(t, "add", source, "--ttl", "1h", "--reason", "x", "--route", "nope")
	require.Equal(t, exitUsage, code)
	require.Contains(t, stderr, `no route is named "nope" (routes: default)`)
	code, _, stderr = e.cli(t, "add", "db.example.com", "--ttl", "1h", "--reason", "x")
	require.Equal(t, exitUsage, code)
	require.Contains(t, stderr, "hostnames are not allowed")
	code, _, stderr = e.cli(t, "revoke", "g-0000000000000000")
	require.Equal(t, exitRuntime, code)
	require.Contains(t, stderr, "no such grant")

	// The grant survives a restart (same --ban-state), and admits.
	e.restart(t)
	code, stdout, _ = e.cli(t, "list", "--json")
	require.Equal(t, 0, code)
	require.Contains(t, stdout, id)
	e.session(t, source)

	code, stdout, stderr = e.cli(t, "revoke", id)
	require.Equal(t, 0, code, stderr)
	require.Equal(t, "revoked "+id+"\n", stdout)
	code, stdout, _ = e.cli(t, "list")
	require.Equal(t, 0, code)
	require.Equal(t, "no active grants\n", stdout)
	e.requireRefusedAtAccept(t, source)

	m := e.metrics(t)
	require.Contains(t, m, "pgwarden_grants_active 0\n")
	// Counted by this process, since the restart: none made.
	require.Contains(t, m, `pgwarden_grants_total{via="admin"} 0`+"\n")
}

func TestGrantConfigErrorsExit2(t *testing.T) {
	bin := pgwardenBinary(t)
	certFile, keyFile, _ := tlsFiles(t)
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
		return p
	}
	rules := write("rules.yaml", "oidc:\n  rules:\n    - claims: {repository_id: \"1\"}\n")
	typo := write("typo.yaml", "oidc:\n  rules:\n    - claims: {repository_id: \"1\"}\n      max_ttl: 30m\n")
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	grant := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	base := []string{"--listen", listen, "--upstream", "127.0.0.1:5432", "--allow", "127.0.0.1", "--tls-cert", certFile, "--tls-key", keyFile}
	oidc := []string{"--oidc-issuer", "https://token.actions.githubusercontent.com", "--oidc-audience", "a", "--oidc-jwks", write("jwks.json", `{"keys":[]}`)}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no issuer", append(base, "--grant-listen", grant, "--config", rules, "--oidc-audience", "a"), "--grant-listen needs the token issuer: add --oidc-issuer"},
		{"no rules", append(append(base, "--grant-listen", grant), oidc...), "--grant-listen needs rules saying which tokens get a grant: add oidc.rules"},
		{"no tls", append([]string{"--listen", listen, "--upstream", "127.0.0.1:5432", "--allow", "127.0.0.1", "--grant-listen", grant, "--config", rules}, oidc...), "--grant-listen needs TLS"},
		{"half the endpoint's pair", append(append(base, "--grant-listen", grant, "--config", rules, "--grant-tls-cert", certFile), oidc...), "--grant-tls-cert and --grant-tls-key go together"},
		{"bad grant-listen", append(append(base, "--grant-listen", "8443", "--config", rules), oidc...), `--grant-listen "8443": want HOST:PORT`},
		{"short max ttl", append(base, "--grant-max-ttl", "1ms"), "--grant-max-ttl 1ms: want a duration of at least 1s"},
		{"rule typo", append(append(base, "--grant-listen", grant, "--config", typo), oidc...), `unknown key "max_ttl" in a rule`},
		{"empty key set", append(append(base, "--grant-listen", grant, "--config", rules), oidc...), "--oidc-jwks"},
		{"grant balancers without the endpoint", append(base, "--grant-proxy-protocol-from", "10.0.0.2"), "--grant-proxy-protocol-from names the load balancers in front of the grant endpoint: add --grant-listen"},
		{"bad grant balancer", append(append(base, "--grant-listen", grant, "--config", rules, "--grant-proxy-protocol-from", "10.0.0.300"), oidc...), "--grant-proxy-protocol-from"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, append([]string{"serve"}, tc.args...)...)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			var ee *exec.ExitError
			require.ErrorAs(t, err, &ee, "output: %s", out.String())
			require.Equal(t, 2, ee.ExitCode(), "output: %s", out.String())
			require.Contains(t, out.String(), tc.want)
			require.NotContains(t, out.String(), "panic")
			for _, addr := range []string{listen, grant} {
				if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
					c.Close()
					t.Fatalf("something listens on %s", addr)
				}
			}
		})
	}
}

// TestGrantsBehindBalancerEndToEnd: with the grant endpoint behind a load
// balancer (--grant-proxy-protocol-from), the grant is for the CI runner
// the PROXY header names, which then logs in directly; the balancer gets
// nothing, a balancer connection without a header is closed and counted,
// and a reload changes which balancers are trusted.
func TestGrantsBehindBalancerEndToEnd(t *testing.T) {
	pg := pgtest.Start(t)
	const balancer, runner, other = "127.0.0.2", "127.0.0.60", "127.0.0.3"
	e := startGrantEnv(t, pg, grantEnvOptions{config: "grant-proxy-protocol-from: [" + balancer + "]\n"})
	grantAddr := strings.TrimPrefix(e.grantURL, "https://")
	e.requireRefusedAtAccept(t, runner)

	status, body, err := e.postVia(t, balancer, proxyHeader(t, 2, runner+":41000", grantAddr), e.token(t), `{"ttl": "10m"}`)
	require.NoError(t, err)
	require.Equal(t, http.StatusCreated, status, body)
	var g map[string]any
	require.NoError(t, json.Unmarshal([]byte(body), &g))
	require.Equal(t, runner, g["source"], "the grant is for the client the header names")
	e.session(t, runner)
	e.requireRefusedAtAccept(t, balancer)

	// The balancer without a header: closed before TLS, counted.
	_, _, err = e.postVia(t, balancer, nil, e.token(t), "")
	require.Error(t, err)
	require.Eventually(t, func() bool {
		return metricValue(t, e.admin, `pgwarden_proxy_header_errors_total{reason="no_header"}`) == 1
	}, 10*time.Second, 20*time.Millisecond)

	// Trust another balancer instead: a reload puts it in force, and the
	// old one's header is now garbage to TLS.
	e.writeConfig(t, "grant-proxy-protocol-from: ["+other+"]\n")
	require.NoError(t, e.gw.cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool {
		for _, l := range e.logsWith("configuration reloaded") {
			if fmt.Sprint(l["changed"]) == "[--grant-proxy-protocol-from]" {
				return true
			}
		}
		return false
	}, 10*time.Second, 20*time.Millisecond, "no reload naming --grant-proxy-protocol-from")
	_, _, err = e.postVia(t, balancer, proxyHeader(t, 2, "127.0.0.61:41000", grantAddr), e.token(t), "")
	require.Error(t, err, "an untrusted peer's header is not read as one")
	status, body, err = e.postVia(t, other, proxyHeader(t, 1, "127.0.0.61:41000", grantAddr), e.token(t), "")
	require.NoError(t, err)
	require.Equal(t, http.StatusCreated, status, body)
	require.Contains(t, body, `"source":"127.0.0.61"`)

	// Removing every balancer waits for a restart: the list stays.
	e.writeConfig(t, "")
	require.NoError(t, e.gw.cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool {
		for _, l := range e.logsWith("settings changed that take effect only after a restart; they keep their running values until then") {
			if strings.Contains(fmt.Sprint(l["restart_needed"]), "--grant-proxy-protocol-from") {
				return true
			}
		}
		return false
	}, 10*time.Second, 20*time.Millisecond, "no reload saying --grant-proxy-protocol-from waits for a restart")
	status, body, err = e.postVia(t, other, proxyHeader(t, 2, "127.0.0.62:41000", grantAddr), e.token(t), "")
	require.NoError(t, err)
	require.Equal(t, http.StatusCreated, status, body)
	require.Contains(t, body, `"source":"127.0.0.62"`)
}
