package proxy_test

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/proxy"
)

// A source that loops on connections the gateway refuses (here: over the
// per-source pre-authentication cap, and cancel requests with unknown
// keys) gets the first lines of each outcome in full and then one summary
// line with the count, not one line per connection. Sessions are always
// logged in full.
func TestConnectionLinesSampledPerSourceAndOutcome(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	const first, flood, sessions = 3, 40, 5
	g := startGateway(t, func(c *proxy.Config, l *acl.ListenerConfig) {
		c.Logger = zap.New(core)
		c.MaxStartupsPerIP = 1
		c.HandshakeTimeout = time.Minute // the held startup stays
		c.AuthTimeout = time.Minute
		// A window longer than the test: the summary comes at Shutdown.
		c.LogSampling = proxy.LogSampling{First: first, Window: time.Hour}
		c.CancelLimiter, _ = proxy.NewCancelLimiter(proxy.CancelLimits{Rate: 1e6, Burst: 1e6, MaxSources: 10})
		allow, err := acl.ParseAllowlist([]string{"127.0.0.0/8"})
		require.NoError(t, err)
		l.Allowlist = allow
	})

	// One startup from 127.0.0.1 holds its only slot: once 'S' is back,
	// its handler is past the cap.
	hold := g.dialRaw(t, "")
	_, err := hold.Write(packet(80877103, nil))
	require.NoError(t, err)
	var s [1]byte
	_, err = io.ReadFull(hold, s[:])
	require.NoError(t, err)
	for range flood {
		// Over the cap the connection is reset once accepted; the reset can
		// beat connect() home, and then the dial reports it.
		c, err := net.DialTimeout("tcp", g.addr, 5*time.Second)
		if err != nil {
			require.ErrorIs(t, err, syscall.ECONNRESET)
			continue
		}
		require.NoError(t, c.SetDeadline(time.Now().Add(15*time.Second)))
		_, err = io.Copy(io.Discard, c)
		require.ErrorIs(t, err, syscall.ECONNRESET)
		c.Close()
	}
	for i := range flood {
		c := g.dialRaw(t, "127.0.0.2")
		body := binary.BigEndian.AppendUint32(nil, uint32(i))
		_, err := c.Write(packet(80877102, append(body, 1, 2, 3, 4)))
		require.NoError(t, err)
		requireNoMoreBytes(t, c)
		c.Close()
	}
	hold.Close()
	waitFor(t, "the held startup to end", func() bool { return g.server.Sessions() == 0 })
	for range sessions {
		conn := g.connect(t, "")
		require.Equal(t, "1", queryOne(t, conn, "SELECT 1"))
		require.NoError(t, conn.Close(context.Background()))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, g.server.Shutdown(ctx))

	count := func(msg, outcome string) (n int, last map[string]any) {
		for _, e := range logs.FilterMessage(msg).AllUntimed() {
			if f := e.ContextMap(); f["outcome"] == outcome {
				n, last = n+1, f
			}
		}
		return n, last
	}
	for _, tc := range []struct{ outcome, source string }{
		{"too_many_startups", "127.0.0.1"},
		{"cancel_unknown", "127.0.0.2"},
	} {
		n, _ := count("connection closed", tc.outcome)
		require.Equal(t, first, n, "%s: full lines", tc.outcome)
		n, summary := count("connections not logged", tc.outcome)
		require.Equal(t, 1, n, "%s: one summary", tc.outcome)
		require.Equal(t, tc.source, summary["source"])
		require.EqualValues(t, flood-first, summary["suppressed"])
		require.EqualValues(t, first, summary["logged"])
		require.Equal(t, "test", summary["route"])
	}
	n, _ := count("connection closed", "ok")
	require.Equal(t, sessions, n, "every session is logged")
	require.Equal(t, 2, logs.FilterMessage("connections not logged").Len(), "only the sampled outcomes have summaries")
}
