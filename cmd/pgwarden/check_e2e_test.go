package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/check"
	"github.com/pgwarden/pgwarden/internal/pgtest"
)

// checkEnv treats 127.0.0.2 as this host's outside address and looks for
// no postgres left behind (tests never dial this host's real addresses;
// internal/check's TestCheckRealAddresses does, in a namespace of its own).
func checkEnv() check.Env {
	return check.Env{
		HostAddrs:     func() ([]netip.Addr, error) { return []netip.Addr{netip.MustParseAddr("127.0.0.2")}, nil },
		PostgresPorts: []int{},
		PostgresConfs: []string{},
	}
}

// TestCheckCommand: `pgwarden check` takes serve's flags and file; exit 0
// with only ok and WARN lines, 1 with a FAIL (a configuration problem is a
// FAIL of the config check, in serve's words), 2 for a command line that
// does not parse; --json is the same report as one object.
func TestCheckCommand(t *testing.T) {
	pg := pgtest.Start(t, pgtest.WithConf("listen_addresses", "127.0.0.1,127.0.0.2"))
	certFile, keyFile, caFile := tlsFiles(t)
	dir := t.TempDir()
	base := []string{"--listen", "127.0.0.1:0", "--allow", "127.0.0.1", "--tls-cert", certFile, "--tls-key", keyFile,
		"--ban-state", filepath.Join(dir, "state.db"), "--sslrootcert", caFile}
	run := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := runCheckEnv(args, &stdout, &stderr, checkEnv())
		return code, stdout.String(), stderr.String()
	}

	// postgres also listens on the host's "outside" address: FAIL, exit 1.
	code, out, _ := run(append(base, "--upstream", pg.Addr())...)
	require.Equal(t, 1, code, out)
	require.Regexp(t, fmt.Sprintf(`(?m)^exposure\s+FAIL\s+postgres accepts connections on 127\.0\.0\.2:%d.*; fix: in postgresql.conf set listen_addresses = 'localhost'`, pg.Port), out)
	require.Regexp(t, `(?m)^config\s+ok\s+valid: 1 route, 1 listen address$`, out)
	require.Regexp(t, `(?m)^cert-expiry\s+WARN\s+expires in 0 days`, out, "certstest certificates live a day")
	require.Regexp(t, `(?m)^\d+ ok, 1 WARN, 1 FAIL$`, out)

	// Through the socket directory the exposure is not checked (no TCP
	// upstream): only the WARN remains, exit 0.
	code, out, _ = run(append(base, "--upstream", pg.SocketDir)...)
	require.Equal(t, 0, code, out)

	// A configuration serve refuses: config FAIL lines with serve's words.
	code, out, _ = run("--listen", "127.0.0.1:0", "--upstream", pg.Addr(), "--allow", "010.0.0.1", "--max-startups", "0")
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "config             FAIL  --tls-cert and --tls-key are required: TLS is mandatory")
	require.Contains(t, out, "config             FAIL  --max-startups and --max-startups-per-source must be at least 1")

	// The YAML file is read as serve reads it; an unknown key is its FAIL.
	cfgFile := filepath.Join(dir, "bad.yaml")
	require.NoError(t, os.WriteFile(cfgFile, []byte("listen: [127.0.0.1:0]\njson: true\n"), 0o600))
	code, out, _ = run("--config", cfgFile)
	require.Equal(t, 1, code, out)
	require.Contains(t, out, `config             FAIL  --config `+cfgFile+`: line 2: unknown key "json"`)

	// A command line that does not parse: exit 2, as serve.
	code, _, errOut := run("--no-such-flag")
	require.Equal(t, 2, code)
	require.Contains(t, errOut, "pgwarden: unknown flag: --no-such-flag (pgwarden check --help lists the flags)")

	// --json: the same checks.
	code, out, _ = run(append(base, "--upstream", pg.Addr(), "--json")...)
	require.Equal(t, 1, code)
	var rep check.Report
	require.NoError(t, json.Unmarshal([]byte(out), &rep))
	require.Equal(t, 1, rep.Fail)
	require.Equal(t, 1, rep.Warn)
	var exposure check.Result
	for _, r := range rep.Results {
		if r.Check == "exposure" {
			exposure = r
		}
	}
	require.Equal(t, check.Fail, exposure.Status)
	require.Contains(t, exposure.Fix, "listen_addresses = 'localhost'")
}
