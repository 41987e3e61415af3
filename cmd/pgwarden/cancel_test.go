package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/proxy"
)

func TestCancelFlags(t *testing.T) {
	base := []string{"--listen", "127.0.0.1:6432", "--upstream", "127.0.0.1:5432", "--allow", "127.0.0.1", "--tls-cert", "c", "--tls-key", "k"}
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"defaults", nil, ""},
		{"plaintext allow", []string{"--cancel-plaintext", "allow"}, ""},
		{"plaintext deny", []string{"--cancel-plaintext", "deny"}, ""},
		{"plaintext auto", []string{"--cancel-plaintext", "auto"}, ""},
		{"never count guesses", []string{"--cancel-unknown-per-failure", "0"}, ""},
		{"bad plaintext", []string{"--cancel-plaintext", "maybe"}, `--cancel-plaintext "maybe": use allow, deny or auto`},
		{"zero rate", []string{"--cancel-rate", "0"}, "--cancel-rate must be positive and --cancel-burst at least 1"},
		{"zero burst", []string{"--cancel-burst", "0"}, "--cancel-rate must be positive and --cancel-burst at least 1"},
		{"negative per failure", []string{"--cancel-unknown-per-failure", "-1"}, "--cancel-unknown-per-failure must not be negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parseServeArgs(append(append([]string(nil), base...), tc.args...))
			require.NoError(t, err)
			err = cfg.validate()
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.wantErr)
		})
	}
	cfg, err := parseServeArgs(base)
	require.NoError(t, err)
	require.Equal(t, float64(proxy.DefaultCancelRate), cfg.CancelRate)
	require.Equal(t, proxy.DefaultCancelBurst, cfg.CancelBurst)
	require.Equal(t, proxy.DefaultCancelUnknownPerFailure, cfg.CancelUnknownPerFailure)
}

// --cancel-plaintext is a route key: a route inherits the top-level value
// unless it sets its own, and a bad value names its route.
func TestCancelPlaintextPerRoute(t *testing.T) {
	file := filepath.Join(t.TempDir(), "routes.yaml")
	require.NoError(t, os.WriteFile(file, []byte(`
upstream: 127.0.0.1:5432
allow: [127.0.0.1]
tls-cert: c
tls-key: k
cancel-plaintext: deny
routes:
  - name: a
    listen: ["127.0.0.1:6432"]
  - name: b
    listen: ["127.0.0.1:6433"]
    cancel-plaintext: allow
`), 0o600))
	cfg, err := parseServeArgs([]string{"--config", file})
	require.NoError(t, err)
	require.NoError(t, cfg.validate())
	got := map[string]string{}
	for _, r := range cfg.AllRoutes() {
		got[r.Name] = r.CancelPlaintext
	}
	require.Equal(t, map[string]string{"a": "deny", "b": "allow"}, got)

	require.NoError(t, os.WriteFile(file, []byte(`
upstream: 127.0.0.1:5432
allow: [127.0.0.1]
tls-cert: c
tls-key: k
routes:
  - name: a
    listen: ["127.0.0.1:6432"]
    cancel-plaintext: sometimes
`), 0o600))
	cfg, err = parseServeArgs([]string{"--config", file})
	require.NoError(t, err)
	require.ErrorContains(t, cfg.validate(), `route a: --cancel-plaintext "sometimes": use allow, deny or auto`)
}
