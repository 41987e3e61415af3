package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

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
