package proxy_test

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/fakepg"
	"github.com/pgwarden/pgwarden/proxy"
)

// gssScript plays postgres's side of a two-round GSSAPI exchange (auth.c
// pg_GSS_recvauth): AuthenticationGSS, a client token, a server token and
// another client token, then the final server token followed, after a
// pause and with no client reply, by AuthenticationOk. Building a Kerberos
// realm is not needed to test the relay's part, which is only the order of
// messages. It ends by expecting the query the client sends after
// ReadyForQuery.
var gssScript = fakepg.Script{
	fakepg.ExpectStartup(map[string]string{"user": "alice", "database": "app"}),
	fakepg.Send(&pgproto3.AuthenticationGSS{}),
	fakepg.ExpectAuth(pgproto3.AuthTypeGSS, &pgproto3.GSSResponse{Data: []byte("client-1")}),
	fakepg.Send(&pgproto3.AuthenticationGSSContinue{Data: []byte("server-1")}),
	fakepg.ExpectAuth(pgproto3.AuthTypeGSSCont, &pgproto3.GSSResponse{Data: []byte("client-2")}),
	// Context complete: the last token, then (no reply expected) Ok.
	fakepg.Send(&pgproto3.AuthenticationGSSContinue{Data: []byte("server-final")}),
	fakepg.Pause(200 * time.Millisecond),
	fakepg.Send(&pgproto3.AuthenticationOk{},
		&pgproto3.BackendKeyData{ProcessID: 7, SecretKey: []byte{1, 2, 3, 4}},
		&pgproto3.ReadyForQuery{TxStatus: 'I'}),
	fakepg.Expect(&pgproto3.Query{String: "SELECT 1"}),
	fakepg.Send(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'}),
}

// TestGSSAPIFinalTokenNeedsNoReply relays a GSSAPI exchange whose last
// server token is followed by AuthenticationOk with nothing from the client
// in between, as libpq behaves: the relay must not wait for a client reply
// that never comes.
func TestGSSAPIFinalTokenNeedsNoReply(t *testing.T) {
	upstream := fakepg.StartScript(t, gssScript)
	g := startGateway(t, withUpstream(upstream.Addr()))
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
	require.IsType(t, &pgproto3.CommandComplete{}, receive())
	require.NoError(t, upstream.Wait(10*time.Second), "postgres did not see the exchange and the query as scripted")

	waitFor(t, "the observer to see the login", func() bool {
		for _, o := range g.observer.all() {
			if o.Result == proxy.AuthSucceeded {
				return true
			}
		}
		return false
	})
}
