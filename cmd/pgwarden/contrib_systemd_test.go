package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// unitDirectives reads a unit file's KEY=VALUE lines (all values of a key,
// in order).
func unitDirectives(t *testing.T, path string) map[string][]string {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	out := map[string][]string{}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		require.True(t, ok, "%s: %q is not KEY=VALUE", path, line)
		out[k] = append(out[k], v)
	}
	return out
}

// TestContribSystemdUnits: the units in contrib/systemd say what the
// README promises (Type=notify, reload by SIGHUP, a watchdog, a dedicated
// user, the hardening, a state directory for --ban-state, LimitNOFILE, no
// capability for a port above 1024), their pgwarden command line parses,
// and `systemd-analyze verify` accepts them without a word when it is
// installed (it warns about what it ignores but still exits 0, so any
// output fails the test).
func TestContribSystemdUnits(t *testing.T) {
	dir := filepath.Join("..", "..", "contrib", "systemd")
	service := unitDirectives(t, filepath.Join(dir, "pgwarden.service"))
	want := map[string]string{
		"Type":                    "notify",
		"ExecReload":              "/bin/kill -HUP $MAINPID",
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"StateDirectory":          "pgwarden",
		"LimitNOFILE":             "65536",
		"User":                    "pgwarden",
		"CapabilityBoundingSet":   "",
		"AmbientCapabilities":     "",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
	}
	for k, v := range want {
		require.Equal(t, []string{v}, service[k], k)
	}
	require.Regexp(t, `^[0-9]+s$`, service["WatchdogSec"][0])

	// The command line is serve's: every flag exists, the ban state is in
	// the state directory.
	exec0 := strings.Fields(service["ExecStart"][0])
	require.Equal(t, "/usr/local/bin/pgwarden", exec0[0])
	require.Equal(t, "serve", exec0[1])
	require.Contains(t, exec0, "%S/pgwarden/state.db")
	fs := newServeFlags(&serveConfig{})
	for _, a := range exec0[2:] {
		if name, ok := strings.CutPrefix(a, "--"); ok {
			require.NotNil(t, fs.Lookup(name), "ExecStart flag %s", a)
		}
	}

	socket := unitDirectives(t, filepath.Join(dir, "pgwarden.socket"))
	require.Equal(t, []string{"pgwarden.service"}, socket["Service"])
	name := socket["FileDescriptorName"][0]
	data, err := os.ReadFile(filepath.Join(dir, "pgwarden.socket"))
	require.NoError(t, err)
	require.Contains(t, string(data), `listen: ["systemd:`+name+`"]`, "the socket's comment names its FileDescriptorName")

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed; the units were checked by hand only")
	}
	// verify checks that ExecStart's program exists and is executable: point
	// it at the binary under test.
	tmp := t.TempDir()
	for _, f := range []string{"pgwarden.service", "pgwarden.socket"} {
		data, err := os.ReadFile(filepath.Join(dir, f))
		require.NoError(t, err)
		text := regexp.MustCompile(`/usr/local/bin/pgwarden\b`).ReplaceAllString(string(data), pgwardenBinary(t))
		require.NoError(t, os.WriteFile(filepath.Join(tmp, f), []byte(text), 0o644))
	}
	out, err := exec.Command(analyze, "verify", "--man=no",
		filepath.Join(tmp, "pgwarden.service"), filepath.Join(tmp, "pgwarden.socket")).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Empty(t, strings.TrimSpace(string(out)))
}
