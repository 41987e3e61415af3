package acl

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// cancelled is a context that is already done: BeginAuth with it returns an
// attempt only if a slot is free right now, so tests can probe without
// waiting.
func cancelled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

// slotFree probes whether src could start an authentication now, without
// keeping the slot.
func slotFree(t *testing.T, j *Jail, src string) bool {
	t.Helper()
	a, err := j.BeginAuth(cancelled(), ip(src))
	if err != nil {
		require.ErrorIs(t, err, context.Canceled)
		return false
	}
	a.End()
	return true
}

func begin(t *testing.T, j *Jail, src string) *AuthAttempt {
	t.Helper()
	a, err := j.BeginAuth(cancelled(), ip(src))
	require.NoError(t, err, "no slot for %s", src)
	return a
}

// beginAsync starts a BeginAuth that may wait; its result arrives on the
// returned channel.
type beginResult struct {
	a   *AuthAttempt
	err error
}

func beginAsync(j *Jail, ctx context.Context, src string) <-chan beginResult {
	ch := make(chan beginResult, 1)
	go func() {
		a, err := j.BeginAuth(ctx, ip(src))
		ch <- beginResult{a, err}
	}()
	return ch
}

func receive(t *testing.T, ch <-chan beginResult) beginResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("BeginAuth did not return")
		return beginResult{}
	}
}

// requireNoAttempts checks that every attempt ended and freed its slots.
func requireNoAttempts(t *testing.T, j *Jail) {
	t.Helper()
	j.mu.Lock()
	defer j.mu.Unlock()
	require.Empty(t, j.auths.attempts)
	require.Empty(t, j.auths.inflight)
}

func slotJail(t *testing.T, maxRetry int) (*Jail, *fakeClock) {
	clock := newFakeClock()
	cfg := testJailConfig(clock)
	cfg.MaxRetry = maxRetry
	ignore, err := ParseList(FieldIgnore, []string{"10.0.0.0/8"})
	require.NoError(t, err)
	cfg.Ignore = ignore
	return newTestJail(t, cfg), clock
}

// TestAuthSlotsCapGuessesInFlight is the parallel-proof attack at the
// jail's level: however many connections a source opens, at most MaxRetry
// of them can be authenticating, failures keep their slots taken, and the
// ban that follows the last one ends every waiter.
func TestAuthSlotsCapGuessesInFlight(t *testing.T) {
	t.Parallel()
	j, _ := slotJail(t, 3)
	const src = "192.0.2.1"
	var inFlight []*AuthAttempt
	for range 3 {
		inFlight = append(inFlight, begin(t, j, src))
	}
	require.False(t, slotFree(t, j, src), "a 4th authentication was admitted with MaxRetry 3")
	require.True(t, slotFree(t, j, "192.0.2.2"), "another source must not be limited")

	waiters := make([]<-chan beginResult, 5)
	for i := range waiters {
		waiters[i] = beginAsync(j, context.Background(), src)
	}
	// Each failure turns a slot in progress into a failure in the window:
	// nobody new gets in.
	for i, a := range inFlight {
		banned, _ := a.Failed(badPassword)
		require.Equal(t, i == 2, banned, "failure %d", i+1)
		if i < 2 {
			require.False(t, slotFree(t, j, src), "a slot freed by failure %d", i+1)
		}
	}
	for _, w := range waiters {
		r := receive(t, w)
		require.ErrorIs(t, r.err, ErrBanned, "a waiter outlived the ban")
	}
	l := j.List()
	require.Len(t, l, 1)
	require.Equal(t, 3, l[0].Failures)
	_, err := j.BeginAuth(context.Background(), ip(src))
	require.ErrorIs(t, err, ErrBanned)
}

// TestAuthSlotsPoolWaitsAndProceeds: a pool opening more connections at
// once than MaxRetry is served, the extra ones as earlier ones end.
func TestAuthSlotsPoolWaitsAndProceeds(t *testing.T) {
	t.Parallel()
	j, _ := slotJail(t, 3)
	const src = "192.0.2.10"
	results := make(chan beginResult, 10)
	for range 10 {
		go func() {
			a, err := j.BeginAuth(context.Background(), ip(src))
			results <- beginResult{a, err}
		}()
	}
	for range 10 {
		r := receive(t, results)
		require.NoError(t, r.err)
		r.a.End() // logged in: the slot goes to the next one
	}
	require.False(t, j.Banned(ip(src)))
	requireNoAttempts(t, j)
}

// TestAuthSlotsCountRecentFailures: retries left, not MaxRetry, bound the
// attempts in progress, and they come back as failures age out.
func TestAuthSlotsCountRecentFailures(t *testing.T) {
	t.Parallel()
	j, clock := slotJail(t, 3)
	const src = "192.0.2.20"
	j.Failed(ip(src), badPassword)
	j.Failed(ip(src), badPassword)
	a := begin(t, j, src)
	require.False(t, slotFree(t, j, src), "two failures and one in progress leave no retry")
	w := beginAsync(j, context.Background(), src)
	a.End()
	r := receive(t, w)
	require.NoError(t, r.err)
	r.a.End()
	clock.Advance(j.config().FindTime)
	for range 3 {
		defer begin(t, j, src).End()
	}
}

// TestAuthSlotsIPv6Prefix: the /64 aggregate has MaxRetry slots in all, so
// rotating addresses inside it does not multiply the guesses.
func TestAuthSlotsIPv6Prefix(t *testing.T) {
	t.Parallel()
	j, _ := slotJail(t, 3)
	a1 := begin(t, j, "2001:db8::1")
	a2 := begin(t, j, "2001:db8::2")
	begin(t, j, "2001:db8::3")
	require.False(t, slotFree(t, j, "2001:db8::4"), "the /64 has no slot left")
	require.True(t, slotFree(t, j, "2001:db8:0:1::1"), "another /64 must not be limited")
	a1.Failed(badPassword)
	a2.Failed(badPassword)
	require.False(t, slotFree(t, j, "2001:db8::5"))
}

// TestAuthSlotsIgnoredSourcesUnlimited: --ban-ignore sources are never
// banned, so they are not limited either.
func TestAuthSlotsIgnoredSourcesUnlimited(t *testing.T) {
	t.Parallel()
	j, _ := slotJail(t, 1)
	for range 10 {
		begin(t, j, "10.1.2.3")
	}
	require.Empty(t, j.auths.inflight, "ignored attempts hold no slot")
}

// TestAuthSlotsManualBanRevokes: a ban imposed while attempts are in
// progress cancels them (an operator's ban also those of ignored sources
// inside it), and their waiters get ErrBanned.
func TestAuthSlotsManualBanRevokes(t *testing.T) {
	t.Parallel()
	j, _ := slotJail(t, 2)
	a := begin(t, j, "192.0.2.30")
	b := begin(t, j, "192.0.2.30")
	ignored := begin(t, j, "10.9.9.9")
	other := begin(t, j, "192.0.2.31")
	w := beginAsync(j, context.Background(), "192.0.2.30")

	_, err := j.Ban("192.0.2.30", time.Hour)
	require.NoError(t, err)
	for _, x := range []*AuthAttempt{a, b} {
		require.Error(t, x.Context().Err(), "attempt in progress not revoked")
		require.ErrorIs(t, context.Cause(x.Context()), ErrBanned)
	}
	require.ErrorIs(t, receive(t, w).err, ErrBanned)
	require.NoError(t, other.Context().Err(), "another source's attempt was revoked")
	require.NoError(t, ignored.Context().Err())

	_, err = j.Ban("10.0.0.0/8", time.Hour)
	require.NoError(t, err)
	require.ErrorIs(t, context.Cause(ignored.Context()), ErrBanned, "a manual ban covers ignored sources")

	// Revoked attempts still end normally, and a failure postgres had
	// already checked still counts.
	a.End()
	b.Failed(badPassword)
	ignored.End()
	other.End()
	requireNoAttempts(t, j)
}

// TestAuthSlotsAutomaticPrefixBanRevokesCovered: when the /64 is banned
// for failures from one address, other addresses' attempts in it end too.
func TestAuthSlotsAutomaticPrefixBanRevokesCovered(t *testing.T) {
	t.Parallel()
	j, _ := slotJail(t, 3)
	a := begin(t, j, "2001:db8::1")
	b := begin(t, j, "2001:db8::1")
	c := begin(t, j, "2001:db8::2")
	a.Failed(badPassword)
	b.Failed(badPassword)
	banned, _ := c.Failed(badPassword)
	require.True(t, banned)
	require.True(t, j.Banned(ip("2001:db8::7")), "the /64 is banned")
	// Nothing was left in progress to revoke: the slots guaranteed it.
	requireNoAttempts(t, j)
}

// TestAuthSlotsWaitEndsWithContext: a waiter gives up when its context
// ends, with the context's cause.
func TestAuthSlotsWaitEndsWithContext(t *testing.T) {
	t.Parallel()
	j, _ := slotJail(t, 2)
	a := begin(t, j, "192.0.2.40")
	b := begin(t, j, "192.0.2.40")
	c := begin(t, j, "2001:db8::1")
	d := begin(t, j, "2001:db8::2")
	ctx, cancel := context.WithCancelCause(context.Background())
	why := errors.New("deadline")
	waiters := []<-chan beginResult{beginAsync(j, ctx, "192.0.2.40")}
	for i := range 20 { // rotating inside the full /64
		waiters = append(waiters, beginAsync(j, ctx, fmt.Sprintf("2001:db8::%x", 0x100+i)))
	}
	cancel(why)
	for _, w := range waiters {
		require.ErrorIs(t, receive(t, w).err, why)
	}
	// Waiters that gave up leave nothing behind once the slots free.
	for _, x := range []*AuthAttempt{a, b, c, d} {
		x.End()
	}
	requireNoAttempts(t, j)
	j.mu.Lock()
	defer j.mu.Unlock()
	require.Empty(t, j.auths.wake)
}

// TestAuthSlotsClosedJail: after Close, attempts are admitted untracked and
// waiters are released.
func TestAuthSlotsClosedJail(t *testing.T) {
	t.Parallel()
	j, _ := slotJail(t, 1)
	a := begin(t, j, "192.0.2.50")
	w := beginAsync(j, context.Background(), "192.0.2.50")
	require.NoError(t, j.Close())
	r := receive(t, w)
	require.NoError(t, r.err)
	r.a.Failed(badPassword)
	a.End()
	a.End() // twice is harmless
	begin(t, j, "192.0.2.50").End()
}
