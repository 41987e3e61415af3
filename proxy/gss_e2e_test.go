package proxy_test

import (
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/proxy"
)

// fakeGSSPostgres plays postgres's side of a two-round GSSAPI exchange
// (auth.c pg_GSS_recvauth): AuthenticationGSS, a client token, a server
// token and another client token, then the final server token followed,
// after a pause and with no client reply, by AuthenticationOk. Building a
// Kerberos realm is not needed to test the relay's part, which is only the
// order of messages. It reports the query it receives after ReadyForQuery.
func fakeGSSPostgres(t *testing.T) (addr string, queries <-chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		be := pgproto3.NewBackend(c, c)
		if _, err := be.ReceiveStartupMessage(); err != nil {
			t.Errorf("fake postgres: startup: %v", err)
			return
		}
		expectToken := func(authType uint32, want string) bool {
			if err := be.SetAuthType(authType); err != nil {
				t.Errorf("fake postgres: %v", err)
				return false
			}
			m, err := be.Receive()
			if err != nil {
				t.Errorf("fake postgres: waiting for %q: %v", want, err)
				return false
			}
			r, ok := m.(*pgproto3.GSSResponse)
			if !ok || string(r.Data) != want {
				t.Errorf("fake postgres: got %#v, want GSSResponse %q", m, want)
				return false
			}
			return true
		}
		send := func(msgs ...pgproto3.BackendMessage) {
			for _, m := range msgs {
				be.Send(m)
			}
			_ = be.Flush()
		}
		send(&pgproto3.AuthenticationGSS{})
		if !expectToken(pgproto3.AuthTypeGSS, "client-1") {
			return
		}
		send(&pgproto3.AuthenticationGSSContinue{Data: []byte("server-1")})
		if !expectToken(pgproto3.AuthTypeGSSCont, "client-2") {
			return
		}
		// Context complete: the last token, then (no reply expected) Ok.
		send(&pgproto3.AuthenticationGSSContinue{Data: []byte("server-final")})
		time.Sleep(200 * time.Millisecond)
		send(&pgproto3.AuthenticationOk{},
			&pgproto3.BackendKeyData{ProcessID: 7, SecretKey: []byte{1, 2, 3, 4}},
			&pgproto3.ReadyForQuery{TxStatus: 'I'})
		m, err := be.Receive()
		if err != nil {
			t.Errorf("fake postgres: waiting for a query: %v", err)
			return
		}
		if q, ok := m.(*pgproto3.Query); ok {
			got <- q.String
		}
		send(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	}()
	return ln.Addr().String(), got
}

// TestGSSAPIFinalTokenNeedsNoReply relays a GSSAPI exchange whose last
// server token is followed by AuthenticationOk with nothing from the client
// in between, as libpq behaves: the relay must not wait for a client reply
// that never comes.
func TestGSSAPIFinalTokenNeedsNoReply(t *testing.T) {
	upstream, queries := fakeGSSPostgres(t)
	g := startGateway(t, func(c *proxy.Config, _ *acl.ListenerConfig) {
		c.Upstream = proxy.Upstream{Network: "tcp", Address: upstream}
	})
	conn := g.sslRequest(t, g.dialRaw(t, ""))
	require.NoError(t, conn.SetDeadline(time.Now().Add(15*time.Second)))
	_, err := conn.Write(startupPacket(3<<16, "user", "alice", "database", "app"))
	require.NoError(t, err)
	fe := pgproto3.NewFrontend(conn, conn)
	receive := func() pgproto3.BackendMessage {
		t.Helper()
		m, err := fe.Receive()
		require.NoError(t, err)
		return m
	}
	token := func(data string) {
		fe.Send(&pgproto3.GSSResponse{Data: []byte(data)})
		require.NoError(t, fe.Flush())
	}

	require.IsType(t, &pgproto3.AuthenticationGSS{}, receive())
	token("client-1")
	m := receive()
	require.IsType(t, &pgproto3.AuthenticationGSSContinue{}, m)
	require.Equal(t, "server-1", string(m.(*pgproto3.AuthenticationGSSContinue).Data))
	token("client-2")
	m = receive()
	require.IsType(t, &pgproto3.AuthenticationGSSContinue{}, m)
	require.Equal(t, "server-final", string(m.(*pgproto3.AuthenticationGSSContinue).Data))
	// The client's context is complete too: it sends nothing and waits.
	require.IsType(t, &pgproto3.AuthenticationOk{}, receive())
	require.IsType(t, &pgproto3.BackendKeyData{}, receive())
	require.IsType(t, &pgproto3.ReadyForQuery{}, receive())

	fe.Send(&pgproto3.Query{String: "SELECT 1"})
	require.NoError(t, fe.Flush())
	select {
	case q := <-queries:
		require.Equal(t, "SELECT 1", q)
	case <-time.After(10 * time.Second):
		t.Fatal("the query never reached postgres")
	}
	require.IsType(t, &pgproto3.CommandComplete{}, receive())

	waitFor(t, "the observer to see the login", func() bool {
		for _, o := range g.observer.all() {
			if o.Result == proxy.AuthSucceeded {
				return true
			}
		}
		return false
	})
}
