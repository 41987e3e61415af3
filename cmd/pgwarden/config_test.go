package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/gateway"
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
		{"missing config file", append(base, "--config", "testdata/nope.yaml"), "--config testdata/nope.yaml: no such file"},
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
		{"metrics on every interface", append(base, "--metrics-listen", "0.0.0.0:9188"), ""},
		{"metrics on a private address", append(base, "--metrics-listen", "10.0.0.5:9188"), ""},
		{"bad metrics address", append(base, "--metrics-listen", "9188"), `--metrics-listen "9188": expected HOST:PORT`},
		{"admin stays loopback", append(base, "--admin", "0.0.0.0:9187"), `--admin "0.0.0.0:9187": the admin endpoint must listen on a loopback address`},
		{"ban-ignore-self off", append(base, "--ban-ignore-self=false"), ""},
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

// TestConfigFileRelativePaths: a relative path in the file starts in the
// file's directory, wherever serve runs; one on the command line starts in
// the working directory.
func TestConfigFileRelativePaths(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "pgwarden.yaml")
	require.NoError(t, os.WriteFile(file, []byte(`
tls-cert: tls/server.crt
tls-key: /etc/pgwarden/server.key
tls-client-ca: ../ca/ca.crt
tls-map-file: ident.map
tls-client-crl: ./crl.pem
ban-state: state/bans.db
upstream: ./run:5432
listen: [127.0.0.1:6432]
allow: [127.0.0.1]
routes:
  - name: other
    listen: [127.0.0.1:6433]
    upstream: unix:./sock/.s.PGSQL.5433
    tls-cert: other.crt
  - name: tcp
    listen: [127.0.0.1:6434]
    upstream: localhost:5434
`), 0o600))
	cfg, err := parseServeArgs([]string{"--config", file})
	require.NoError(t, err)
	require.Equal(t, filepath.Join(dir, "tls/server.crt"), cfg.Route.TLSCert)
	require.Equal(t, "/etc/pgwarden/server.key", cfg.Route.TLSKey, "absolute paths are kept")
	require.Equal(t, filepath.Join(filepath.Dir(dir), "ca/ca.crt"), cfg.Route.TLSClientCA)
	require.Equal(t, filepath.Join(dir, "ident.map"), cfg.Route.TLSMapFile)
	require.Equal(t, filepath.Join(dir, "crl.pem"), cfg.Route.TLSClientCRL)
	require.Equal(t, filepath.Join(dir, "state/bans.db"), cfg.BanState)
	require.Equal(t, filepath.Join(dir, "run")+":5432", cfg.Route.Upstream)
	require.Equal(t, "unix:"+filepath.Join(dir, "sock/.s.PGSQL.5433"), cfg.Routes[0].Upstream)
	require.Equal(t, filepath.Join(dir, "other.crt"), cfg.Routes[0].TLSCert)
	require.Equal(t, "localhost:5434", cfg.Routes[1].Upstream, "HOST:PORT is not a path")

	// The same keys as flags stay relative to the working directory, and
	// replace the file's values.
	cfg, err = parseServeArgs([]string{"--config", file, "--tls-cert", "tls/server.crt", "--ban-state", "bans.db", "--upstream", "./run:5432"})
	require.NoError(t, err)
	require.Equal(t, "tls/server.crt", cfg.Route.TLSCert)
	require.Equal(t, "bans.db", cfg.BanState)
	require.Equal(t, "./run:5432", cfg.Route.Upstream)

	// A relative --config path: its directory, made absolute.
	t.Chdir(filepath.Dir(dir))
	cfg, err = parseServeArgs([]string{"--config", filepath.Join(filepath.Base(dir), "pgwarden.yaml")})
	require.NoError(t, err)
	require.Equal(t, filepath.Join(dir, "tls/server.crt"), cfg.Route.TLSCert)
}

// TestPathFlagsAreDeclaredAsPaths: every flag whose name says it holds a
// file is declared with pathVar, so that a relative path in the config file
// starts in the file's directory. A flag that fails here was declared with
// StringVar: declare it with pathVar.
func TestPathFlagsAreDeclaredAsPaths(t *testing.T) {
	looksLikePath := func(name string) bool {
		for _, suffix := range []string{"-cert", "-key", "-ca", "-crl", "-file", "-state", "-dir", "-path"} {
			if strings.HasSuffix(name, suffix) {
				return true
			}
		}
		return false
	}
	check := func(fs *pflag.FlagSet) {
		fs.VisitAll(func(f *pflag.Flag) {
			if looksLikePath(f.Name) && f.Name != "config" && f.Value.Type() == "string" && len(f.Annotations[pathAnnotation]) == 0 {
				t.Errorf("--%s names a file but is not declared with pathVar", f.Name)
			}
		})
	}
	check(newServeFlags(&serveConfig{}))
	fs := pflag.NewFlagSet("route", pflag.ContinueOnError)
	routeFlags(fs, &gateway.RouteConfig{})
	check(fs)
	// And the ones known today are.
	serve := newServeFlags(&serveConfig{})
	for _, name := range []string{"tls-cert", "tls-key", "tls-client-ca", "tls-map-file", "tls-client-crl", "ban-state", "upstream"} {
		require.NotEmpty(t, serve.Lookup(name).Annotations[pathAnnotation], name)
	}
}

func TestConfigFileErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
		return p
	}
	tests := []struct {
		name, body, want string
	}{
		{"unknown key", "listen: [127.0.0.1:6432]\nupstrem: 127.0.0.1:5432\n", `line 2: unknown key "upstrem" (keys are the flag names`},
		{"bad yaml", "listen: [127.0.0.1:6432\nupstream: x\n", "not valid YAML: line "},
		{"not a map", "- listen\n- upstream\n", "line 1: the file must be a map of keys to values"},
		{"duplicate key", "allow: [10.0.0.1]\nallow: [10.0.0.2]\n", `line 2: key "allow" given twice (first on line 1)`},
		{"list for a single value", "upstream: [a, b]\n", "line 1: upstream takes one value, not a list"},
		{"map value", "upstream: {a: b}\n", "line 1: upstream must be a value or a list of values"},
		{"bad duration", "auth-timeout: soon\n", `line 1: auth-timeout: invalid argument "soon"`},
		{"route unknown key", "routes:\n  - name: a\n    lisen: [x]\n", `line 3: routes[0]: unknown key "lisen" (a route takes`},
		{"routes not a list", "routes: {name: a}\n", "line 1: routes must be a list"},
		{"route not a map", "routes:\n  - 127.0.0.1\n", "line 2: routes[0] must be a map"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseServeArgs([]string{"--config", write(strings.ReplaceAll(tc.name, " ", "-")+".yaml", tc.body)})
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.want)
			require.NotContains(t, err.Error(), "\n", "one line")
			require.Equal(t, exitUsage, exitCode(err))
		})
	}
	// An empty file sets nothing.
	_, err := parseServeArgs([]string{"--config", write("empty.yaml", "# nothing yet\n")})
	require.NoError(t, err)
}
