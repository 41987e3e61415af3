package crowdsec

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var ip = netip.MustParseAddr

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func requireBanned(t *testing.T, b *Bouncer, want bool, addrs ...string) {
	t.Helper()
	for _, a := range addrs {
		if got := b.Banned(ip(a)); got != want {
			t.Errorf("Banned(%s) = %v, want %v", a, got, want)
		}
	}
}

// TestStartupThenDeltas: the first pull asks for the full state and
// enforces bans on IPs and ranges (v4 and v6, any case), ignoring other
// types and scopes; the next pulls ask for deltas, which add and delete.
func TestStartupThenDeltas(t *testing.T) {
	t.Parallel()
	f := newFakeLAPI(t, "s3cret")
	f.set(func(f *fakeLAPI) {
		f.startup = body(t, []map[string]any{
			d(1, "ban", "Ip", "192.0.2.1", "3h59m58.123s"),
			d(2, "ban", "Ip", "2001:db8::1", "1h"),
			d(3, "ban", "Range", "10.0.0.0/8", "1h"),
			d(4, "ban", "Range", "2001:db8:1::/48", "1h"),
			d(5, "BAN", "ip", "198.51.100.7", "1h"),
			d(6, "ban", "range", "::ffff:203.0.113.0/120", "1h"),
			d(7, "captcha", "Ip", "192.0.2.2", "1h"),
			d(8, "ban", "Country", "FR", "1h"),
			d(9, "ban", "Ip", "not-an-ip", "1h"),
			d(10, "ban", "Ip", "192.0.2.3", "-5m"),       // already ended
			d(11, "ban", "Range", "172.16.5.4/12", "1h"), // host bits: masked
		}, nil)
	})
	b, _, _ := newBouncer(t, f, " s3cret\n")
	ctx := ctxT(t)
	require.False(t, b.Up())
	require.NoError(t, b.Pull(ctx))
	require.True(t, b.Up())
	require.Equal(t, 7, b.Decisions())
	requireBanned(t, b, true, "192.0.2.1", "::ffff:192.0.2.1", "2001:db8::1", "10.200.1.1", "2001:db8:1:ffff::9",
		"198.51.100.7", "203.0.113.77", "172.31.0.1")
	requireBanned(t, b, false, "192.0.2.2", "192.0.2.3", "192.0.2.4", "11.0.0.1", "2001:db8::2", "2001:db8:2::1", "172.32.0.1")
	require.False(t, b.Banned(netip.Addr{}))

	f.set(func(f *fakeLAPI) {
		f.deltas = []string{body(t,
			[]map[string]any{d(20, "ban", "Ip", "192.0.2.50", "10m")},
			[]map[string]any{d(3, "ban", "Range", "10.0.0.0/8", "-1s")})}
	})
	require.NoError(t, b.Pull(ctx))
	requireBanned(t, b, true, "192.0.2.50", "192.0.2.1")
	requireBanned(t, b, false, "10.200.1.1")

	// An empty delta ({"new": null, "deleted": null}) changes nothing.
	require.NoError(t, b.Pull(ctx))
	requireBanned(t, b, true, "192.0.2.50")

	reqs := f.reqs()
	require.Len(t, reqs, 3)
	require.Equal(t, "true", reqs[0].startup)
	require.Equal(t, "false", reqs[1].startup)
	require.Equal(t, "false", reqs[2].startup)
	for _, r := range reqs {
		require.Equal(t, "s3cret", r.key, "the key file is trimmed")
		require.Equal(t, "ip,range", r.scopes)
		require.Equal(t, "false", r.dedup, "every decision, not the longest per address")
		require.Equal(t, DefaultUserAgent, r.userAgent)
	}
}

// TestSeveralDecisionsOnOneIP: deleting one of two decisions on an address
// lifts only that decision.
func TestSeveralDecisionsOnOneIP(t *testing.T) {
	t.Parallel()
	f := newFakeLAPI(t, "k")
	f.set(func(f *fakeLAPI) {
		f.startup = body(t, []map[string]any{
			d(1, "ban", "Ip", "192.0.2.9", "1h"),
			d(2, "ban", "Ip", "192.0.2.9", "4h"),
			d(3, "ban", "Range", "192.0.2.0/24", "1h"),
		}, nil)
		f.deltas = []string{
			body(t, nil, []map[string]any{d(1, "ban", "Ip", "192.0.2.9", "0s")}),
			body(t, nil, []map[string]any{d(3, "ban", "Range", "192.0.2.0/24", "0s")}),
			body(t, nil, []map[string]any{d(2, "ban", "Ip", "192.0.2.9", "0s")}),
		}
	})
	b, _, _ := newBouncer(t, f, "k")
	ctx := ctxT(t)
	require.NoError(t, b.Pull(ctx))
	requireBanned(t, b, true, "192.0.2.9", "192.0.2.10")
	require.NoError(t, b.Pull(ctx))
	requireBanned(t, b, true, "192.0.2.9", "192.0.2.10")
	require.NoError(t, b.Pull(ctx))
	requireBanned(t, b, true, "192.0.2.9")
	requireBanned(t, b, false, "192.0.2.10")
	require.NoError(t, b.Pull(ctx))
	requireBanned(t, b, false, "192.0.2.9")
	require.Zero(t, b.Decisions())
}

// TestDecisionsExpire: a decision ends at its receipt plus its duration,
// by the bouncer's clock, without waiting for a pull; the longest of two
// decisions on one address counts.
func TestDecisionsExpire(t *testing.T) {
	t.Parallel()
	f := newFakeLAPI(t, "k")
	f.set(func(f *fakeLAPI) {
		f.startup = body(t, []map[string]any{
			d(1, "ban", "Ip", "192.0.2.1", "10m"),
			d(2, "ban", "Ip", "192.0.2.2", "10m"),
			d(3, "ban", "Ip", "192.0.2.2", "30m0.5s"),
		}, nil)
	})
	b, clk, _ := newBouncer(t, f, "k")
	require.NoError(t, b.Pull(ctxT(t)))
	clk.advance(9*time.Minute + 59*time.Second)
	requireBanned(t, b, true, "192.0.2.1", "192.0.2.2")
	clk.advance(time.Second)
	requireBanned(t, b, false, "192.0.2.1")
	requireBanned(t, b, true, "192.0.2.2")
	clk.advance(20*time.Minute + time.Second)
	requireBanned(t, b, false, "192.0.2.2")
	// The next pull drops the ended ones.
	require.NoError(t, b.Pull(ctxT(t)))
	require.Zero(t, b.Decisions())
}

// TestLAPIDownKeepsDecisions: while the LAPI fails, the decisions held stay
// in force, Up is false and the outage is logged once; the first pull
// after it asks for the full state again and replaces what was held.
func TestLAPIDownKeepsDecisions(t *testing.T) {
	t.Parallel()
	f := newFakeLAPI(t, "k")
	f.set(func(f *fakeLAPI) {
		f.startup = body(t, []map[string]any{d(1, "ban", "Ip", "192.0.2.1", "1h"), d(2, "ban", "Ip", "192.0.2.2", "1h")}, nil)
	})
	b, _, logs := newBouncer(t, f, "k")
	ctx := ctxT(t)
	require.NoError(t, b.Pull(ctx))
	last := b.LastSuccess()
	require.False(t, last.IsZero())

	f.set(func(f *fakeLAPI) { f.status = http.StatusServiceUnavailable })
	for range 3 {
		err := b.Pull(ctx)
		require.ErrorContains(t, err, "HTTP 503")
	}
	require.False(t, b.Up())
	require.Equal(t, last, b.LastSuccess())
	requireBanned(t, b, true, "192.0.2.1", "192.0.2.2")
	require.Equal(t, 1, logs.FilterMessageSnippet("LAPI unavailable").Len(), "one warning per outage")

	// Back, with decision 2 deleted meanwhile: the full state replaces ours.
	f.set(func(f *fakeLAPI) {
		f.status = 0
		f.startup = body(t, []map[string]any{d(1, "ban", "Ip", "192.0.2.1", "1h")}, nil)
	})
	require.NoError(t, b.Pull(ctx))
	require.True(t, b.Up())
	requireBanned(t, b, true, "192.0.2.1")
	requireBanned(t, b, false, "192.0.2.2")
	reqs := f.reqs()
	require.Equal(t, "true", reqs[len(reqs)-1].startup)
	require.Equal(t, 1, logs.FilterMessageSnippet("reachable again").Len())

	// The server gone entirely: connection refused, same outcome.
	f.Close()
	require.Error(t, b.Pull(ctx))
	require.False(t, b.Up())
	requireBanned(t, b, true, "192.0.2.1")
}

// TestWrongKey: a 403 is ErrUnauthorized, logged as an error once, keeps
// the decisions, and the key file is read again, so a rotated key works
// on the next pull.
func TestWrongKey(t *testing.T) {
	t.Parallel()
	f := newFakeLAPI(t, "good")
	f.set(func(f *fakeLAPI) { f.startup = body(t, []map[string]any{d(1, "ban", "Ip", "192.0.2.1", "1h")}, nil) })
	b, _, logs := newBouncer(t, f, "good")
	ctx := ctxT(t)
	require.NoError(t, b.Pull(ctx))

	f.set(func(f *fakeLAPI) { f.key = "rotated" })
	err := b.Pull(ctx)
	require.ErrorIs(t, err, ErrUnauthorized)
	require.ErrorContains(t, err, "HTTP 403")
	require.ErrorContains(t, err, b.cfg.KeyFile)
	require.False(t, b.Up())
	requireBanned(t, b, true, "192.0.2.1")
	require.Equal(t, 1, logs.FilterMessageSnippet("rejected the bouncer key").Len())

	require.NoError(t, os.WriteFile(b.cfg.KeyFile, []byte("rotated\n"), 0o600))
	require.NoError(t, b.Pull(ctx))
	require.True(t, b.Up())
	require.Equal(t, "rotated", f.reqs()[len(f.reqs())-1].key)
}

// TestBounds: at most MaxDecisions are held (the excess is counted and
// logged, never evicting what is held); a response over MaxResponseBytes
// is refused; a hanging LAPI is cut off by Timeout.
func TestBounds(t *testing.T) {
	t.Parallel()
	t.Run("max decisions", func(t *testing.T) {
		t.Parallel()
		f := newFakeLAPI(t, "k")
		var ds []map[string]any
		for i := range 5 {
			ds = append(ds, d(int64(i+1), "ban", "Ip", netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}).String(), "1h"))
		}
		f.set(func(f *fakeLAPI) {
			f.startup = body(t, ds, nil)
			f.deltas = []string{body(t, []map[string]any{d(9, "ban", "Ip", "192.0.2.9", "1h")}, nil)}
		})
		b, _, logs := newBouncer(t, f, "k", func(c *Config) { c.MaxDecisions = 3 })
		require.NoError(t, b.Pull(ctxT(t)))
		require.Equal(t, 3, b.Decisions())
		require.EqualValues(t, 2, b.Dropped())
		requireBanned(t, b, true, "192.0.2.1", "192.0.2.2", "192.0.2.3")
		requireBanned(t, b, false, "192.0.2.4", "192.0.2.5")
		require.NoError(t, b.Pull(ctxT(t)))
		require.EqualValues(t, 3, b.Dropped(), "a new decision over the limit is dropped, not swapped in")
		requireBanned(t, b, false, "192.0.2.9")
		require.Equal(t, 2, logs.FilterMessageSnippet("over the limit").Len())
	})
	t.Run("response size", func(t *testing.T) {
		t.Parallel()
		f := newFakeLAPI(t, "k")
		f.set(func(f *fakeLAPI) {
			f.startup = `{"new": [` + strings.Repeat(`{"id":1,"type":"ban","scope":"Ip","value":"192.0.2.1","duration":"1h"},`, 100) +
				`{"id":1}], "deleted": []}`
		})
		b, _, _ := newBouncer(t, f, "k", func(c *Config) { c.MaxResponseBytes = 2048 })
		err := b.Pull(ctxT(t))
		require.ErrorContains(t, err, "exceeds 2048 bytes")
		require.False(t, b.Up())
	})
	t.Run("timeout", func(t *testing.T) {
		t.Parallel()
		f := newFakeLAPI(t, "k")
		f.set(func(f *fakeLAPI) { f.hang = true })
		b, _, _ := newBouncer(t, f, "k", func(c *Config) { c.Timeout = 200 * time.Millisecond })
		err := b.Pull(ctxT(t))
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.False(t, b.Up())
	})
}

// TestStreamShapes: null arrays, "deleted" before "new" (the LAPI's
// non-chunked answer is a Go map), unknown keys, malformed JSON.
func TestStreamShapes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		body    string
		wantErr string
		banned  []string
		clear   []string
	}{
		{name: "nulls", body: `{"new": null, "deleted": null}`},
		{name: "deleted first, same id in new",
			body:   `{"deleted": [{"id": 2}], "new": [{"id": 1, "type": "ban", "scope": "Ip", "value": "192.0.2.1", "duration": "1h"}, {"id": 2, "type": "ban", "scope": "Ip", "value": "192.0.2.2", "duration": "1h"}]}`,
			banned: []string{"192.0.2.1"}, clear: []string{"192.0.2.2"}},
		{name: "unknown keys are skipped", body: `{"extra": {"a": [1, 2]}, "new": [{"id": 1, "type": "ban", "scope": "Ip", "value": "192.0.2.1", "duration": "1h", "simulated": false}]}`,
			banned: []string{"192.0.2.1"}},
		{name: "missing id", body: `{"new": [{"type": "ban", "scope": "Ip", "value": "192.0.2.1", "duration": "1h"}]}`, clear: []string{"192.0.2.1"}},
		{name: "bad duration", body: `{"new": [{"id": 1, "type": "ban", "scope": "Ip", "value": "192.0.2.1", "duration": "forever"}]}`, clear: []string{"192.0.2.1"}},
		{name: "zone", body: `{"new": [{"id": 1, "type": "ban", "scope": "Ip", "value": "fe80::1%eth0", "duration": "1h"}]}`, clear: []string{"fe80::1"}},
		{name: "truncated", body: `{"new": [{"id": 1`, wantErr: "decoding crowdsec decisions"},
		{name: "not an object", body: `[]`, wantErr: "expected {"},
		{name: "new is an object", body: `{"new": {}}`, wantErr: "expected an array"},
		{name: "html error page", body: `<html>`, wantErr: "decoding crowdsec decisions"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeLAPI(t, "k")
			f.set(func(f *fakeLAPI) { f.startup = tc.body })
			b, _, _ := newBouncer(t, f, "k")
			err := b.Pull(ctxT(t))
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			requireBanned(t, b, true, tc.banned...)
			requireBanned(t, b, false, tc.clear...)
		})
	}
}

// TestRun: Run pulls at once, then on the interval (startup first, deltas
// after), and returns nil when its context ends.
func TestRun(t *testing.T) {
	t.Parallel()
	f := newFakeLAPI(t, "k")
	f.set(func(f *fakeLAPI) { f.startup = body(t, []map[string]any{d(1, "ban", "Ip", "192.0.2.1", "1h")}, nil) })
	b, _, _ := newBouncer(t, f, "k", func(c *Config) { c.Interval = 100 * time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	require.Eventually(t, func() bool { return len(f.reqs()) >= 3 }, 30*time.Second, 10*time.Millisecond)
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	reqs := f.reqs()
	require.Equal(t, "true", reqs[0].startup)
	require.Equal(t, "false", reqs[1].startup)
	requireBanned(t, b, true, "192.0.2.1")
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	good := keyFile(t, "k")
	tests := []struct {
		cfg  Config
		want string
	}{
		{Config{KeyFile: good}, "URL: the LAPI URL is required"},
		{Config{URL: "ftp://x", KeyFile: good}, `use http:// or https://`},
		{Config{URL: "http://", KeyFile: good}, "has no host"},
		{Config{URL: "http://u:pw@h/", KeyFile: good}, "the key goes in KeyFile"},
		{Config{URL: "http://h/"}, "KeyFile: the bouncer key file is required"},
		{Config{URL: "http://h/", KeyFile: "/nonexistent/key"}, "KeyFile: open /nonexistent/key"},
		{Config{URL: "http://h/", KeyFile: keyFile(t, " \n\t")}, "is empty"},
		{Config{URL: "http://h/", KeyFile: keyFile(t, "a b")}, "non-printable"},
		{Config{URL: "http://h/", KeyFile: keyFile(t, strings.Repeat("k", 5000))}, "longer than 4096 bytes"},
		{Config{URL: "http://h/", KeyFile: good, Interval: time.Millisecond}, "Interval must be at least 100ms"},
		{Config{URL: "http://h/", KeyFile: good, MaxResponseBytes: 10}, "MaxResponseBytes must be at least 1024"},
	}
	for _, tc := range tests {
		_, err := New(tc.cfg)
		require.ErrorIs(t, err, ErrConfig, tc.want)
		require.ErrorContains(t, err, tc.want)
		require.NotContains(t, err.Error(), "pw@", "no credentials in errors")
	}
	_, err := New(Config{URL: "http://127.0.0.1:8080", KeyFile: good})
	require.NoError(t, err)
	require.False(t, errors.Is(err, ErrConfig))
}
