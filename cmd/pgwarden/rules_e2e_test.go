package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/pgtest"
	"github.com/pgwarden/pgwarden/internal/rulehits"
)

// TestRuleHitsSurviveRestart: each allowlist entry counts the connections
// it admitted (a refused source counts nowhere); GET /rules, /metrics and
// `pgwarden rules` show them, and a restart on the same --ban-state file
// keeps the counts and when each entry began counting.
func TestRuleHitsSurviveRestart(t *testing.T) {
	pg := pgtest.Start(t)
	certFile, keyFile, caFile := tlsFiles(t)
	port := freePort(t)
	state := filepath.Join(t.TempDir(), "state.db")
	args := []string{"--listen", fmt.Sprintf("127.0.0.1:%d", port), "--upstream", pg.Addr(),
		"--allow", "127.0.0.1", "--allow", "127.0.0.2/32", "--tls-cert", certFile, "--tls-key", keyFile,
		"--ban-state", state, "--admin", "127.0.0.1:0", "--drain-timeout", "1s"}
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=verify-full sslrootcert=%s",
		port, pg.User, pg.Password, pg.Database, caFile)
	connect := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c, err := pgconn.Connect(ctx, dsn)
		require.NoError(t, err)
		require.NoError(t, c.Close(ctx))
	}

	g := startBinary(t, args...)
	admin := adminAddr(t, g)
	connect()
	connect()
	// A source outside the allowlist is reset at accept and counts nowhere.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}, Timeout: 5 * time.Second}
	if c, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil { // the reset may beat the dial's return
		_, _ = c.Read(make([]byte, 1))
		c.Close()
	}
	require.Eventually(t, func() bool {
		return strings.Contains(httpGet(t, "http://"+admin+"/metrics"), `pgwarden_rejections_total{reason="not_allowed",route="default"} 1`)
	}, 10*time.Second, 10*time.Millisecond)

	rules := getRules(t, admin)
	require.Len(t, rules, 2)
	require.Equal(t, "127.0.0.1/32", rules[0].Entry)
	require.EqualValues(t, 2, rules[0].Hits)
	require.NotNil(t, rules[0].LastHit)
	require.Equal(t, "127.0.0.2/32", rules[1].Entry)
	require.Zero(t, rules[1].Hits)
	require.Nil(t, rules[1].LastHit)
	metrics := httpGet(t, "http://"+admin+"/metrics")
	require.Contains(t, metrics, `pgwarden_allow_hits_total{entry="127.0.0.1/32",route="default"} 2`)
	require.Contains(t, metrics, `pgwarden_allow_hits_total{entry="127.0.0.2/32",route="default"} 0`)
	require.Contains(t, metrics, `pgwarden_allow_last_hit_timestamp_seconds{entry="127.0.0.1/32",route="default"}`)

	require.NoError(t, g.cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, <-g.done)

	g = startBinary(t, args...)
	admin = adminAddr(t, g)
	connect()
	after := getRules(t, admin)
	require.EqualValues(t, 3, after[0].Hits, "counted on from the stored count")
	require.Equal(t, rules[1].Since, after[1].Since, "the unused entry still counts from its first start")

	// The CLI, through the binary: --stale 0 lists every entry.
	cmd := exec.Command(pgwardenBinary(t), "rules", "--stale", "0")
	cmd.Env = append(withoutEnv("PGWARDEN_ADMIN"), "PGWARDEN_ADMIN="+admin)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Regexp(t, `(?m)^ROUTE\s+ENTRY\s+HITS\s+LAST HIT$`, string(out))
	require.Regexp(t, `(?m)^default\s+127\.0\.0\.1/32\s+3\s+20\d\d-`, string(out))
	require.Regexp(t, `(?m)^default\s+127\.0\.0\.2/32\s+0\s+never \(counting since 20\d\d-`, string(out))

	// The default 30 days: nothing is stale yet; 31 days on, both are.
	var stdout, stderr bytes.Buffer
	env := func(string) string { return admin }
	require.Equal(t, exitOK, runRulesEnv(nil, &stdout, &stderr, env, time.Now), stderr.String())
	require.Equal(t, "no stale entry: 1 of the 2 entries admitted a connection within 30d; not yet counted for 30d and with no connection so far: 1\n", stdout.String())
	stdout.Reset()
	later := func() time.Time { return time.Now().Add(31 * 24 * time.Hour) }
	require.Equal(t, exitOK, runRulesEnv([]string{"--json"}, &stdout, &stderr, env, later), stderr.String())
	var stale []rulehits.Hits
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &stale))
	require.Len(t, stale, 2)
	stdout.Reset()
	require.Equal(t, exitOK, runRulesEnv([]string{"--stale", "40d", "--json"}, &stdout, &stderr, env, later), stderr.String())
	require.Equal(t, "[]\n", stdout.String())
}

func getRules(t *testing.T, admin string) []rulehits.Hits {
	t.Helper()
	var rules []rulehits.Hits
	require.NoError(t, json.Unmarshal([]byte(httpGet(t, "http://"+admin+"/rules")), &rules))
	return rules
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	return strings.TrimSpace(string(body))
}
