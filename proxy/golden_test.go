package proxy_test

import (
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/fakepg"
	"github.com/pgwarden/pgwarden/internal/pgtest"
)

var update = flag.Bool("update", false, "rewrite the golden transcripts in testdata/*.trace")

// Golden transcripts of the exchanges before authentication: what a client
// sends and what the gateway answers, byte for byte before TLS and message
// by message inside it, for every way a connection can begin. Each case
// runs against a scripted upstream (fakepg), so a transcript is the same on
// every run; a change to any answer, its SQLSTATE or its text shows as a
// diff of testdata/NAME.trace. go test -run TestGoldenTranscripts -update
// rewrites them.
//
// Lines: "C" what the client sent, "G" what the gateway answered (one
// byte, or a message as pgproto3's JSON), "==" what happened to the
// connection (TLS established, closed).

// transcript records one exchange.
type transcript struct {
	t     *testing.T
	lines []string
}

func (tr *transcript) add(format string, a ...any) {
	tr.lines = append(tr.lines, fmt.Sprintf(format, a...))
}

// sendRaw writes bytes that are not a well-formed message.
func (tr *transcript) sendRaw(w io.Writer, b []byte) {
	tr.t.Helper()
	tr.add("C raw %s", hex.EncodeToString(b))
	_, err := w.Write(b)
	require.NoError(tr.t, err)
}

// send writes a message.
func (tr *transcript) send(w io.Writer, msg pgproto3.FrontendMessage) {
	tr.t.Helper()
	b, err := msg.Encode(nil)
	require.NoError(tr.t, err)
	tr.add("C %s", jsonOf(tr.t, msg))
	_, err = w.Write(b)
	require.NoError(tr.t, err)
}

// recvByte reads the one-byte answer to an encryption request.
func (tr *transcript) recvByte(r io.Reader) byte {
	tr.t.Helper()
	var b [1]byte
	_, err := io.ReadFull(r, b[:])
	require.NoError(tr.t, err)
	tr.add("G %q", b[0])
	return b[0]
}

// recvUntil reads messages up to and including one for which last is true.
func (tr *transcript) recvUntil(r io.Reader, last func(pgproto3.BackendMessage) bool) {
	tr.t.Helper()
	fe := pgproto3.NewFrontend(r, io.Discard)
	for {
		msg, err := fe.Receive()
		require.NoError(tr.t, err)
		tr.add("G %s", jsonOf(tr.t, msg))
		if last(msg) {
			return
		}
	}
}

// recvClose expects the gateway to close without another byte.
func (tr *transcript) recvClose(r io.Reader) {
	tr.t.Helper()
	b, err := io.ReadAll(r)
	switch {
	case len(b) > 0:
		tr.add("G raw %s (then %v)", hex.EncodeToString(b), err)
	case err == nil:
		tr.add("== closed")
	case errors.Is(err, syscall.ECONNRESET):
		tr.add("== reset")
	default:
		tr.add("== %v", err)
	}
}

// startTLS runs the client's TLS handshake, offering alpn.
func (tr *transcript) startTLS(raw net.Conn, g *gateway, alpn ...string) *tls.Conn {
	tr.t.Helper()
	c := tls.Client(raw, g.tlsClient(alpn...))
	require.NoError(tr.t, c.Handshake())
	tr.add("== TLS established, ALPN %q", c.ConnectionState().NegotiatedProtocol)
	return c
}

// jsonOf is a message as its type and its non-empty fields in
// pgproto3's JSON.
func jsonOf(t *testing.T, msg any) string {
	b, err := json.Marshal(msg)
	require.NoError(t, err)
	var fields map[string]any
	require.NoError(t, json.Unmarshal(b, &fields))
	typ := fields["Type"]
	for k, v := range fields {
		if k == "Type" || v == nil || v == "" || v == 0.0 || v == false {
			delete(fields, k)
		}
	}
	b, err = json.Marshal(fields)
	require.NoError(t, err)
	return fmt.Sprintf("%v %s", typ, b)
}

func isError(m pgproto3.BackendMessage) bool { _, ok := m.(*pgproto3.ErrorResponse); return ok }

func isReady(m pgproto3.BackendMessage) bool {
	_, ok := m.(*pgproto3.ReadyForQuery)
	return ok || isError(m)
}

func isAuthRequest(m pgproto3.BackendMessage) bool {
	_, ok := m.(*pgproto3.AuthenticationCleartextPassword)
	return ok || isError(m)
}

var (
	aliceStartup = &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "alice", "database": "app"}}
	// passwordScript is postgres's side of a cleartext-password login.
	passwordScript = fakepg.Script{
		fakepg.ExpectStartup(map[string]string{"user": "alice", "database": "app"}),
		fakepg.Send(&pgproto3.AuthenticationCleartextPassword{}),
		fakepg.ExpectAuth(pgproto3.AuthTypeCleartextPassword, &pgproto3.PasswordMessage{Password: "secret"}),
		fakepg.Send(&pgproto3.AuthenticationOk{},
			&pgproto3.ParameterStatus{Name: "server_version", Value: "17.0"},
			&pgproto3.BackendKeyData{ProcessID: 7, SecretKey: []byte{1, 2, 3, 4}},
			&pgproto3.ReadyForQuery{TxStatus: 'I'}),
		// postgres closes after Terminate.
		fakepg.Expect(&pgproto3.Terminate{}),
	}
)

// login goes from the StartupMessage to ReadyForQuery and back out.
func (tr *transcript) login(c *tls.Conn) {
	tr.send(c, aliceStartup)
	tr.recvUntil(c, isAuthRequest)
	tr.send(c, &pgproto3.PasswordMessage{Password: "secret"})
	tr.recvUntil(c, isReady)
	tr.send(c, &pgproto3.Terminate{})
	tr.recvClose(c)
}

// startupPacketWith builds a StartupMessage whose parameter list is body.
func startupPacketWith(body string) []byte { return packet(3<<16, []byte(body)) }

// goldenCase is one exchange: script is postgres's side (nil: postgres must
// not be dialed), run the client's.
type goldenCase struct {
	name   string
	script fakepg.Script
	run    func(tr *transcript, raw net.Conn, g *gateway)
}

var goldenCases = []goldenCase{
	{"sslrequest", passwordScript, func(tr *transcript, raw net.Conn, g *gateway) {
		tr.send(raw, &pgproto3.SSLRequest{})
		tr.recvByte(raw)
		tr.login(tr.startTLS(raw, g))
	}},
	{"direct-tls", passwordScript, func(tr *transcript, raw net.Conn, g *gateway) {
		tr.login(tr.startTLS(raw, g, "postgresql"))
	}},
	{"gssenc-then-ssl", passwordScript, func(tr *transcript, raw net.Conn, g *gateway) {
		tr.send(raw, &pgproto3.GSSEncRequest{})
		tr.recvByte(raw)
		tr.send(raw, &pgproto3.SSLRequest{})
		tr.recvByte(raw)
		tr.login(tr.startTLS(raw, g))
	}},
	{"plaintext-startup", nil, func(tr *transcript, raw net.Conn, _ *gateway) {
		tr.send(raw, aliceStartup)
		tr.recvUntil(raw, isError)
		tr.recvClose(raw)
	}},
	// A length word out of range is closed without a reply, as postgres
	// closes it.
	{"startup-too-short", nil, func(tr *transcript, raw net.Conn, _ *gateway) {
		tr.sendRaw(raw, []byte{0, 0, 0, 7})
		tr.recvClose(raw)
	}},
	{"startup-too-long", nil, func(tr *transcript, raw net.Conn, _ *gateway) {
		tr.sendRaw(raw, binary.BigEndian.AppendUint32(nil, 10001))
		tr.recvClose(raw)
	}},
	{"terminate-before-sslrequest", nil, func(tr *transcript, raw net.Conn, _ *gateway) {
		// node-postgres's connect() then end(): Terminate queued first.
		tr.sendRaw(raw, append([]byte{'X', 0, 0, 0, 4}, packet(80877103, nil)...))
		tr.recvClose(raw)
	}},
	{"sslrequest-bad-length", nil, func(tr *transcript, raw net.Conn, _ *gateway) {
		tr.sendRaw(raw, packet(80877103, []byte{0, 0, 0, 0}))
		tr.recvUntil(raw, isError)
		tr.recvClose(raw)
	}},
	{"protocol-2", nil, func(tr *transcript, raw net.Conn, _ *gateway) {
		tr.sendRaw(raw, packet(2<<16, nil))
		tr.recvUntil(raw, isError)
		tr.recvClose(raw)
	}},
	{"second-gssencrequest", nil, func(tr *transcript, raw net.Conn, _ *gateway) {
		tr.send(raw, &pgproto3.GSSEncRequest{})
		tr.recvByte(raw)
		tr.send(raw, &pgproto3.GSSEncRequest{})
		tr.recvUntil(raw, isError)
		tr.recvClose(raw)
	}},
	{"direct-tls-without-alpn", nil, func(tr *transcript, raw net.Conn, g *gateway) {
		c := tr.startTLS(raw, g)
		tr.recvUntil(c, isError)
		tr.recvClose(c)
	}},
}

// inTLS are the malformed first packets inside TLS, after an SSLRequest.
var inTLS = []struct {
	name string
	send func(tr *transcript, c *tls.Conn)
}{
	{"no-user", func(tr *transcript, c *tls.Conn) {
		tr.send(c, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"database": "app"}})
	}},
	{"no-terminator", func(tr *transcript, c *tls.Conn) { tr.sendRaw(c, startupPacketWith("user\x00alice\x00")) }},
	{"data-after-terminator", func(tr *transcript, c *tls.Conn) { tr.sendRaw(c, startupPacketWith("user\x00alice\x00\x00x")) }},
	{"missing-value", func(tr *transcript, c *tls.Conn) { tr.sendRaw(c, startupPacketWith("user\x00alice\x00database")) }},
	{"duplicate-parameter", func(tr *transcript, c *tls.Conn) {
		tr.sendRaw(c, startupPacketWith("user\x00alice\x00user\x00postgres\x00\x00"))
	}},
	{"sslrequest-inside-tls", func(tr *transcript, c *tls.Conn) { tr.send(c, &pgproto3.SSLRequest{}) }},
	{"gssencrequest-inside-tls", func(tr *transcript, c *tls.Conn) { tr.send(c, &pgproto3.GSSEncRequest{}) }},
}

func init() {
	for _, m := range inTLS {
		goldenCases = append(goldenCases, goldenCase{"malformed-" + m.name, nil, func(tr *transcript, raw net.Conn, g *gateway) {
			tr.send(raw, &pgproto3.SSLRequest{})
			tr.recvByte(raw)
			c := tr.startTLS(raw, g)
			m.send(tr, c)
			tr.recvUntil(c, isError)
			tr.recvClose(c)
		}})
	}
	goldenCases = append(goldenCases, goldenCase{"bad-length-inside-tls", nil, func(tr *transcript, raw net.Conn, g *gateway) {
		tr.send(raw, &pgproto3.SSLRequest{})
		tr.recvByte(raw)
		c := tr.startTLS(raw, g)
		tr.sendRaw(c, binary.BigEndian.AppendUint32(nil, 3))
		tr.recvClose(c)
	}})
	// Cancel requests never get an answer, whatever their fate.
	cancel := &pgproto3.CancelRequest{ProcessID: 7, SecretKey: []byte{9, 9, 9, 9}}
	goldenCases = append(goldenCases,
		goldenCase{"cancel-plaintext", nil, func(tr *transcript, raw net.Conn, _ *gateway) {
			tr.send(raw, cancel)
			tr.recvClose(raw)
		}},
		goldenCase{"cancel-over-tls", nil, func(tr *transcript, raw net.Conn, g *gateway) {
			tr.send(raw, &pgproto3.SSLRequest{})
			tr.recvByte(raw)
			c := tr.startTLS(raw, g)
			tr.send(c, cancel)
			tr.recvClose(c)
		}},
	)
}

func TestGoldenTranscripts(t *testing.T) {
	for _, gc := range goldenCases {
		t.Run(gc.name, func(t *testing.T) {
			upstream := pgtest.FreeAddr(t) // nothing listens there
			var script *fakepg.ScriptServer
			if gc.script != nil {
				script = fakepg.StartScript(t, gc.script)
				upstream = script.Addr()
			}
			g := startGateway(t, withUpstream(upstream))
			tr := &transcript{t: t}
			gc.run(tr, g.dialRaw(t, ""), g)
			if script != nil {
				require.NoError(t, script.Wait(10*time.Second))
			}

			got := strings.Join(tr.lines, "\n") + "\n"
			file := filepath.Join("testdata", gc.name+".trace")
			if *update {
				require.NoError(t, os.MkdirAll("testdata", 0o755))
				require.NoError(t, os.WriteFile(file, []byte(got), 0o644))
				return
			}
			want, err := os.ReadFile(file)
			require.NoError(t, err, "no golden transcript; run go test -run TestGoldenTranscripts -update ./proxy/")
			require.Equal(t, string(want), got, "the exchange differs from %s (go test -update rewrites it)", file)
		})
	}
}
