package systemd

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/pgwarden/pgwarden/internal/systemd/sdtest"
)

// notifySocket listens where NOTIFY_SOCKET points for this test.
func notifySocket(t *testing.T) <-chan string {
	t.Helper()
	sock := sdtest.ListenNotify(t)
	t.Setenv("NOTIFY_SOCKET", sock.Path)
	return sock.Msgs
}

func next(t *testing.T, msgs <-chan string) string {
	t.Helper()
	select {
	case m := <-msgs:
		return m
	case <-time.After(20 * time.Second):
		t.Fatal("no notification within 20s")
		return ""
	}
}

// TestWatchdogPingsOnlyWhileAlive: WATCHDOG=1 goes out only after a
// liveness check that answered nil; a failing check sends the reason as
// STATUS and no ping, and the pings resume when the check passes again.
func TestWatchdogPingsOnlyWhileAlive(t *testing.T) {
	msgs := notifySocket(t)
	t.Setenv("WATCHDOG_USEC", "200000")
	t.Setenv("WATCHDOG_PID", "")
	n := NewNotifier(zaptest.NewLogger(t))
	n.Status = func() string { return "2 sessions, 1 bans" }
	var stuck atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.RunWatchdog(ctx, func(context.Context) error {
			if stuck.Load() {
				return errors.New("the accept loop of 127.0.0.1:5432 has not answered")
			}
			return nil
		})
	}()
	require.Equal(t, "WATCHDOG=1\nSTATUS=serving: 2 sessions, 1 bans", next(t, msgs))
	const ping, notAnswering = "WATCHDOG=1\nSTATUS=serving: 2 sessions, 1 bans",
		"STATUS=not answering: the accept loop of 127.0.0.1:5432 has not answered"
	stuck.Store(true)
	// A check that began before the switch may still ping once.
	m := next(t, msgs)
	if m == ping {
		m = next(t, msgs)
	}
	require.Equal(t, notAnswering, m)
	for range 3 {
		require.Equal(t, notAnswering, next(t, msgs), "no ping while stuck")
	}
	stuck.Store(false)
	m = next(t, msgs)
	if m == notAnswering {
		m = next(t, msgs)
	}
	require.Equal(t, ping, m, "pings resume")
	cancel()
	<-done
}

// TestNotifierSilentWithoutSocket: without NOTIFY_SOCKET nothing is sent
// and the watchdog loop does not run at all, whatever WATCHDOG_USEC says.
func TestNotifierSilentWithoutSocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv("WATCHDOG_USEC", "100000")
	n := NewNotifier(nil)
	require.False(t, n.Enabled())
	n.Ready()
	n.Reloading()
	n.Stopping()
	checked := false
	n.RunWatchdog(context.Background(), func(context.Context) error { checked = true; return nil }) // returns at once
	require.False(t, checked)
}

// TestReloadingCarriesTheMonotonicClock: RELOADING=1 and MONOTONIC_USEC
// travel in one datagram, as Type=notify-reload requires.
func TestReloadingCarriesTheMonotonicClock(t *testing.T) {
	msgs := notifySocket(t)
	n := NewNotifier(nil)
	n.Reloading()
	lines := strings.Split(next(t, msgs), "\n")
	require.Equal(t, "RELOADING=1", lines[0])
	require.Regexp(t, `^MONOTONIC_USEC=[1-9][0-9]*$`, lines[1])
}
