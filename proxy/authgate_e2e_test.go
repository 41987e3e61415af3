package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/internal/pgtest"
	"github.com/pgwarden/pgwarden/proxy"
)

// recordingGate is an AuthGate that admits at once (or refuses, or makes
// every caller wait until its deadline) and keeps its tickets.
type recordingGate struct {
	refuse error // returned by BeginAuth when set
	block  bool  // BeginAuth waits for ctx to end

	mu      sync.Mutex
	tickets []*recordingTicket
}

func (g *recordingGate) BeginAuth(ctx context.Context, _ netip.Addr) (proxy.AuthTicket, error) {
	if g.refuse != nil {
		return nil, g.refuse
	}
	if g.block {
		<-ctx.Done()
		return nil, fmt.Errorf("waiting for a slot: %w", context.Cause(ctx))
	}
	t := &recordingTicket{}
	t.ctx, t.cancel = context.WithCancelCause(context.Background())
	g.mu.Lock()
	g.tickets = append(g.tickets, t)
	g.mu.Unlock()
	return t, nil
}

func (g *recordingGate) all() []*recordingTicket {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]*recordingTicket(nil), g.tickets...)
}

type recordingTicket struct {
	ctx    context.Context
	cancel context.CancelCauseFunc

	mu   sync.Mutex
	done []proxy.AuthOutcome
}

func (t *recordingTicket) Context() context.Context { return t.ctx }

func (t *recordingTicket) Done(o proxy.AuthOutcome) {
	t.mu.Lock()
	t.done = append(t.done, o)
	t.mu.Unlock()
}

// results returns the results Done was called with (exactly one expected).
func (t *recordingTicket) results() []proxy.AuthResult {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []proxy.AuthResult
	for _, o := range t.done {
		out = append(out, o.Result)
	}
	return out
}

func withGate(g proxy.AuthGate) gatewayOption {
	return func(c *proxy.Config, _ *acl.ListenerConfig) { c.AuthGate = g }
}

// atSASLPrompt opens a TLS session as alice and reads postgres's
// AuthenticationSASL: from here postgres waits for the client.
func (g *gateway) atSASLPrompt(t *testing.T) (*pgproto3.Frontend, net.Conn) {
	t.Helper()
	tconn := g.sslRequest(t, g.dialRaw(t, ""))
	_, err := tconn.Write(startupPacket(3<<16, "user", pg.User, "database", pg.Database))
	require.NoError(t, err)
	fe := pgproto3.NewFrontend(tconn, tconn)
	msg, err := fe.Receive()
	require.NoError(t, err)
	require.IsType(t, &pgproto3.AuthenticationSASL{}, msg)
	return fe, tconn
}

func TestAuthGateRefusesBeforeDialing(t *testing.T) {
	t.Run("banned", func(t *testing.T) {
		g := startGateway(t, withGate(&recordingGate{refuse: fmt.Errorf("jail: %w", proxy.ErrSourceBanned)}))
		before := pg.TCPConnectionsReceived()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		_, err := pgconn.Connect(ctx, g.connString(""))
		require.Equal(t, "28000", pgtest.Code(err), "%v", err)
		require.Contains(t, err.Error(), "banned after repeated failed logins")
		requirePostgresSawNothing(t, before)
	})
	t.Run("no slot before the deadline", func(t *testing.T) {
		g := startGateway(t, withGate(&recordingGate{block: true}), func(c *proxy.Config, _ *acl.ListenerConfig) {
			c.HandshakeTimeout = time.Second
			c.AuthTimeout = time.Second
		})
		before := pg.TCPConnectionsReceived()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		_, err := pgconn.Connect(ctx, g.connString(""))
		require.Equal(t, "53300", pgtest.Code(err), "%v", err)
		require.Contains(t, err.Error(), "too many authentications in progress from this address")
		requirePostgresSawNothing(t, before)
	})
}

// TestRevokedAuthenticationEndsAtOnce: when the gate revokes a ticket (its
// source was banned), the connection still authenticating is ended with
// FATAL 28000 and postgres's side is closed, whatever the client does.
func TestRevokedAuthenticationEndsAtOnce(t *testing.T) {
	gate := &recordingGate{}
	g := startGateway(t, withGate(gate))
	fe, conn := g.atSASLPrompt(t)
	tickets := gate.all()
	require.Len(t, tickets, 1)
	mark := pg.LogSize()

	tickets[0].cancel(fmt.Errorf("test: %w", proxy.ErrSourceBanned))
	waitFor(t, "the ticket to end", func() bool { return len(tickets[0].results()) == 1 })
	require.Equal(t, []proxy.AuthResult{proxy.AuthBanned}, tickets[0].results())
	// The client answers too late: it reads the FATAL, nothing was relayed.
	fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=abcdefghijklmnop")})
	_ = fe.Flush()
	er := readErrorResponse(t, conn)
	require.Equal(t, "28000", er.Code)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, pg.LogBarrier(ctx))
	require.NotContains(t, pg.LogSince(mark), "password authentication failed")
	waitFor(t, "the observer", func() bool { return len(g.observer.all()) == 1 })
	require.Equal(t, proxy.AuthBanned, g.observer.all()[0].Result)
}

// TestSilentClientTimesOutPerStep: a client that stops answering at the
// SCRAM prompt is dropped after AuthStepTimeout, long before the overall
// AuthTimeout, and the outcome is a timeout (which banpolicy counts as a failure).
func TestSilentClientTimesOutPerStep(t *testing.T) {
	gate := &recordingGate{}
	g := startGateway(t, withGate(gate), func(c *proxy.Config, _ *acl.ListenerConfig) {
		c.AuthStepTimeout = 300 * time.Millisecond
		c.AuthTimeout = 10 * time.Minute
	})
	_, conn := g.atSASLPrompt(t)
	// Silent close: no error message to a client that is not reading.
	requireNoMoreBytes(t, conn)
	tickets := gate.all()
	require.Len(t, tickets, 1)
	waitFor(t, "the ticket to end", func() bool { return len(tickets[0].results()) == 1 })
	require.Equal(t, []proxy.AuthResult{proxy.AuthTimedOut}, tickets[0].results())
	waitFor(t, "the observer", func() bool { return len(g.observer.all()) == 1 })
	require.Equal(t, proxy.AuthTimedOut, g.observer.all()[0].Result)
	require.Equal(t, "timed_out", proxy.AuthTimedOut.String())
}

// TestUpstreamCapQueuesLogins: with one upstream slot, held by a client
// silent at the SCRAM prompt, a legitimate login waits for the slot instead
// of failing, and gets it when the silent client's step times out.
func TestUpstreamCapQueuesLogins(t *testing.T) {
	g := startGateway(t, func(c *proxy.Config, _ *acl.ListenerConfig) {
		c.UpstreamLimiter = proxy.NewUpstreamLimiter(1)
		c.AuthStepTimeout = 2 * time.Second
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, pg.LogBarrier(ctx))
	before := pg.TCPConnectionsReceived()
	_, holder := g.atSASLPrompt(t)

	conn := g.connect(t, "")
	require.Equal(t, "1", queryOne(t, conn, "SELECT 1"))
	// The login got the slot only after the holder lost it.
	var results []proxy.AuthResult
	for _, o := range g.observer.all() {
		results = append(results, o.Result)
	}
	require.Equal(t, []proxy.AuthResult{proxy.AuthTimedOut, proxy.AuthSucceeded}, results)
	requireNoMoreBytes(t, holder)
	require.NoError(t, pg.LogBarrier(ctx))
	require.Equal(t, before+2, pg.TCPConnectionsReceived())
}

// TestUpstreamCapWaitEndsAtDeadline: a login that finds no upstream slot
// before its authentication deadline gets 53300, and postgres never hears
// of it.
func TestUpstreamCapWaitEndsAtDeadline(t *testing.T) {
	// An upstream that accepts and never answers holds the one slot until
	// its connection's deadline, which is later than the waiter's: the
	// waiter was accepted first but reached the cap last.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer silent.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	g := startGateway(t, func(c *proxy.Config, _ *acl.ListenerConfig) {
		c.Upstream = proxy.Upstream{Network: "tcp", Address: silent.Addr().String()}
		c.UpstreamLimiter = proxy.NewUpstreamLimiter(1)
		c.HandshakeTimeout = 5 * time.Second
		c.AuthTimeout = 5 * time.Second
	})
	// The waiter connects first and stops before its StartupMessage...
	waiter := g.sslRequest(t, g.dialRaw(t, ""))
	// ...while the holder takes the slot.
	holder := g.sslRequest(t, g.dialRaw(t, ""))
	_, err = holder.Write(startupPacket(3<<16, "user", pg.User))
	require.NoError(t, err)
	up := <-accepted
	defer up.Close()
	_, err = waiter.Write(startupPacket(3<<16, "user", pg.User))
	require.NoError(t, err)
	er := readErrorResponse(t, waiter)
	require.Equal(t, "53300", er.Code)
	require.True(t, strings.Contains(er.Message, "authenticating with the database server"), er.Message)
	select {
	case c := <-accepted:
		c.Close()
		t.Fatal("the waiter reached the upstream")
	default:
	}
	_, _ = io.Copy(io.Discard, holder)
}

// TestRevokedWhileWaitingForUpstream: a ban that comes while a connection
// waits for an upstream slot ends it with FATAL 28000; it never reaches
// postgres.
func TestRevokedWhileWaitingForUpstream(t *testing.T) {
	gate := &recordingGate{}
	g := startGateway(t, withGate(gate), func(c *proxy.Config, _ *acl.ListenerConfig) {
		c.UpstreamLimiter = proxy.NewUpstreamLimiter(1)
	})
	_, holder := g.atSASLPrompt(t)
	defer holder.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, pg.LogBarrier(ctx))
	before := pg.TCPConnectionsReceived()

	waiter := g.sslRequest(t, g.dialRaw(t, ""))
	_, err := waiter.Write(startupPacket(3<<16, "user", pg.User, "database", pg.Database))
	require.NoError(t, err)
	waitFor(t, "the waiter's ticket", func() bool { return len(gate.all()) == 2 })
	second := gate.all()[1]
	second.cancel(fmt.Errorf("test: %w", proxy.ErrSourceBanned))
	require.Equal(t, "28000", readErrorResponse(t, waiter).Code)
	waitFor(t, "the ticket to end", func() bool { return len(second.results()) == 1 })
	require.Equal(t, []proxy.AuthResult{proxy.AuthBanned}, second.results())
	requirePostgresSawNothing(t, before)
}
