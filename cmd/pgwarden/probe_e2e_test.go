package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/certstest"
	"github.com/pgwarden/pgwarden/internal/fakepg"
	"github.com/pgwarden/pgwarden/internal/pgtest"
)

// runProbeBinary runs `pgwarden probe args...` and returns stdout and the exit
// status.
func runProbeBinary(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(pgwardenBinary(t), append([]string{"probe"}, args...)...)
	cmd.Env = append(psqlEnv(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	code := exitStatus(t, cmd.Run(), errb.String())
	t.Logf("pgwarden probe %s → %d\n%s%s", strings.Join(args, " "), code, out.String(), errb.String())
	return out.String(), code
}

// probeLine returns the line of layer in probe's text output.
func probeLine(t *testing.T, out, layer string) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == layer {
			return l
		}
	}
	t.Fatalf("no %s line in\n%s", layer, out)
	return ""
}

func TestProbeEndToEnd(t *testing.T) {
	pg := pgtest.Start(t)
	pki := newClientPKI(t)
	gw, _ := startServe(t, pg, pki, "127.0.0.1/32")
	mtls, _ := startServe(t, pg, pki, "127.0.0.1/32", "--tls-client-ca", pki.caFile)
	resets, _ := startServe(t, pg, pki, "127.0.0.2/32") // the probe comes from 127.0.0.1
	ca := []string{"--sslrootcert", pki.caFile}
	password := []string{"PROBE_PW=" + pg.Password, "WRONG_PW=not-" + pg.Password}
	closed := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	notTLS := fakepg.Start(t, fakepg.Config{Negotiation: fakepg.AnswerSThenGarbage})
	expiredPEM, expiredKey := pki.ca.ServerWith(t, []string{"localhost"}, certstest.Expired())
	expired := fakepg.Start(t, fakepg.Config{TLS: &tls.Config{Certificates: []tls.Certificate{certstest.KeyPair(t, expiredPEM, expiredKey)}}})
	queryFails := fakepg.Start(t, fakepg.Config{TLS: &tls.Config{Certificates: []tls.Certificate{pki.ca.ServerCertificate(t, "127.0.0.1")}}, QueryError: "57P01"})

	tests := []struct {
		name   string
		args   []string
		status int
		layer  string // the failing layer, or the layer to look at
		want   string
	}{
		{"all ok through the gateway", append([]string{gw, "--user", pg.User, "--database", pg.Database, "--password-env", "PROBE_PW"}, ca...), 0, "query", "SELECT 1 answered in"},
		{"resolve: unresolvable name", []string{"nonexistent.invalid:5432", "--timeout", "5s"}, 10, "resolve", "no such host"},
		{"tcp: closed port", []string{closed}, 11, "tcp", "refused"},
		{"tcp: reset by the allowlist", append([]string{resets}, ca...), 11, "tcp", "a reset right after connect is what an allowlist or a ban looks like"},
		{"negotiate: plaintext-only postgres", []string{pg.Addr()}, 12, "negotiate", "answered 'N'"},
		{"tls: S then not TLS", []string{notTLS.Addr()}, 13, "tls", "did not speak TLS"},
		{"certificate: wrong name", append([]string{gw, "--server-name", "db.example.com"}, ca...), 14, "certificate", `not valid for "db.example.com"`},
		{"certificate: expired", append([]string{expired.Addr(), "--server-name", "localhost"}, ca...), 14, "certificate", "expired"},
		{"certificate: unknown CA", []string{gw}, 14, "certificate", "--sslrootcert"},
		{"client-certificate: mTLS route without one", append([]string{mtls, "--user", pg.User, "--password-env", "PROBE_PW"}, ca...), 15, "client-certificate", "client certificate required"},
		{"client-certificate: accepted", append([]string{mtls, "--user", pg.User, "--database", pg.Database, "--password-env", "PROBE_PW", "--sslcert", pki.aliceCert, "--sslkey", pki.aliceKey}, ca...), 0, "client-certificate", "sent CN=alice: accepted"},
		{"auth: wrong password", append([]string{gw, "--user", pg.User, "--database", pg.Database, "--password-env", "WRONG_PW"}, ca...), 16, "auth", "28P01"},
		{"auth: no password given", append([]string{gw, "--user", pg.User, "--database", pg.Database}, ca...), 16, "auth", "--password-env"},
		{"query: SELECT 1 fails", append([]string{queryFails.Addr(), "--user", "alice"}, ca...), 17, "query", "57P01"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, status := runProbeBinary(t, password, tc.args...)
			require.Equal(t, tc.status, status, out)
			line := probeLine(t, out, tc.layer)
			if tc.status != 0 {
				require.Contains(t, line, " FAIL ")
			}
			require.Contains(t, line, tc.want)
			require.Equal(t, 8, strings.Count(out, "\n"), "one line per layer")
		})
	}

	t.Run("json", func(t *testing.T) {
		for _, tc := range []struct {
			args   []string
			status int
		}{
			{append([]string{gw, "--json", "--user", pg.User, "--database", pg.Database, "--password-env", "PROBE_PW"}, ca...), 0},
			{[]string{pg.Addr(), "--json"}, 12},
		} {
			out, status := runProbeBinary(t, password, tc.args...)
			require.Equal(t, tc.status, status)
			var got map[string]map[string]any
			require.NoError(t, json.Unmarshal([]byte(out), &got), out)
			require.Len(t, got, 8)
			for _, layer := range []string{"resolve", "tcp", "negotiate", "tls", "certificate", "client-certificate", "auth", "query"} {
				require.Contains(t, []any{"ok", "FAIL", "skip"}, got[layer]["status"], layer)
				require.NotEmpty(t, got[layer]["detail"], layer)
			}
			if tc.status == 0 {
				require.Equal(t, "ok", got["query"]["status"])
				require.Equal(t, "TLS 1.3", got["tls"]["version"])
				require.Equal(t, "postgresql", got["tls"]["alpn"])
			} else {
				require.Equal(t, "FAIL", got["negotiate"]["status"])
				require.Equal(t, "N", got["negotiate"]["reply"])
				require.Equal(t, "skip", got["tls"]["status"])
			}
		}
	})

	t.Run("usage errors exit 2", func(t *testing.T) {
		for _, args := range [][]string{
			nil, {"db.example.com"}, {"a:1", "b:2"}, {"db:5432", "--database", "x"}, {"db:5432", "--user", "u", "--password-env", "UNSET_PW"},
			{"db:5432", "--sslcert", "x"}, {"db:5432", "--sslrootcert", "/nonexistent"},
		} {
			_, status := runProbeBinary(t, nil, args...)
			require.Equal(t, 2, status, args)
		}
	})
}
