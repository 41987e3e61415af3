//go:build linux

package eventloop

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestAliveAsksEveryLoop: every loop answers a liveness ping from its own
// goroutine, so one that is stuck in its work fails the check until it
// gets back to its loop, however idle the process is.
func TestAliveAsksEveryLoop(t *testing.T) {
	require.NoError(t, acquireLoops())
	t.Cleanup(releaseLoops)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, alive(ctx), "idle loops blocked in epoll_wait are woken and answer")

	// Hold one loop's goroutine, as a session's work that never returns would.
	pool.mu.Lock()
	stuck := pool.loops[len(pool.loops)-1]
	pool.mu.Unlock()
	release, held := make(chan struct{}), make(chan struct{})
	stuck.post(loopCmd{do: func() { close(held); <-release }})
	<-held

	short, cancelShort := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancelShort()
	err := alive(short)
	require.ErrorContains(t, err, "has not answered")

	close(release)
	require.NoError(t, alive(ctx), "the loop answers again once it is back")
}
