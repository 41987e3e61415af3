package proxy_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/internal/tlsforge"
	"github.com/pgwarden/pgwarden/proxy"
)

// outcomeMetrics records the outcome of every connection that ends.
type outcomeMetrics struct {
	proxy.Metrics
	mu       sync.Mutex
	outcomes []string
}

func (m *outcomeMetrics) ConnectionClosed(_ string, outcome proxy.Outcome, _ time.Duration) {
	m.mu.Lock()
	m.outcomes = append(m.outcomes, outcome.String())
	m.mu.Unlock()
}

func (m *outcomeMetrics) count(outcome string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, o := range m.outcomes {
		if o == outcome {
			n++
		}
	}
	return n
}

// keyUpdateClient logs in through g with pgconn over direct TLS 1.3 (no
// SSLRequest, so the socket carries nothing but TLS records), then takes the
// connection's record layer over: see TLS13Forger.
func (g *gateway) keyUpdateClient(t *testing.T) *tlsforge.Forger {
	t.Helper()
	cfg, err := pgconn.ParseConfig(g.connString("sslnegotiation=direct"))
	require.NoError(t, err)
	require.Empty(t, cfg.Fallbacks)
	tap, keyLog := &tlsforge.Tap{}, &tlsforge.KeyLog{}
	cfg.TLSConfig.MinVersion = tls.VersionTLS13
	cfg.TLSConfig.KeyLogWriter = keyLog
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		tap.Conn = c
		return tap, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	require.NoError(t, err)
	hc, err := conn.Hijack()
	require.NoError(t, err)
	t.Cleanup(func() { _ = tap.Conn.Close() })
	f, err := tlsforge.New(hc.Conn.(*tls.Conn), tap, keyLog)
	require.NoError(t, err)
	require.NoError(t, f.SetDeadline(time.Now().Add(60*time.Second)))
	return f
}

// forgedQuery runs a simple query through f and returns the first column
// of its one row.
func forgedQuery(t *testing.T, f *tlsforge.Forger, sql string) string {
	t.Helper()
	q, err := (&pgproto3.Query{String: sql}).Encode(nil)
	require.NoError(t, err)
	f.AppData(q)
	require.NoError(t, f.Flush())
	fe := pgproto3.NewFrontend(f, io.Discard)
	var got string
	for {
		msg, err := fe.Receive()
		require.NoError(t, err)
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			got = string(m.Values[0])
		case *pgproto3.ErrorResponse:
			t.Fatalf("query failed: %s", m.Message)
		case *pgproto3.ReadyForQuery:
			return got
		}
	}
}

// flushMessage is the protocol's Flush: postgres answers nothing, so it is
// the smallest application data that makes a record count as data.
var flushMessage = []byte{'H', 0, 0, 0, 4}

// TestKeyUpdateFlood: a logged-in client sends TLS 1.3 KeyUpdates that
// request an update, each of which makes crypto/tls write a reply, and
// never reads (between them a Flush message, since crypto/tls ends a
// connection after 16 records in a row without data). The gateway must end
// the session, log it with outcome tls_abuse, and meanwhile hold no more
// than its queue cap; other sessions carry on. A few key updates, and any
// number that request none, are what real clients do and are honoured.
func TestKeyUpdateFlood(t *testing.T) {
	for _, mode := range []string{"loop", "goroutines"} {
		t.Run(mode, func(t *testing.T) {
			metrics := &outcomeMetrics{Metrics: proxy.NopMetrics()}
			core, logs := observer.New(zap.InfoLevel)
			g := startGateway(t, func(c *proxy.Config, _ *acl.ListenerConfig) {
				c.Metrics = metrics
				c.Logger = zap.New(core)
			})
			if mode == "goroutines" {
				proxy.UseGoroutineRelay(g.server)
			}
			testKeyUpdateFlood(t, g, metrics, logs)
		})
	}
}

func testKeyUpdateFlood(t *testing.T, g *gateway, metrics *outcomeMetrics, logs *observer.ObservedLogs) {
	bystander := g.connect(t, "")
	require.Equal(t, "1", queryOne(t, bystander, "SELECT 1"))

	f := g.keyUpdateClient(t)
	// What real clients do works: key updates that request one are
	// answered (and both sides move to new keys), and updates that request
	// none, however many, are not limited (they make crypto/tls write
	// nothing).
	for range 3 {
		require.NoError(t, f.KeyUpdate(true))
	}
	require.Equal(t, "after 3", forgedQuery(t, f, "SELECT 'after 3'"))
	require.Equal(t, 3, f.Received, "each KeyUpdate requesting an update must be answered")
	for range 100 {
		for range 8 {
			require.NoError(t, f.KeyUpdate(false))
		}
		f.AppData(flushMessage)
	}
	require.Equal(t, "after 803", forgedQuery(t, f, "SELECT 'after 803'"))
	require.Equal(t, 3, f.Received)

	// The flood: up to 20000 rounds of eight (4.7 MB, 160,000 replies),
	// never reading.
	proxy.ResetRelayQueuePeak()
	var floodErr error
	for r := 0; r < 20000 && floodErr == nil; r++ {
		for range 8 {
			require.NoError(t, f.KeyUpdate(true))
		}
		f.AppData(flushMessage)
		if r%64 == 63 {
			floodErr = f.Flush()
		}
	}
	require.Error(t, floodErr, "the gateway took the whole flood without ending the session")
	var ne net.Error
	require.False(t, errors.As(floodErr, &ne) && ne.Timeout(),
		"the gateway stopped reading but did not end the session: %v", floodErr)

	waitFor(t, "the session to end as tls_abuse", func() bool { return metrics.count("tls_abuse") == 1 })
	require.LessOrEqual(t, proxy.RelayQueuePeak(), int64(proxy.RelayQueueMax))
	lines := logs.FilterMessage("connection closed").FilterField(zap.String("outcome", "tls_abuse")).All()
	require.Len(t, lines, 1)
	require.Equal(t, zapcore.WarnLevel, lines[0].Level)
	require.Contains(t, lines[0].ContextMap()["cause"], "key updates faster than 16 a second")

	require.Equal(t, "2", queryOne(t, bystander, "SELECT 2"), "another session suffered")
}
