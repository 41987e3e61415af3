package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/pgtest"
)

// TestGrantHitsAndReload: connections a grant admits count under the
// grant in GET /rules and pgwarden_allow_hits_total; a SIGHUP puts new
// grant settings in force (the longest grant, the OIDC rules) or, when
// the rules are broken, keeps all of the old ones.
func TestGrantHitsAndReload(t *testing.T) {
	pg := pgtest.Start(t)
	e := startGrantEnv(t, pg, grantEnvOptions{})
	const source = "127.0.0.2"

	code, stdout, stderr := e.cli(t, "add", source, "--ttl", "1h", "--reason", "hits")
	require.Equal(t, 0, code, stderr)
	id := decodeGrant(t, stdout)["id"].(string)
	e.session(t, source)
	e.session(t, source)
	rules := getRules(t, e.admin)
	var grantHits uint64
	for _, r := range rules {
		if r.Entry == "grant:"+id {
			grantHits = r.Hits
		}
	}
	require.EqualValues(t, 2, grantHits, "%+v", rules)
	require.Contains(t, e.metrics(t), fmt.Sprintf(`pgwarden_allow_hits_total{entry="grant:%s",route="default"} 2`, id))

	// The token the rules admit gets a grant, as before.
	code, body := e.post(t, "127.0.0.3", e.token(t), `{"ttl": "10m"}`)
	require.Equal(t, http.StatusCreated, code, body)

	// New rules (another repository) and a shorter longest grant, through
	// the config file and SIGHUP.
	config := e.args[1]
	original, err := os.ReadFile(config)
	require.NoError(t, err)
	changed := strings.Replace(string(original), `repository_id: "123456"`, `repository_id: "654321"`, 1) + "grant-max-ttl: 2m\n"
	require.NoError(t, os.WriteFile(config, []byte(changed), 0o600))
	mark := len(e.gw.logLines())
	require.NoError(t, e.gw.cmd.Process.Signal(syscall.SIGHUP))
	line := waitLogLine(t, e.gw, mark, "the reload", func(l map[string]any) bool { return l["msg"] == "configuration reloaded" })
	require.ElementsMatch(t, []any{"--grant-max-ttl", "oidc"}, line["changed"])

	code, body = e.post(t, "127.0.0.4", e.token(t), `{"ttl": "10m"}`)
	require.Equal(t, http.StatusForbidden, code, "the old repository's token matches no rule now: %s", body)
	code, body = e.post(t, "127.0.0.4", e.token(t, func(c map[string]any) { c["repository_id"] = "654321" }), `{"ttl": "10m"}`)
	require.Equal(t, http.StatusCreated, code, body)
	var g map[string]any
	require.NoError(t, json.Unmarshal([]byte(body), &g))
	until, err := time.Parse(time.RFC3339, g["until"].(string))
	require.NoError(t, err)
	require.WithinDuration(t, time.Now().Add(2*time.Minute), until, 30*time.Second, "capped by the reloaded --grant-max-ttl")

	// Broken rules: nothing changes, not even the valid max TTL beside them.
	broken := strings.Replace(changed, "max-ttl: 30m", "max-ttl: soon", 1)
	broken = strings.Replace(broken, "grant-max-ttl: 2m", "grant-max-ttl: 20m", 1)
	require.NoError(t, os.WriteFile(config, []byte(broken), 0o600))
	mark = len(e.gw.logLines())
	require.NoError(t, e.gw.cmd.Process.Signal(syscall.SIGHUP))
	waitLogLine(t, e.gw, mark, "the refusal", func(l map[string]any) bool {
		return strings.HasPrefix(str(l["msg"]), "configuration reload failed") && strings.Contains(str(l["error"]), "soon")
	})
	code, stdout, stderr = e.cli(t, "add", "127.0.0.5", "--ttl", "15m", "--reason", "cap")
	require.Equal(t, 0, code, stderr)
	until, err = time.Parse(time.RFC3339, decodeGrant(t, stdout)["until"].(string))
	require.NoError(t, err)
	require.WithinDuration(t, time.Now().Add(2*time.Minute), until, 30*time.Second, "still the 2m cap")
}
