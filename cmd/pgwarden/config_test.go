package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseServeArgsErrors(t *testing.T) {
	base := []string{"--listen", "127.0.0.1:6432", "--upstream", "127.0.0.1:5432", "--allow", "127.0.0.1", "--tls-cert", "c", "--tls-key", "k"}
	without := func(flag string) []string {
		var out []string
		for i := 0; i < len(base); i += 2 {
			if base[i] != flag {
				out = append(out, base[i], base[i+1])
			}
		}
		return out
	}
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"ok", base, ""},
		{"no allowlist", without("--allow"), "no allowlist: add --allow CIDR"},
		{"no listen", without("--listen"), "--listen is required"},
		{"no upstream", without("--upstream"), "--upstream is required"},
		{"no cert", without("--tls-cert"), "--tls-cert and --tls-key are required"},
		{"no key", without("--tls-key"), "--tls-cert and --tls-key are required"},
		{"bad log format", append(base, "--log-format", "xml"), `--log-format "xml": use json or console`},
		{"bad log level", append(base, "--log-level", "loud"), `--log-level "loud"`},
		{"auth shorter than handshake", append(base, "--auth-timeout", "1s"), "--auth-timeout (1s) must be at least --handshake-timeout (10s)"},
		{"zero step timeout", append(base, "--auth-step-timeout", "0s"), "--auth-step-timeout must be positive"},
		{"zero upstream startups", append(base, "--max-upstream-startups", "0"), "--max-upstream-startups must be at least 1"},
		{"unknown flag", append(base, "--bogus"), "unknown flag: --bogus"},
		{"bad duration", append(base, "--drain-timeout", "soon"), "drain-timeout"},
		{"stray argument", append(base, "extra"), `unexpected argument "extra"`},
		{"missing config file", append(base, "--config", "testdata/nope.yaml"), "--config testdata/nope.yaml: reading"},
		{"unknown yaml key", append(base, "--config", "testdata/unknown-key.yaml"), `unknown key "upstrem"`},
		{"relay goroutines", append(base, "--relay", "goroutines"), ""},
		{"relay auto", append(base, "--relay", "auto"), ""},
		{"relay loop", append(base, "--relay", "loop"), ""},
		{"bad relay", append(base, "--relay", "epoll"), `--relay "epoll": use auto, loop or goroutines`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parseServeArgs(tc.args)
			if err == nil {
				err = cfg.validate()
			}
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.wantErr)
		})
	}
}

func TestConfigFileAndFlagPrecedence(t *testing.T) {
	cfg, err := parseServeArgs([]string{"--config", "testdata/single.yaml", "--listen", "127.0.0.1:7000", "--log-format", "json"})
	require.NoError(t, err)
	require.NoError(t, cfg.validate())
	// A flag replaces the file's whole list.
	require.Equal(t, []string{"127.0.0.1:7000"}, cfg.Route.Listen)
	require.Equal(t, "json", cfg.LogFormat)
	// The rest comes from the file.
	require.Equal(t, "127.0.0.1:5432", cfg.Route.Upstream)
	require.Equal(t, []string{"127.0.0.1"}, cfg.Route.Allow)
	require.Equal(t, 30*time.Second, cfg.AuthTimeout)
	require.Len(t, cfg.routes(), 1)
}

func TestConfigRoutes(t *testing.T) {
	cfg, err := parseServeArgs([]string{"--config", "testdata/routes.yaml"})
	require.NoError(t, err)
	require.NoError(t, cfg.validate())
	routes := cfg.routes()
	require.Len(t, routes, 2)
	app, reports := routes[0], routes[1]
	require.Equal(t, "app", app.Name)
	require.Equal(t, []string{"10.0.0.0/8"}, app.Allow, "inherits the top-level allowlist")
	require.Equal(t, "/etc/pgwarden/server.crt", app.TLSCert)
	require.Equal(t, []string{"192.168.1.0/24", "2001:db8::/32"}, reports.Allow)
	require.Equal(t, "/var/run/postgresql:5433", reports.Upstream)
	require.Equal(t, 5*time.Second, cfg.HandshakeTimeout)
}

func TestResolveListen(t *testing.T) {
	tests := []struct {
		spec    string
		want    []string
		wantErr string
	}{
		{spec: "127.0.0.1:5432", want: []string{"127.0.0.1:5432"}},
		{spec: "[::1]:5432", want: []string{"[::1]:5432"}},
		{spec: `{{ GetAllInterfaces | include "flags" "loopback" | include "type" "IPv4" | attr "address" }}:6000`, want: []string{"127.0.0.1:6000"}},
		{spec: `{{ GetInterfaceIP "^no-such-interface$" }}:5432`, wantErr: "rendered no address"},
		{spec: `{{ GetAllInterfaces | include "flags" "loopback" | include "type" "IPv4" | attr "name" }}:5432`, wantErr: "not an IP address"},
		{spec: "127.0.0.1", wantErr: "expected HOST:PORT"},
		{spec: "127.0.0.1:http", wantErr: "not a number"},
		{spec: "{{ GetPrivateIP }}", wantErr: "expected :PORT after the template"},
		{spec: "no-such-host.invalid:5432", wantErr: "neither an IP address nor a name that resolves"},
	}
	for _, tc := range tests {
		t.Run(tc.spec, func(t *testing.T) {
			got, err := resolveListen(tc.spec)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				require.Contains(t, err.Error(), "--listen")
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestParseUpstreamSocketDirectory(t *testing.T) {
	dir := t.TempDir()
	up, err := parseUpstream(dir, false)
	require.NoError(t, err)
	require.Equal(t, filepath.Join(dir, ".s.PGSQL.5432"), up.Address, "empty directory: libpq's default port")

	require.NoError(t, os.WriteFile(filepath.Join(dir, ".s.PGSQL.6543"), nil, 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, ".s.PGSQL.6543.lock"), nil, 0o600))
	up, err = parseUpstream(dir, false)
	require.NoError(t, err)
	require.Equal(t, filepath.Join(dir, ".s.PGSQL.6543"), up.Address, "the one socket there, whatever its port")

	require.NoError(t, os.WriteFile(filepath.Join(dir, ".s.PGSQL.7000"), nil, 0o600))
	_, err = parseUpstream(dir, false)
	require.ErrorContains(t, err, "several postgres sockets")
	up, err = parseUpstream(dir+":7000", false)
	require.NoError(t, err)
	require.Equal(t, filepath.Join(dir, ".s.PGSQL.7000"), up.Address)
}

func TestParseUpstream(t *testing.T) {
	tests := []struct {
		spec        string
		allowRemote bool
		network     string
		address     string
		wantErr     string
	}{
		{spec: "127.0.0.1:5432", network: "tcp", address: "127.0.0.1:5432"},
		{spec: "[::1]:5432", network: "tcp", address: "[::1]:5432"},
		{spec: "localhost:5432", network: "tcp", address: "localhost:5432"},
		{spec: "/var/run/postgresql/.s.PGSQL.5433", network: "unix", address: "/var/run/postgresql/.s.PGSQL.5433"},
		{spec: "/var/run/postgresql:5433", network: "unix", address: "/var/run/postgresql/.s.PGSQL.5433"},
		{spec: "unix:/nonexistent/pgwarden-test", network: "unix", address: "/nonexistent/pgwarden-test/.s.PGSQL.5432"},
		{spec: "10.1.2.3:5432", wantErr: "not a loopback address"},
		{spec: "10.1.2.3:5432", allowRemote: true, network: "tcp", address: "10.1.2.3:5432"},
		{spec: "127.0.0.1", wantErr: "expected HOST:PORT"},
		{spec: "127.0.0.1:0", wantErr: "not a number from 1 to 65535"},
		{spec: "/tmp:abc", wantErr: "not a number"},
	}
	for _, tc := range tests {
		t.Run(tc.spec, func(t *testing.T) {
			up, err := parseUpstream(tc.spec, tc.allowRemote)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				require.True(t, strings.HasPrefix(err.Error(), "--upstream"), err.Error())
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.network, up.Network)
			require.Equal(t, tc.address, up.Address)
		})
	}
}
