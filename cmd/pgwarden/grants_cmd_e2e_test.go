package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/certstest"
	"github.com/pgwarden/pgwarden/internal/grantapi/granttest"
)

// runGrantsBinary runs `pgwarden grants ARGS` with exactly env, and
// returns its exit code, stdout and stderr.
func runGrantsBinary(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, pgwardenBinary(t), append([]string{"grants"}, args...)...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return code, stdout.String(), stderr.String()
}

// caFile writes the endpoint's CA for --cacert.
func caFile(t *testing.T, e *granttest.Env) string {
	t.Helper()
	return certstest.WriteFile(t, filepath.Join(t.TempDir(), "ca.crt"), e.CA.CertPEM())
}

// decodeGrant parses the one JSON object grants request prints.
func decodeGrant(t *testing.T, stdout string) map[string]any {
	t.Helper()
	var g map[string]any
	dec := json.NewDecoder(strings.NewReader(stdout))
	require.NoError(t, dec.Decode(&g), "stdout: %q", stdout)
	require.False(t, dec.More(), "one JSON object: %q", stdout)
	return g
}

func TestGrantsRequestTokenEnvAndGitLab(t *testing.T) {
	t.Parallel()
	e := granttest.Start(t, granttest.Options{})
	ca := caFile(t, e)

	code, stdout, stderr := runGrantsBinary(t, []string{"CI_TOKEN=" + e.Token(t, "RS256")},
		"request", "--url", e.URL, "--token-env", "CI_TOKEN", "--cacert", ca, "--ttl", "15m")
	require.Equal(t, 0, code, "stderr: %s", stderr)
	g := decodeGrant(t, stdout)
	require.Equal(t, "127.0.0.1", g["source"], "the runner's own address")
	require.Equal(t, []any{"migrator"}, g["users"])
	require.Equal(t, []any{"shop"}, g["databases"])
	require.Equal(t, "repo:acme/app:environment:production", g["created_by"])
	until, err := time.Parse(time.RFC3339, g["until"].(string))
	require.NoError(t, err)
	require.True(t, until.Equal(e.Clock.Now().Add(15*time.Minute)), "until %s", until)
	require.Contains(t, stderr, "127.0.0.1 may connect until")
	_, ok := e.Registry.Covering("main", netip.MustParseAddr("127.0.0.1"))
	require.True(t, ok)

	// GitLab: the id_tokens variable; the grant is extended (same id).
	code, stdout, stderr = runGrantsBinary(t, []string{"PGWARDEN_ID_TOKEN=" + e.Token(t, "ES256")},
		"request", "--url", e.URL+"/", "--gitlab", "PGWARDEN_ID_TOKEN", "--cacert", ca)
	require.Equal(t, 0, code, "stderr: %s", stderr)
	require.Equal(t, g["id"], decodeGrant(t, stdout)["id"])
	require.Len(t, e.Registry.List(), 1)

	// An unset GitLab variable says how to declare it, before any request.
	code, _, stderr = runGrantsBinary(t, nil, "request", "--url", e.URL, "--gitlab", "PGWARDEN_ID_TOKEN", "--cacert", ca)
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "PGWARDEN_ID_TOKEN is empty or not set")
	require.Contains(t, stderr, "id_tokens:")
}

func TestGrantsRequestGitHub(t *testing.T) {
	t.Parallel()
	e := granttest.Start(t, granttest.Options{AudienceIsURL: true})
	// The Actions token service: checks the request token and mints a
	// token for the audience asked.
	var mu sync.Mutex
	var asked []string
	tokenSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "bearer actions-request-token" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		aud := r.URL.Query().Get("audience")
		mu.Lock()
		asked = append(asked, aud)
		mu.Unlock()
		c := e.Issuer.Claims(aud, e.Clock.Now())
		_ = json.NewEncoder(w).Encode(map[string]any{"count": 1, "value": e.Issuer.Sign(t, "RS256", "", c)})
	}))
	defer tokenSrv.Close()
	env := []string{
		"ACTIONS_ID_TOKEN_REQUEST_URL=" + tokenSrv.URL + "/token?api-version=2.0",
		"ACTIONS_ID_TOKEN_REQUEST_TOKEN=actions-request-token",
	}
	ca := caFile(t, e)
	code, stdout, stderr := runGrantsBinary(t, env, "request", "--url", e.URL, "--github", "--cacert", ca)
	require.Equal(t, 0, code, "stderr: %s", stderr)
	require.Equal(t, "127.0.0.1", decodeGrant(t, stdout)["source"])
	mu.Lock()
	require.Equal(t, []string{e.URL}, asked, "the audience defaults to the --url origin, which the server accepts")
	mu.Unlock()

	// Another audience (--audience) is refused by this server: 401, exit 1.
	code, _, stderr = runGrantsBinary(t, env, "request", "--url", e.URL, "--github", "--audience", "pgwarden-prod", "--cacert", ca)
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "401")
	require.Contains(t, stderr, "token audience not accepted")

	// Outside GitHub Actions: the error names the missing permission.
	code, _, stderr = runGrantsBinary(t, nil, "request", "--url", e.URL, "--github", "--cacert", ca)
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "id-token: write")
}

func TestGrantsRequestRefusals(t *testing.T) {
	t.Parallel()
	e := granttest.Start(t, granttest.Options{})
	ca := caFile(t, e)
	noRule := e.Token(t, "RS256", func(c map[string]any) { c["repository_id"] = "31337" })
	code, stdout, stderr := runGrantsBinary(t, []string{"T=" + noRule}, "request", "--url", e.URL, "--token-env", "T", "--cacert", ca)
	require.Equal(t, 1, code)
	require.Empty(t, stdout)
	require.Contains(t, stderr, "grant refused (403, this job may not have a grant): no rule admits this token")

	tok := e.Token(t, "RS256")
	code, _, stderr = runGrantsBinary(t, []string{"T=" + tok}, "request", "--url", e.URL, "--token-env", "T", "--cacert", ca)
	require.Equal(t, 0, code, stderr)
	code, _, stderr = runGrantsBinary(t, []string{"T=" + tok}, "request", "--url", e.URL, "--token-env", "T", "--cacert", ca)
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "409")
	require.Contains(t, stderr, "used before")

	// Without --cacert the test CA is unknown: nothing is sent.
	code, _, stderr = runGrantsBinary(t, []string{"T=" + e.Token(t, "RS256")}, "request", "--url", e.URL, "--token-env", "T")
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "certificate")

	// Nothing listening.
	code, _, stderr = runGrantsBinary(t, []string{"T=x"}, "request", "--url", "https://127.0.0.1:1", "--token-env", "T", "--cacert", ca)
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "connection refused")
}

func TestGrantsRequestUsage(t *testing.T) {
	t.Parallel()
	ca := filepath.Join(t.TempDir(), "ca.crt")
	require.NoError(t, os.WriteFile(ca, []byte("not pem"), 0o600))
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{}, []string{"Usage:", "grants request --url"}},
		{[]string{"frobnicate"}, []string{`unknown subcommand "frobnicate"`}},
		{[]string{"request", "--token-env", "T"}, []string{"--url is required"}},
		{[]string{"request", "--url", "http://db.example.com:8443", "--github"}, []string{"must be https"}},
		{[]string{"request", "--url", "db.example.com", "--github"}, []string{"want https://HOST"}},
		{[]string{"request", "--url", "https://db.example.com"}, []string{"no token source"}},
		{[]string{"request", "--url", "https://db.example.com", "--github", "--token-env", "T"}, []string{"exclude each other"}},
		{[]string{"request", "--url", "https://db.example.com", "--gitlab", "A", "--token-env", "T"}, []string{"exclude each other"}},
		{[]string{"request", "--url", "https://db.example.com", "--token-env", "T", "--audience", "x"}, []string{"--audience applies to --github only"}},
		{[]string{"request", "--url", "https://db.example.com", "--github", "--ttl", "0s"}, []string{`--ttl "0s"`}},
		{[]string{"request", "--url", "https://db.example.com", "--github", "--ttl", "soon"}, []string{`--ttl "soon"`}},
		{[]string{"request", "--url", "https://db.example.com", "--github", "--cacert", ca}, []string{"--cacert", "no PEM CERTIFICATE"}},
		{[]string{"request", "--url", "https://db.example.com", "--github", "extra"}, []string{`unexpected argument "extra"`}},
		{[]string{"request", "--nope"}, []string{"unknown flag: --nope", "--help lists the flags"}},
		{[]string{"request", "--url", "https://db.example.com", "--github", "--bind", "eth0"}, []string{`--bind "eth0": want a local IP address`}},
		{[]string{"request", "--url", "https://127.0.0.1:8443", "--token-env", "T", "--bind", "::1"}, []string{"--bind ::1: the database connection will use IPv4"}},
		{[]string{"add", "203.0.113.7", "--reason", "x"}, []string{"--ttl is required"}},
		{[]string{"add", "--ttl", "1h", "--reason", "x"}, []string{"expected one SOURCE"}},
		{[]string{"add", "0.0.0.0/0", "--ttl", "1h", "--reason", "x"}, []string{"use --allow"}},
		{[]string{"add", "203.0.113.7", "--ttl", "1h"}, []string{"--reason is required"}},
		{[]string{"add", "203.0.113.7", "--ttl", "1h", "--reason", "x", "--admin", "nope"}, []string{`--admin "nope": expected HOST:PORT`}},
		{[]string{"list", "extra"}, []string{`unexpected argument "extra"`}},
		{[]string{"revoke"}, []string{"expected one grant ID"}},
		{[]string{"revoke", "g-1", "--keep"}, []string{"unknown flag: --keep"}},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.args), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := runGrantsEnv(tc.args, &stdout, &stderr, func(string) string { return "" })
			require.Equal(t, exitUsage, code, "stderr: %s", stderr.String())
			for _, w := range tc.want {
				require.Contains(t, stderr.String(), w)
			}
			require.Empty(t, stdout.String())
		})
	}
	var stdout bytes.Buffer
	require.Equal(t, exitOK, runGrantsEnv([]string{"request", "--help"}, &stdout, &bytes.Buffer{}, nil))
	require.Contains(t, stdout.String(), "--gitlab")

	// Through the binary, a usage error is exit 2 too.
	code, _, stderr := runGrantsBinary(t, nil, "request")
	require.Equal(t, exitUsage, code)
	require.Contains(t, stderr, "--url is required")
}
