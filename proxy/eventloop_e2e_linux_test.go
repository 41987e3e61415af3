package proxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/proxy"
)

// TestAuthenticatedSessionsRunInEventLoop checks that on Linux an
// authenticated session is relayed by an event loop (not by the goroutine
// fallback) and leaves it when it ends.
func TestAuthenticatedSessionsRunInEventLoop(t *testing.T) {
	g := startGateway(t)
	before := proxy.RelayLoopSessions()
	conn := g.connect(t, "")
	require.Equal(t, "1", queryOne(t, conn, "SELECT 1"))
	require.Equal(t, before+1, proxy.RelayLoopSessions())
	require.NoError(t, conn.Close(context.Background()))
	waitFor(t, "the session to leave the loop", func() bool { return proxy.RelayLoopSessions() == before })
}

// panickyMetrics stands in for a bug on the relay path: its byte counter
// panics, which happens inside the event loop.
type panickyMetrics struct{ proxy.Metrics }

type panickyCounter struct{}

func (panickyCounter) Add(float64) { panic("counter bug") }

func (panickyMetrics) BytesCounter(string, bool) proxy.Counter { return panickyCounter{} }

// TestPanicInLoopCostsOneSession: a panic while relaying ends that session
// only; sessions of the same loop, and the process, carry on.
func TestPanicInLoopCostsOneSession(t *testing.T) {
	healthy := startGateway(t)
	bystander := healthy.connect(t, "")
	require.Equal(t, "1", queryOne(t, bystander, "SELECT 1"))

	buggy := startGateway(t, func(c *proxy.Config, _ *acl.ListenerConfig) {
		c.Metrics = panickyMetrics{Metrics: proxy.NopMetrics()}
	})
	victim := buggy.connect(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := victim.Exec(ctx, "SELECT 1").ReadAll()
	require.Error(t, err, "the session whose relay panicked must end")

	require.Equal(t, "2", queryOne(t, bystander, "SELECT 2"))
	waitFor(t, "the buggy session to be gone", func() bool { return buggy.server.Sessions() == 0 })
}
