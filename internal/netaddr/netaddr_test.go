package netaddr

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPort(t *testing.T) {
	for _, tc := range []struct {
		in   string
		min  int
		want int
		ok   bool
	}{
		{"0", 0, 0, true}, {"0", 1, 0, false}, {"5432", 1, 5432, true}, {"65535", 0, 65535, true},
		{"65536", 0, 0, false}, {"-1", 0, 0, false}, {"+80", 0, 0, false}, {"", 0, 0, false}, {"80a", 0, 0, false},
	} {
		got, err := Port(tc.in, tc.min)
		require.Equal(t, tc.ok, err == nil, tc.in)
		require.Equal(t, tc.want, got, tc.in)
		if err != nil {
			require.Contains(t, err.Error(), `port "`+tc.in+`" is not a number from`)
		}
	}
}

func TestLoopbackIP(t *testing.T) {
	for in, want := range map[string]string{"127.0.0.1": "127.0.0.1", "127.9.9.9": "127.9.9.9", "::1": "::1", "::ffff:127.0.0.1": "127.0.0.1",
		"10.0.0.1": "", "::": "", "localhost": "", "fe80::1%lo": "", "": ""} {
		ip, ok := LoopbackIP(in)
		require.Equal(t, want != "", ok, in)
		if ok {
			require.Equal(t, want, ip.String(), in)
		}
	}
	require.True(t, IsLocalhost("LocalHost"))
	require.False(t, IsLocalhost("localhost."))
}
