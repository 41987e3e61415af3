package gateway

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/fielderr"
)

// flagText renders err as the command line names the fields.
func flagText(err error) string {
	return fielderr.Render(err, fielderr.Names{FieldListen: "--listen", FieldUpstream: "--upstream", FieldAllowRemoteUpstream: "--allow-remote-upstream"})
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
				require.Contains(t, flagText(err), tc.wantErr)
				require.Contains(t, flagText(err), "--listen")
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
				require.Contains(t, flagText(err), tc.wantErr)
				require.True(t, strings.HasPrefix(flagText(err), "--upstream"), flagText(err))
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.network, up.Network)
			require.Equal(t, tc.address, up.Address)
		})
	}
}

// Without --allow-remote-upstream, a TCP upstream is checked again at every
// dial (proxy.Upstream.LoopbackOnly): the start-time check only saw what a
// name resolved to then.
func TestParseUpstreamLoopbackOnly(t *testing.T) {
	for _, tc := range []struct {
		spec        string
		allowRemote bool
		want        bool
	}{
		{"localhost:5432", false, true},
		{"127.0.0.1:5432", false, true},
		{"[::1]:5432", false, true},
		{"localhost:5432", true, false},
		{"10.1.2.3:5432", true, false},
		{"/var/run/postgresql:5432", false, false},
	} {
		up, err := parseUpstream(tc.spec, tc.allowRemote)
		require.NoError(t, err, tc.spec)
		require.Equal(t, tc.want, up.LoopbackOnly, "%s (allow remote %v)", tc.spec, tc.allowRemote)
	}
}
