package grantapi

import (
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/time/rate"
)

func TestParseBody(t *testing.T) {
	t.Parallel()
	tests := []struct {
		body    string
		want    time.Duration
		wantErr string
	}{
		{"", 0, ""},
		{" \r\n\t", 0, ""},
		{"{}", 0, ""},
		{`{"ttl":"20m"}`, 20 * time.Minute, ""},
		{` { "ttl" : "1h30m" } `, 90 * time.Minute, ""},
		{`{"ttl":"1s"}`, time.Second, ""},
		{`{"ttl":"999ms"}`, 0, "at least 1s"},
		{`{"ttl":""}`, 0, "at least 1s"},
		{`{"ttl":null}`, 0, "must be a string"},
		{`{"ttl":{"m":20}}`, 0, "must be a string"},
		{`{"TTL":"20m"}`, 0, `only "ttl"`}, // keys are exact, unlike encoding/json's default
		{`{"ttl":"20m","ttl":"20m"}`, 0, "twice"},
		{`{"ttl":"20m"}x`, 0, "after the JSON object"},
		{`{"ttl":"20m"}{}`, 0, "after the JSON object"},
		{`null`, 0, "JSON object"},
		{`"20m"`, 0, "JSON object"},
		{`{"ttl":"20m",}`, 0, "not valid JSON"},
		{`{"ttl" "20m"}`, 0, "not valid JSON"},
		{`{"ttl":"` + strings.Repeat("9", 100) + `h"}`, 0, "..."},
	}
	for _, tc := range tests {
		got, err := parseBody([]byte(tc.body))
		if tc.wantErr != "" {
			require.ErrorContains(t, err, tc.wantErr, "%q", tc.body)
			continue
		}
		require.NoError(t, err, "%q", tc.body)
		require.Equal(t, tc.want, got, "%q", tc.body)
	}
}

func TestSourceLimiter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	l := newSourceLimiter(rate.Every(time.Minute), 2, 3)
	a := netip.MustParseAddr("192.0.2.1")
	for range 2 {
		ok, _ := l.allow(a, now)
		require.True(t, ok)
	}
	ok, wait := l.allow(a, now)
	require.False(t, ok)
	require.Equal(t, time.Minute, wait)
	ok, wait = l.allow(a, now)
	require.False(t, ok)
	require.Equal(t, time.Minute, wait, "a refusal does not push the next token further away")
	ok, _ = l.allow(a, now.Add(time.Minute))
	require.True(t, ok)

	// IPv6 sources share a bucket per /64.
	ok, _ = l.allow(netip.MustParseAddr("2001:db8::1"), now)
	require.True(t, ok)
	ok, _ = l.allow(netip.MustParseAddr("2001:db8::ffff:2"), now)
	require.True(t, ok)
	ok, _ = l.allow(netip.MustParseAddr("2001:db8::3"), now)
	require.False(t, ok)
	ok, _ = l.allow(netip.MustParseAddr("2001:db8:0:1::1"), now)
	require.True(t, ok, "another /64")

	// The table is bounded.
	for i := range 100 {
		l.allow(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), now)
	}
	require.Equal(t, 3, l.lru.Len())
}

func TestBearerToken(t *testing.T) {
	t.Parallel()
	for hdr, want := range map[string]string{
		"Bearer abc":   "abc",
		"bearer abc":   "abc",
		"BEARER  abc ": "abc",
		"Basic abc":    "",
		"Bearer":       "",
		"Bearer   ":    "",
		"abc":          "",
	} {
		got, err := bearerToken(http.Header{"Authorization": {hdr}})
		if want == "" {
			require.Error(t, err, hdr)
			continue
		}
		require.NoError(t, err, hdr)
		require.Equal(t, want, got)
	}
	_, err := bearerToken(http.Header{"Authorization": {"Bearer a", "Bearer b"}})
	require.ErrorContains(t, err, "more than one")
}

func TestRetrySeconds(t *testing.T) {
	t.Parallel()
	require.EqualValues(t, 1, retrySeconds(0))
	require.EqualValues(t, 1, retrySeconds(time.Millisecond))
	require.EqualValues(t, 5, retrySeconds(4*time.Second+time.Millisecond))
	require.EqualValues(t, 86400, retrySeconds(time.Duration(1<<62)))
}
