package proxyproto

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestTrusted(t *testing.T) {
	t.Parallel()
	tr, err := ParseTrusted([]string{"10.0.0.0/8", " 2001:db8::1 ", "127.0.0.2"})
	require.NoError(t, err)
	require.Equal(t, 3, tr.Len())
	require.Empty(t, tr.Warnings())
	tcp := func(s string) net.Addr { return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)) }
	tests := []struct {
		peer net.Addr
		want bool
	}{
		{tcp("10.1.2.3:5000"), true},
		{tcp("[::ffff:10.1.2.3]:5000"), true}, // dual-stack socket
		{tcp("127.0.0.2:1"), true},
		{tcp("127.0.0.1:1"), false},
		{tcp("11.0.0.1:1"), false},
		{tcp("[2001:db8::1]:1"), true},
		{tcp("[2001:db8::2]:1"), false},
		{&net.UnixAddr{Name: "/tmp/s", Net: "unix"}, false},
		{nil, false},
	}
	for _, tc := range tests {
		name := "<nil>"
		if tc.peer != nil {
			name = tc.peer.String()
		}
		if got := tr.Contains(tc.peer); got != tc.want {
			t.Errorf("Contains(%s) = %v, want %v", name, got, tc.want)
		}
	}
}

func TestTrustedEmptyAndNil(t *testing.T) {
	t.Parallel()
	tr, err := ParseTrusted(nil)
	require.NoError(t, err)
	require.Nil(t, tr)
	// Blank entries are errors, as for --allow.
	_, err = ParseTrusted([]string{" "})
	require.ErrorContains(t, err, "proxy-protocol-from")
	// A nil Trusted trusts nobody and answers every method.
	require.False(t, tr.Contains(&net.TCPAddr{IP: net.IPv4(10, 0, 0, 1)}))
	require.Zero(t, tr.Len())
	require.Empty(t, tr.String())
	require.Empty(t, tr.Warnings())
}

func TestTrustedErrorsAndWarnings(t *testing.T) {
	t.Parallel()
	_, err := ParseTrusted([]string{"10.0.0.0/33"})
	require.ErrorContains(t, err, "proxy-protocol-from")
	_, err = ParseTrusted([]string{"010.0.0.1"})
	require.ErrorContains(t, err, "proxy-protocol-from")

	tr, err := ParseTrusted([]string{"0.0.0.0/0"})
	require.NoError(t, err)
	w := strings.Join(tr.Warnings(), "\n")
	require.Contains(t, w, "any peer can then claim any client address")
}
