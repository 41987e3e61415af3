package main

import (
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
		{"proxy protocol", append(base, "--proxy-protocol-from", "10.0.0.2", "--proxy-protocol-from", "10.1.0.0/24", "--proxy-protocol-timeout", "1s"), ""},
		{"negative proxy timeout", append(base, "--proxy-protocol-timeout", "-1s"), "--proxy-protocol-timeout must be positive"},
		{"redis", append(base, "--redis", "redis://127.0.0.1:6379/0", "--redis-prefix", "fleet-a"), ""},
		{"crowdsec key without lapi", append(base, "--crowdsec-key-file", "k"), "--crowdsec-key-file needs --crowdsec-lapi"},
		{"negative crowdsec interval", append(base, "--crowdsec-interval", "-1s"), "--crowdsec-interval must be positive"},
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
	require.Len(t, cfg.AllRoutes(), 1)
}

func TestConfigRoutes(t *testing.T) {
	cfg, err := parseServeArgs([]string{"--config", "testdata/routes.yaml"})
	require.NoError(t, err)
	require.NoError(t, cfg.validate())
	routes := cfg.AllRoutes()
	require.Len(t, routes, 2)
	app, reports := routes[0], routes[1]
	require.Equal(t, "app", app.Name)
	require.Equal(t, []string{"10.0.0.0/8"}, app.Allow, "inherits the top-level allowlist")
	require.Equal(t, "/etc/pgwarden/server.crt", app.TLSCert)
	require.Equal(t, []string{"192.168.1.0/24", "2001:db8::/32"}, reports.Allow)
	require.Equal(t, "/var/run/postgresql:5433", reports.Upstream)
	require.Equal(t, 5*time.Second, cfg.HandshakeTimeout)
}

func TestConfigSeveralGateways(t *testing.T) {
	cfg, err := parseServeArgs([]string{"--config", "testdata/several.yaml", "--redis-prefix", "staging"})
	require.NoError(t, err)
	require.NoError(t, cfg.validate())
	routes := cfg.AllRoutes()
	require.Len(t, routes, 2)
	require.Equal(t, []string{"10.9.0.2", "10.9.1.0/24"}, routes[0].ProxyProtocolFrom)
	require.Empty(t, routes[1].ProxyProtocolFrom)
	require.Equal(t, 2*time.Second, cfg.ProxyProtocolTimeout)
	require.Equal(t, "redis://:secret@10.9.0.5:6379/1", cfg.Redis)
	require.Equal(t, "staging", cfg.RedisPrefix, "the flag wins")
	require.Equal(t, "http://127.0.0.1:8080/", cfg.CrowdSecLAPI)
	require.Equal(t, "/etc/pgwarden/crowdsec.key", cfg.CrowdSecKeyFile)
	require.Equal(t, 30*time.Second, cfg.CrowdSecInterval)

	// The defaults.
	cfg, err = parseServeArgs([]string{"--listen", "127.0.0.1:6432"})
	require.NoError(t, err)
	require.Equal(t, 3*time.Second, cfg.ProxyProtocolTimeout)
	require.Equal(t, "pgwarden", cfg.RedisPrefix)
	require.Equal(t, 10*time.Second, cfg.CrowdSecInterval)
}
