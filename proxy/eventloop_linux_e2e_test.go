package proxy_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

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
