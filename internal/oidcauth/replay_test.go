package oidcauth

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestReplayCache(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	c := NewReplayCache(3, clock.Now)
	now := clock.Now()
	require.NoError(t, c.Use("a", now.Add(time.Minute)))
	require.ErrorIs(t, c.Use("a", now.Add(time.Minute)), ErrReplayed)
	require.NoError(t, c.Use("b", now.Add(2*time.Minute)))
	require.NoError(t, c.Use("c", now.Add(3*time.Minute)))

	// Full of live entries: refuse, never forget one.
	err := c.Use("d", now.Add(time.Minute))
	var full *ReplayFullError
	require.ErrorAs(t, err, &full)
	require.Equal(t, time.Minute+time.Nanosecond, full.RetryAfter, "until the soonest entry expires")
	require.ErrorIs(t, c.Use("a", now.Add(time.Minute)), ErrReplayed, "a is still remembered")
	require.Equal(t, 3, c.Len())

	// At its until, "a" is still remembered (its token still verifies
	// then); just after, its place is free, and "a" itself is new again
	// (its token can no longer verify anyway).
	clock.Advance(time.Minute)
	require.ErrorIs(t, c.Use("a", now.Add(time.Minute)), ErrReplayed, "until is inclusive")
	require.ErrorAs(t, c.Use("d", clock.Now().Add(time.Minute)), &full)
	clock.Advance(time.Nanosecond)
	require.NoError(t, c.Use("d", clock.Now().Add(time.Minute)))
	require.Equal(t, 3, c.Len())
	require.ErrorAs(t, c.Use("e", clock.Now().Add(time.Minute)), &full)
	require.ErrorIs(t, c.Use("b", clock.Now().Add(time.Minute)), ErrReplayed)

	// Forget lets a token whose request granted nothing try again.
	c.Forget("d")
	require.NoError(t, c.Use("d", clock.Now().Add(time.Minute)))
}

func TestReplayCacheConcurrentSameToken(t *testing.T) {
	t.Parallel()
	c := NewReplayCache(0, nil)
	var ok, replayed atomic.Int32
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			switch err := c.Use("same", time.Now().Add(time.Minute)); {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, ErrReplayed):
				replayed.Add(1)
			default:
				t.Error(err)
			}
		})
	}
	wg.Wait()
	require.EqualValues(t, 1, ok.Load(), "exactly one request may use a token")
	require.EqualValues(t, 63, replayed.Load())
}

func TestReplayCacheBounded(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	c := NewReplayCache(1000, clock.Now)
	for i := range 5000 {
		err := c.Use(fmt.Sprint(i), clock.Now().Add(10*time.Second))
		var full *ReplayFullError
		if err != nil && !errors.As(err, &full) {
			t.Fatal(err)
		}
		if i%100 == 99 {
			clock.Advance(time.Second)
		}
		require.LessOrEqual(t, c.Len(), 1000)
	}
}
