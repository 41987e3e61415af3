package proxy_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestAliveAsksTheAcceptLoops: Alive wakes each accept loop blocked in
// Accept and gets its answer; connections are accepted as before between
// the checks, and a session relayed by the event loops keeps working. A
// loop that does not get back to Accept fails the check until it does.
func TestAliveAsksTheAcceptLoops(t *testing.T) {
	g := startGateway(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	conn := g.connect(t, "")
	for i := range 3 {
		require.NoError(t, g.server.Alive(ctx), "check %d", i)
		require.Equal(t, "1", queryOne(t, conn, "SELECT 1"), "the relayed session works between checks")
		fresh := g.connect(t, "")
		require.Equal(t, "2", queryOne(t, fresh, "SELECT 2"), "a poke leaves no deadline behind: new connections are accepted")
	}

	// A second listener whose loop is held away from Accept.
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	held := &heldListener{TCPListener: inner.(*net.TCPListener), hold: make(chan struct{})}
	go func() { _ = g.server.Serve(held) }()

	// Serve registers the listener on its own goroutine: wait for the
	// check to see it.
	var err2 error
	require.Eventually(t, func() bool {
		short, cancelShort := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancelShort()
		err2 = g.server.Alive(short)
		return err2 != nil
	}, 20*time.Second, 10*time.Millisecond)
	require.ErrorContains(t, err2, "the accept loop of "+inner.Addr().String()+" has not answered")

	close(held.hold)
	require.NoError(t, g.server.Alive(ctx), "the loop answers once it is back in Accept")
}

// heldListener is a TCP listener whose Accept first waits for hold: an
// accept loop stuck elsewhere.
type heldListener struct {
	*net.TCPListener
	hold chan struct{}
}

func (l *heldListener) Accept() (net.Conn, error) {
	<-l.hold
	return l.TCPListener.Accept()
}
