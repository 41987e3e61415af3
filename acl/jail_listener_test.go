package acl

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestListenerWithJail wires the two halves together over real sockets:
// once 127.0.0.2 has failed MaxRetry times it is reset at accept, exactly
// like a source outside the allowlist, while 127.0.0.1 still gets through.
func TestListenerWithJail(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	cfg := testJailConfig(clock)
	cfg.MaxRetry = 2
	j := newTestJail(t, cfg)
	l, err := NewListener(listen(t, "tcp4", "127.0.0.1:0"), ListenerConfig{
		Allowlist: mustAllow(t, "127.0.0.0/8"),
		Banned:    j.Banned,
	})
	require.NoError(t, err)
	accepted := acceptAll(t, l)

	dialFrom(t, "127.0.0.2", l.Addr().String())
	waitConn(t, accepted)
	j.Failed(ip("127.0.0.2"), badPassword)
	j.Failed(ip("::ffff:127.0.0.2"), badPassword) // as a dual-stack socket reports it

	assertDenied(t, "127.0.0.2", l.Addr().String())
	if na, b := l.Rejected(); na != 0 || b != 1 {
		t.Fatalf("Rejected() = %d, %d; want 0, 1", na, b)
	}
	dialFrom(t, "127.0.0.1", l.Addr().String())
	waitConn(t, accepted)

	// When the ban lifts, the source is admitted again.
	clock.Advance(cfg.BanTime + time.Second)
	dialFrom(t, "127.0.0.2", l.Addr().String())
	waitConn(t, accepted)
}
