package check

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/pgtest"
)

// netnsEnv marks the copy of this test that runs inside its own network
// namespace.
const netnsEnv = "PGWARDEN_CHECK_IN_NETNS"

// TestCheckRealAddresses runs the exposure check the way it runs on a
// server, with nothing stood in: this host's addresses from its interfaces
// and the wildcard from the kernel's socket table. So that no traffic
// leaves the machine, the test runs itself again in a network namespace of
// its own (unshare -n, as root) that has loopback and one veth interface
// with a documentation address, 198.51.100.1; there a postgres started
// with listen_addresses = '*' must be a FAIL naming that address and the
// wildcard, and one on loopback only must pass.
func TestCheckRealAddresses(t *testing.T) {
	if os.Getenv(netnsEnv) == "" {
		unshare, err := exec.LookPath("unshare")
		if err != nil {
			t.Skip("unshare (util-linux) is not installed")
		}
		if _, err := exec.LookPath("ip"); err != nil {
			t.Skip("ip (iproute2) is not installed")
		}
		script := `set -e
ip link set lo up
ip link add v0 type veth peer name v1
ip addr add 198.51.100.1/24 dev v0
ip link set v0 up
ip link set v1 up
exec "$@"`
		cmd := exec.Command(unshare, "--net", "sh", "-c", script, "sh", os.Args[0], "-test.run", "^TestCheckRealAddresses$", "-test.count", "1", "-test.v")
		cmd.Env = append(os.Environ(), netnsEnv+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil && strings.Contains(string(out), "unshare failed") && os.Getenv("CI") == "" {
			t.Skipf("cannot make a network namespace here: %s", out)
		}
		require.NoError(t, err, "in the namespace:\n%s", out)
		require.Contains(t, string(out), "--- PASS: TestCheckRealAddresses")
		return
	}

	addrs, err := hostAddrs()
	require.NoError(t, err)
	require.Equal(t, "198.51.100.1", joinAddrs(addrs), "the namespace's one outside address")

	open := pgtest.Start(t, pgtest.WithConf("listen_addresses", "*"))
	f := newFixture(t, open.Addr())
	rep := Run(f.cfg, Options{Env: Env{PostgresConfs: []string{}}})
	requireOne(t, rep, "exposure", Fail,
		fmt.Sprintf("postgres accepts connections on 198.51.100.1:%d", open.Port),
		fmt.Sprintf("a server listens on 0.0.0.0:%d, [::]:%d, every address of this host", open.Port, open.Port),
		"listen_addresses = 'localhost'")

	local := pgtest.Start(t)
	f = newFixture(t, local.Addr())
	rep = Run(f.cfg, Options{Env: Env{PostgresConfs: []string{}}})
	requireOne(t, rep, "exposure", OK, fmt.Sprintf("port %d refuses connections on 198.51.100.1", local.Port))
	requireOne(t, rep, "other-postgres", OK, "no other postgres answers on ports 5432-5439 of 198.51.100.1")
}
