package proxy_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/internal/pgtest"
	"github.com/pgwarden/pgwarden/proxy"
)

func TestSSLRequestWithPgx(t *testing.T) {
	g := startGateway(t)
	conn := g.connect(t, "application_name=e2e-ssl")
	require.Equal(t, "alice app e2e-ssl", queryOne(t, conn, "SELECT current_user || ' ' || current_database() || ' ' || current_setting('application_name')"))
	// postgres sees a plaintext loopback client: the gateway.
	require.Equal(t, "f", queryOne(t, conn, "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()")[:1])

	waitFor(t, "auth outcome", func() bool { return len(g.observer.all()) == 1 })
	out := g.observer.all()[0]
	require.Equal(t, proxy.AuthSucceeded, out.Result)
	require.Equal(t, "alice", out.User)
	require.Equal(t, "app", out.Database)
	require.Equal(t, "127.0.0.1", out.Remote.String())
	require.Equal(t, "SCRAM-SHA-256", out.Mechanism)
}

func TestDirectTLSWithPgx(t *testing.T) {
	g := startGateway(t)
	conn := g.connect(t, "sslnegotiation=direct")
	require.Equal(t, "alice", queryOne(t, conn, "SELECT current_user"))
}

func TestDirectTLSRequiresALPN(t *testing.T) {
	g := startGateway(t)

	// No ALPN at all: the handshake completes, then a FATAL names the problem.
	tconn := tls.Client(g.dialRaw(t, ""), g.tlsClient())
	require.NoError(t, tconn.Handshake())
	er := readErrorResponse(t, tconn)
	require.Equal(t, "08P01", er.Code)
	require.Contains(t, er.Message, "ALPN")

	// ALPN for another protocol: the handshake itself fails.
	tconn = tls.Client(g.dialRaw(t, ""), g.tlsClient("h2"))
	require.Error(t, tconn.Handshake())
}

func TestProtocol32AndGrease(t *testing.T) {
	g := startGateway(t)
	// pgx asks for 3.2; postgres 15 answers NegotiateProtocolVersion, which
	// must reach pgx intact for it to settle on 3.0.
	conn := g.connect(t, "max_protocol_version=3.2")
	require.Equal(t, "1", queryOne(t, conn, "SELECT 1"))

	// libpq's grease: 3.9999 with an unknown _pq_ option. The gateway
	// forwards it; postgres's NegotiateProtocolVersion comes back relayed.
	tconn := g.sslRequest(t, g.dialRaw(t, ""))
	_, err := tconn.Write(startupPacket(3<<16|9999, "user", pg.User, "database", pg.Database, "_pq_.test_protocol_negotiation", "x"))
	require.NoError(t, err)
	fe := pgproto3.NewFrontend(tconn, io.Discard)
	msg, err := fe.Receive()
	require.NoError(t, err)
	npv, ok := msg.(*pgproto3.NegotiateProtocolVersion)
	require.Truef(t, ok, "want NegotiateProtocolVersion, got %T", msg)
	require.Equal(t, uint32(3<<16), npv.NewestMinorProtocol&0xffff0000|npv.NewestMinorProtocol)
	require.Equal(t, []string{"_pq_.test_protocol_negotiation"}, npv.UnrecognizedOptions)
}

func TestPsql(t *testing.T) {
	psql, ok := pgtest.HavePsql()
	if !ok {
		t.Skip("psql not installed")
	}
	g := startGateway(t)
	for _, mode := range []string{"require", "verify-full"} {
		t.Run(mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			dsn := fmt.Sprintf("host=localhost hostaddr=127.0.0.1 port=%d user=%s dbname=%s sslmode=%s sslrootcert=%s",
				g.port, pg.User, pg.Database, mode, g.caFile)
			cmd := exec.CommandContext(ctx, psql, dsn, "-XAtc", "SELECT 'through pgwarden'")
			cmd.Env = append(cmd.Environ(), "PGPASSWORD="+pg.Password, "PGCONNECT_TIMEOUT=10")
			out, err := cmd.CombinedOutput()
			require.NoError(t, err, "psql: %s", out)
			require.Equal(t, "through pgwarden", strings.TrimSpace(string(out)))
		})
	}
}

func TestPlaintextRefusedWith28000(t *testing.T) {
	g := startGateway(t)
	before := pg.TCPConnectionsReceived()

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, err := pgconn.Connect(ctx, strings.Replace(g.connString(""), "sslmode=verify-full", "sslmode=disable", 1))
	require.Error(t, err)
	require.Equal(t, "28000", pgtest.Code(err), "err: %v", err)
	require.Contains(t, err.Error(), "TLS is required")

	// Raw: the answer comes right after the 8-byte header.
	conn := g.dialRaw(t, "")
	_, err = conn.Write(startupPacket(3<<16, "user", "alice"))
	require.NoError(t, err)
	er := readErrorResponse(t, conn)
	require.Equal(t, "28000", er.Code)
	require.Equal(t, "FATAL", er.Severity)
	require.Contains(t, er.Hint, "sslmode=require")

	requirePostgresSawNothing(t, before)
	for _, o := range g.observer.all() {
		t.Errorf("a refused plaintext client reached authentication: %+v", o)
	}
}

func TestDeniedSourceGetsNothing(t *testing.T) {
	g := startGateway(t)
	before := pg.TCPConnectionsReceived()
	g.requireResetAtAccept(t, "127.0.0.2")
	waitFor(t, "rejection counted", func() bool { n, _ := g.listener.Rejected(); return n == 1 })
	requirePostgresSawNothing(t, before)
}

func TestWrongPasswordRelayed28P01(t *testing.T) {
	g := startGateway(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, err := pgconn.Connect(ctx, strings.Replace(g.connString(""), "password="+pg.Password, "password=wrong", 1))
	require.Error(t, err)
	require.Equal(t, "28P01", pgtest.Code(err), "err: %v", err)
	waitFor(t, "auth outcome", func() bool { return len(g.observer.all()) == 1 })
	out := g.observer.all()[0]
	require.Equal(t, proxy.AuthFailed, out.Result)
	require.Equal(t, "28P01", out.SQLState)
	require.Equal(t, "alice", out.User)
}

func TestClientLeavingAtPasswordPromptIsAbandoned(t *testing.T) {
	g := startGateway(t)
	tconn := g.sslRequest(t, g.dialRaw(t, ""))
	_, err := tconn.Write(startupPacket(3<<16, "user", pg.User, "database", pg.Database))
	require.NoError(t, err)
	fe := pgproto3.NewFrontend(tconn, io.Discard)
	msg, err := fe.Receive()
	require.NoError(t, err)
	require.IsType(t, &pgproto3.AuthenticationSASL{}, msg)
	require.NoError(t, tconn.Close()) // psql does this, then prompts
	waitFor(t, "auth outcome", func() bool { return len(g.observer.all()) == 1 })
	require.Equal(t, proxy.AuthAbandoned, g.observer.all()[0].Result)
}

func TestCancelPgSleep(t *testing.T) {
	g := startGateway(t)
	for _, how := range []string{"tls", "plaintext"} {
		t.Run(how, func(t *testing.T) {
			conn := g.connect(t, "")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			done := make(chan error, 1)
			go func() {
				_, err := conn.Exec(ctx, "SELECT pg_sleep(20)").ReadAll()
				done <- err
			}()
			// Wait until the query is running before cancelling it.
			waitFor(t, "pg_sleep running", func() bool {
				n, _ := countActive(pg, "SELECT pg_sleep(20)")
				return n == 1
			})
			switch how {
			case "tls": // pgx encrypts the cancel when the session is TLS
				require.NoError(t, conn.CancelRequest(ctx))
			case "plaintext": // psql's PQcancel never encrypts
				raw := g.dialRaw(t, "")
				body := binary.BigEndian.AppendUint32(nil, conn.PID())
				_, err := raw.Write(packet(80877102, append(body, conn.SecretKey()...)))
				require.NoError(t, err)
				requireNoMoreBytes(t, raw)
			}
			err := <-done
			require.Error(t, err)
			require.Equal(t, "57014", pgtest.Code(err), "err: %v", err) // query_canceled
		})
	}
}

func TestCancelWithUnknownKeyIsDropped(t *testing.T) {
	g := startGateway(t)
	conn := g.connect(t, "")
	before := pg.TCPConnectionsReceived()
	raw := g.dialRaw(t, "")
	body := binary.BigEndian.AppendUint32(nil, conn.PID())
	_, err := raw.Write(packet(80877102, append(body, 1, 2, 3, 4)))
	require.NoError(t, err)
	requireNoMoreBytes(t, raw)
	require.Equal(t, "1", queryOne(t, conn, "SELECT 1"))
	requirePostgresSawNothing(t, before)
}

func countActive(p *pgtest.Postgres, query string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, p.SuperConnString())
	if err != nil {
		return 0, err
	}
	defer c.Close(ctx)
	res, err := c.Exec(ctx, fmt.Sprintf("SELECT count(*) FROM pg_stat_activity WHERE query = '%s' AND state = 'active'", query)).ReadAll()
	if err != nil {
		return 0, err
	}
	var n int
	_, err = fmt.Sscan(string(res[0].Rows[0][0]), &n)
	return n, err
}

func TestCopyInAndOutIntact(t *testing.T) {
	g := startGateway(t)
	conn := g.connect(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err := conn.Exec(ctx, "CREATE TEMP TABLE blob (line text)").ReadAll()
	require.NoError(t, err)

	// ~8 MB of distinct lines in, the same bytes out.
	var in bytes.Buffer
	for i := 0; in.Len() < 8<<20; i++ {
		fmt.Fprintf(&in, "%08d %s\n", i, strings.Repeat(string(rune('a'+i%26)), 200+i%300))
	}
	want := sha256.Sum256(in.Bytes())
	tag, err := conn.CopyFrom(ctx, bytes.NewReader(in.Bytes()), "COPY blob FROM STDIN")
	require.NoError(t, err)
	require.Equal(t, int64(bytes.Count(in.Bytes(), []byte("\n"))), tag.RowsAffected())

	var out bytes.Buffer
	_, err = conn.CopyTo(ctx, &out, "COPY (SELECT line FROM blob ORDER BY line) TO STDOUT")
	require.NoError(t, err)
	require.Equal(t, in.Len(), out.Len())
	require.Equal(t, want, sha256.Sum256(out.Bytes()))
}

func TestGSSEncRequestThenSSLRequest(t *testing.T) {
	g := startGateway(t)
	// A client with Kerberos credentials asks for GSS encryption first; it
	// gets 'N' and goes on with SSLRequest, which pgx sends itself.
	connString := g.connString("")
	cfg, err := pgconn.ParseConfig(connString)
	require.NoError(t, err)
	dial := cfg.DialFunc
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if _, err := c.Write(packet(80877104, nil)); err != nil {
			return nil, err
		}
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return nil, err
		}
		if b[0] != 'N' {
			return nil, fmt.Errorf("GSSENCRequest answered %q", b[0])
		}
		return c, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	require.NoError(t, err)
	defer conn.Close(ctx)
	require.Equal(t, "alice", queryOne(t, conn, "SELECT current_user"))
}

func TestRepeatedNegotiationIsAProtocolViolation(t *testing.T) {
	g := startGateway(t)
	t.Run("second GSSENCRequest", func(t *testing.T) {
		conn := g.dialRaw(t, "")
		_, err := conn.Write(packet(80877104, nil))
		require.NoError(t, err)
		var b [1]byte
		_, err = io.ReadFull(conn, b[:])
		require.NoError(t, err)
		require.Equal(t, byte('N'), b[0])
		_, err = conn.Write(packet(80877104, nil))
		require.NoError(t, err)
		require.Equal(t, "08P01", readErrorResponse(t, conn).Code)
	})
	t.Run("SSLRequest inside TLS", func(t *testing.T) {
		tconn := g.sslRequest(t, g.dialRaw(t, ""))
		_, err := tconn.Write(packet(80877103, nil))
		require.NoError(t, err)
		require.Equal(t, "08P01", readErrorResponse(t, tconn).Code)
	})
	t.Run("GSSENCRequest inside TLS", func(t *testing.T) {
		tconn := g.sslRequest(t, g.dialRaw(t, ""))
		_, err := tconn.Write(packet(80877104, nil))
		require.NoError(t, err)
		require.Equal(t, "08P01", readErrorResponse(t, tconn).Code)
	})
}

func TestBytesAfterSSLRequestRejected(t *testing.T) {
	g := startGateway(t)
	before := pg.TCPConnectionsReceived()
	conn := g.dialRaw(t, "")
	// CVE-2021-23214: SSLRequest and a plaintext StartupMessage in one
	// write. The 'S' is sent (we read exactly the 8-byte request), but the
	// pipelined bytes go to the TLS layer, which cannot take them for a
	// ClientHello: nothing of them is ever read as protocol.
	msg := append(packet(80877103, nil), startupPacket(3<<16, "user", pg.User, "database", pg.Database)...)
	_, err := conn.Write(msg)
	require.NoError(t, err)
	var b [1]byte
	_, err = io.ReadFull(conn, b[:])
	require.NoError(t, err)
	require.Equal(t, byte('S'), b[0])
	rest, _ := io.ReadAll(conn)
	// Whatever comes back is a TLS alert record (0x15) or nothing; never a
	// postgres message such as 'R' or 'E'.
	if len(rest) > 0 {
		require.Equal(t, byte(0x15), rest[0], "got %q", rest)
	}
	requirePostgresSawNothing(t, before)
}

// requireSilentClose reads conn to its end and requires that nothing came
// and that the end was a FIN, not an RST: what postgres does when it drops
// a connection without a reply.
func requireSilentClose(t *testing.T, conn net.Conn) {
	t.Helper()
	got, err := io.ReadAll(conn)
	require.Empty(t, got, "the gateway answered")
	require.NoError(t, err, "want a clean close (FIN)")
}

func TestBadStartupLengths(t *testing.T) {
	metrics := &outcomeMetrics{Metrics: proxy.NopMetrics()}
	g := startGateway(t, func(c *proxy.Config, _ *acl.ListenerConfig) { c.Metrics = metrics })
	before := pg.TCPConnectionsReceived()
	closed := 0
	// badLength sends b on conn (then half-closes it if eof), and requires
	// a close without a byte, counted as bad_startup_length.
	badLength := func(t *testing.T, conn net.Conn, b []byte, eof bool) {
		t.Helper()
		_, err := conn.Write(b)
		require.NoError(t, err)
		if eof {
			require.NoError(t, conn.(*net.TCPConn).CloseWrite())
		}
		requireSilentClose(t, conn)
		closed++
		waitFor(t, "bad_startup_length counted", func() bool { return metrics.count("bad_startup_length") == closed })
		require.Zero(t, metrics.count("timeout"), "the gateway waited for more")
	}
	// Out of range: postgres logs "invalid length of startup packet" and
	// closes without a reply (ProcessStartupPacket), before TLS and in it.
	// Only the length word is sent: the close must not wait for the body.
	for _, length := range []uint32{0, 3, 7, 10001, 10005, 0x7fffffff, 0xffffffff, 0x80000000} {
		t.Run(fmt.Sprint(length), func(t *testing.T) {
			badLength(t, g.dialRaw(t, ""), binary.BigEndian.AppendUint32(nil, length), false)
		})
	}
	t.Run("inside TLS", func(t *testing.T) {
		badLength(t, g.sslRequest(t, g.dialRaw(t, "")), binary.BigEndian.AppendUint32(nil, 0x58000000), false)
	})
	t.Run("partial length word", func(t *testing.T) {
		badLength(t, g.dialRaw(t, ""), []byte{0, 0}, true)
	})
	t.Run("no bytes at all", func(t *testing.T) {
		// A port probe: not a bad startup, just a client that left.
		conn := g.dialRaw(t, "")
		require.NoError(t, conn.(*net.TCPConn).CloseWrite())
		requireSilentClose(t, conn)
		waitFor(t, "client_gone counted", func() bool { return metrics.count("client_gone") == 1 })
		require.Equal(t, closed, metrics.count("bad_startup_length"))
	})
	t.Run("node-postgres Terminate before SSLRequest", func(t *testing.T) {
		// node-postgres's client.connect(); client.end() queues Terminate
		// ('X', length 4) ahead of its SSLRequest, in one write: the first
		// length word reads 0x58000000. Postgres closes without a word and
		// the client ends cleanly; an ErrorResponse where it waits for 'S'
		// or 'N' makes it throw.
		badLength(t, g.dialRaw(t, ""), append([]byte{'X', 0, 0, 0, 4}, packet(80877103, nil)...), false)
	})
	// Bad contents after a valid length keep postgres's FATAL replies.
	t.Run("SSLRequest of 12 bytes", func(t *testing.T) {
		conn := g.dialRaw(t, "")
		_, err := conn.Write(packet(80877103, []byte{0, 0, 0, 0}))
		require.NoError(t, err)
		require.Equal(t, "08P01", readErrorResponse(t, conn).Code)
	})
	t.Run("protocol 2.0", func(t *testing.T) {
		conn := g.dialRaw(t, "")
		_, err := conn.Write(startupPacket(2<<16, "user", "alice"))
		require.NoError(t, err)
		require.Equal(t, "0A000", readErrorResponse(t, conn).Code)
	})
	t.Run("no user", func(t *testing.T) {
		tconn := g.sslRequest(t, g.dialRaw(t, ""))
		_, err := tconn.Write(startupPacket(3<<16, "database", "app"))
		require.NoError(t, err)
		require.Equal(t, "28000", readErrorResponse(t, tconn).Code)
	})
	t.Run("duplicate user", func(t *testing.T) {
		tconn := g.sslRequest(t, g.dialRaw(t, ""))
		_, err := tconn.Write(startupPacket(3<<16, "user", "alice", "user", "postgres"))
		require.NoError(t, err)
		require.Equal(t, "08P01", readErrorResponse(t, tconn).Code)
	})
	requirePostgresSawNothing(t, before)
}

func TestSilentAndTricklingClientsDroppedAtDeadline(t *testing.T) {
	g := startGateway(t, func(c *proxy.Config, _ *acl.ListenerConfig) {
		c.HandshakeTimeout = 300 * time.Millisecond
		c.AuthTimeout = 300 * time.Millisecond
	})
	t.Run("silent", func(t *testing.T) {
		conn := g.dialRaw(t, "")
		requireNoMoreBytes(t, conn)
	})
	t.Run("trickle", func(t *testing.T) {
		conn := g.dialRaw(t, "")
		// One byte of an SSLRequest every 50 ms: each read succeeds, but
		// the overall deadline still ends the connection.
		msg := packet(80877103, nil)
		start := time.Now()
		var err error
		for i := 0; err == nil && time.Since(start) < 10*time.Second; i++ {
			time.Sleep(50 * time.Millisecond)
			_, err = conn.Write(msg[i%len(msg) : i%len(msg)+1])
			if i%len(msg) == len(msg)-1 {
				msg = []byte{0, 0, 0, 8, 4, 210, 22, 47} // keep sending plausible bytes
			}
		}
		require.Error(t, err, "the trickling client was never dropped")
	})
}

func TestUpstreamDownIsPrompt(t *testing.T) {
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := closed.Addr().String()
	require.NoError(t, closed.Close())
	g := startGateway(t, func(c *proxy.Config, _ *acl.ListenerConfig) {
		c.Upstream = proxy.Upstream{Network: "tcp", Address: addr}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, err = pgconn.Connect(ctx, g.connString(""))
	require.Error(t, err)
	require.Equal(t, "08006", pgtest.Code(err), "err: %v", err)
	require.Contains(t, err.Error(), "connection refused")
}

func TestUnixSocketUpstreamAndPipelinedQuery(t *testing.T) {
	// pg_hba trusts local connections, so postgres answers AuthenticationOk
	// at once: the client can pipeline a query right behind its
	// StartupMessage, and it must arrive across the switch to raw relay.
	g := startGateway(t, func(c *proxy.Config, _ *acl.ListenerConfig) {
		c.Upstream = proxy.Upstream{Network: "unix", Address: fmt.Sprintf("%s/.s.PGSQL.%d", pg.SocketDir, pg.Port)}
	})
	tconn := g.sslRequest(t, g.dialRaw(t, ""))
	q, err := (&pgproto3.Query{String: "SELECT 'pipelined'"}).Encode(nil)
	require.NoError(t, err)
	_, err = tconn.Write(append(startupPacket(3<<16, "user", pg.User, "database", pg.Database), q...))
	require.NoError(t, err)
	fe := pgproto3.NewFrontend(tconn, io.Discard)
	var got []string
	readyCount := 0
	for readyCount < 2 {
		msg, err := fe.Receive()
		require.NoError(t, err)
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			got = append(got, string(m.Values[0]))
		case *pgproto3.ReadyForQuery:
			readyCount++
		case *pgproto3.ErrorResponse:
			t.Fatalf("error: %s %s", m.Code, m.Message)
		}
	}
	require.Equal(t, []string{"pipelined"}, got)
}

func TestShutdownDrainsSessions(t *testing.T) {
	g := startGateway(t)
	conn := g.connect(t, "")
	shutdownDone := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	go func() { shutdownDone <- g.server.Shutdown(ctx) }()
	// New connections are refused at once...
	waitFor(t, "listener closed", func() bool {
		c, err := net.DialTimeout("tcp", g.addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	// ...while the session in flight keeps working.
	require.Equal(t, "2", queryOne(t, conn, "SELECT 1+1"))
	// At the drain deadline it is closed, and Shutdown reports the cut.
	require.ErrorIs(t, <-shutdownDone, context.DeadlineExceeded)
	qctx, qcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer qcancel()
	_, err := conn.Exec(qctx, "SELECT 1").ReadAll()
	require.Error(t, err)
	require.Zero(t, g.server.Sessions())
}

// panickingAuthorizer stands in for a bug on the pre-authentication path.
type panickingAuthorizer struct{}

func (panickingAuthorizer) Authorize(*tls.ConnectionState, string) error { panic("authorizer bug") }
func (panickingAuthorizer) VerifyPeer(*tls.ConnectionState) error        { panic("authorizer bug") }

func TestPanicInPreAuthCostsOneConnection(t *testing.T) {
	g := startGateway(t, func(c *proxy.Config, _ *acl.ListenerConfig) {
		c.Authorizer = panickingAuthorizer{}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for i := 0; i < 3; i++ {
		_, err := pgconn.Connect(ctx, g.connString(""))
		require.Error(t, err)
	}
	// The process and the listener are still there.
	c, err := net.DialTimeout("tcp", g.addr, 5*time.Second)
	require.NoError(t, err)
	c.Close()
	waitFor(t, "sessions to end", func() bool { return g.server.Sessions() == 0 })
}

func TestIPv6AndMappedIPv4(t *testing.T) {
	t.Run("IPv6 listener and rule", func(t *testing.T) {
		g := startGatewayOn(t, "[::1]:0", func(_ *proxy.Config, l *acl.ListenerConfig) {
			allow, err := acl.ParseAllowlist([]string{"::1/128"})
			require.NoError(t, err)
			l.Allowlist = allow
		})
		conn := g.connect(t, "")
		require.Equal(t, "alice", queryOne(t, conn, "SELECT current_user"))
		waitFor(t, "auth outcome", func() bool { return len(g.observer.all()) == 1 })
		require.Equal(t, "::1", g.observer.all()[0].Remote.String())
	})
	t.Run("dual-stack listener, IPv4 rule, IPv4-mapped peer", func(t *testing.T) {
		// On a [::] socket an IPv4 client arrives as ::ffff:127.0.0.1: it
		// must match the IPv4 rule and be reported (and banned) as 127.0.0.1.
		g := startGatewayOn(t, "[::]:0")
		conn := g.connect(t, "")
		require.Equal(t, "alice", queryOne(t, conn, "SELECT current_user"))
		waitFor(t, "auth outcome", func() bool { return len(g.observer.all()) == 1 })
		require.Equal(t, "127.0.0.1", g.observer.all()[0].Remote.String())
		// ...while 127.0.0.2, outside the rule, is still refused.
		g.requireResetAtAccept(t, "127.0.0.2")
		waitFor(t, "rejection counted", func() bool { n, _ := g.listener.Rejected(); return n == 1 })
	})
}

func TestStartupCapPerSource(t *testing.T) {
	g := startGateway(t, func(c *proxy.Config, _ *acl.ListenerConfig) {
		c.MaxStartupsPerIP = 2
	})
	// Two silent connections hold both pre-authentication slots...
	a, b := g.dialRaw(t, ""), g.dialRaw(t, "")
	waitFor(t, "two startups in flight", func() bool { return g.server.Sessions() == 2 })
	// ...so a third is reset at once, with no byte.
	g.requireResetAtAccept(t, "")
	// An authenticated session does not hold a slot, and freed slots are
	// reused.
	a.Close()
	b.Close()
	waitFor(t, "slots freed", func() bool { return g.server.Sessions() == 0 })
	conn1 := g.connect(t, "")
	conn2 := g.connect(t, "")
	conn3 := g.connect(t, "")
	for _, conn := range []*pgconn.PgConn{conn1, conn2, conn3} {
		require.Equal(t, "1", queryOne(t, conn, "SELECT 1"))
	}
}

// oneByteWriter sends every byte in its own write (its own TCP segment, or
// its own TLS record over TLS).
type oneByteWriter struct{ net.Conn }

func (w oneByteWriter) Write(p []byte) (int, error) {
	for i := range p {
		if _, err := w.Conn.Write(p[i : i+1]); err != nil {
			return i, err
		}
	}
	return len(p), nil
}

func TestStartupSplitIntoOneByteSegments(t *testing.T) {
	// Trust auth (unix-socket upstream) so a raw client can log in.
	g := startGateway(t, func(c *proxy.Config, _ *acl.ListenerConfig) {
		c.Upstream = proxy.Upstream{Network: "unix", Address: fmt.Sprintf("%s/.s.PGSQL.%d", pg.SocketDir, pg.Port)}
	})
	raw := g.dialRaw(t, "")
	if tc, ok := raw.(*net.TCPConn); ok {
		require.NoError(t, tc.SetNoDelay(true))
	}
	_, err := oneByteWriter{raw}.Write(packet(80877103, nil))
	require.NoError(t, err)
	var b [1]byte
	_, err = io.ReadFull(raw, b[:])
	require.NoError(t, err)
	require.Equal(t, byte('S'), b[0])
	tconn := tls.Client(raw, g.tlsClient())
	require.NoError(t, tconn.Handshake())
	_, err = oneByteWriter{tconn}.Write(startupPacket(3<<16, "user", pg.User, "database", pg.Database))
	require.NoError(t, err)
	fe := pgproto3.NewFrontend(tconn, io.Discard)
	for {
		msg, err := fe.Receive()
		require.NoError(t, err)
		if er, ok := msg.(*pgproto3.ErrorResponse); ok {
			t.Fatalf("error %s: %s", er.Code, er.Message)
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			return
		}
	}
}
