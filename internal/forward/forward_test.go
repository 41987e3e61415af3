package forward

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/pgwarden/pgwarden/certs"
	"github.com/pgwarden/pgwarden/internal/certstest"
	"github.com/pgwarden/pgwarden/internal/clienttls"
	"github.com/pgwarden/pgwarden/internal/fakepg"
	"github.com/pgwarden/pgwarden/internal/fielderr"
)

// gatewayTLS is a server TLS config for "localhost" and 127.0.0.1 that asks
// for (but does not require) a client certificate.
func gatewayTLS(t *testing.T, ca *certstest.CA) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{ca.ServerCertificate(t, "localhost", "127.0.0.1")},
		NextProtos:   []string{clienttls.ALPN},
		ClientAuth:   tls.RequestClientCert,
		MinVersion:   tls.VersionTLS12,
	}
}

// startForwarder runs a Forwarder for to on 127.0.0.1:0 and returns it and
// its address; it is shut down and drained in t.Cleanup.
func startForwarder(t *testing.T, to string, tcfg clienttls.Config, mod ...func(*Config)) (*Forwarder, string) {
	t.Helper()
	cfg := Config{To: to, TLS: tcfg, Logger: zaptest.NewLogger(t), DialTimeout: 5 * time.Second}
	for _, m := range mod {
		m(&cfg)
	}
	f, err := New(cfg)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- f.Serve(ln) }()
	t.Cleanup(func() {
		f.Shutdown()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		f.Drain(ctx)
		require.NoError(t, <-done)
	})
	return f, ln.Addr().String()
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func localDSN(addr, sslmode string) string {
	host, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf("host=%s port=%s user=alice dbname=app sslmode=%s connect_timeout=20", host, port, sslmode)
}

func TestForwardSessionAndCancel(t *testing.T) {
	ca := certstest.NewCA(t)
	gw := fakepg.Start(t, fakepg.Config{TLS: gatewayTLS(t, ca), WaitQuery: "SELECT wait"})
	_, addr := startForwarder(t, gw.Addr(), clienttls.Config{ServerName: "localhost", RootCAs: ca.CertPool()})
	ctx := ctxT(t)

	for _, mode := range []string{"disable", "prefer"} {
		t.Run(mode, func(t *testing.T) {
			conn, err := pgconn.Connect(ctx, localDSN(addr, mode))
			require.NoError(t, err)
			defer conn.Close(ctx)
			res, err := conn.Exec(ctx, "SELECT 1").ReadAll()
			require.NoError(t, err)
			require.Equal(t, "1", string(res[0].Rows[0][0]))
			require.Equal(t, "17.0 (fakepg)", conn.ParameterStatus("server_version"))
		})
	}
	sessions := gw.Sessions()
	require.Len(t, sessions, 2)
	require.Equal(t, "alice", sessions[0].Params["user"])
	require.Equal(t, "app", sessions[0].Params["database"])

	// A cancel from the local client reaches the gateway over a new TLS
	// connection, from the session's own local IP, with the session's key.
	conn, err := pgconn.Connect(ctx, localDSN(addr, "disable"))
	require.NoError(t, err)
	defer conn.Close(ctx)
	errc := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, "SELECT wait").ReadAll()
		errc <- err
	}()
	// The gateway holds the query until the cancel arrives, so sending
	// the cancel now (possibly before the query) is still in order: the
	// registry knows the key from the session's startup.
	require.NoError(t, conn.CancelRequest(ctx))
	err = <-errc
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	require.Equal(t, "57014", pgErr.Code)
	cancels := gw.Cancels()
	require.Len(t, cancels, 1)
	require.Equal(t, conn.PID(), cancels[0].ProcessID)
	sessions = gw.Sessions()
	last := sessions[len(sessions)-1]
	require.Equal(t, last.From.(*net.TCPAddr).IP.String(), cancels[0].From.(*net.TCPAddr).IP.String())
}

func TestForwardCancelForUnknownSessionIsDropped(t *testing.T) {
	ca := certstest.NewCA(t)
	gw := fakepg.Start(t, fakepg.Config{TLS: gatewayTLS(t, ca)})
	_, addr := startForwarder(t, gw.Addr(), clienttls.Config{ServerName: "localhost", RootCAs: ca.CertPool()})
	ctx := ctxT(t)
	conn, err := pgconn.Connect(ctx, localDSN(addr, "disable"))
	require.NoError(t, err)
	defer conn.Close(ctx)

	// The right pid with a wrong key, and an unknown pid.
	for _, cr := range []pgproto3.CancelRequest{{ProcessID: conn.PID(), SecretKey: []byte{1, 2, 3, 4}}, {ProcessID: 7, SecretKey: []byte{1, 2, 3, 4}}} {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		pkt, err := cr.Encode(nil)
		require.NoError(t, err)
		_, err = c.Write(pkt)
		require.NoError(t, err)
		// The forwarder closes once it has decided.
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := io.Copy(io.Discard, c)
		require.NoError(t, err)
		require.Zero(t, n)
		c.Close()
	}
	require.Empty(t, gw.Cancels())
}

// fatalFrom connects through the forwarder and returns the error a client
// gets.
func fatalFrom(t *testing.T, addr string) *pgconn.PgError {
	t.Helper()
	_, err := pgconn.Connect(ctxT(t), localDSN(addr, "disable"))
	require.Error(t, err)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr, "want a FATAL ErrorResponse, got %v", err)
	require.Equal(t, "FATAL", pgErr.Severity)
	return pgErr
}

func TestForwardGatewayFailuresNameTheLayer(t *testing.T) {
	ca := certstest.NewCA(t)
	good := clienttls.Config{ServerName: "localhost", RootCAs: ca.CertPool()}
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closedAddr := closed.Addr().String()
	closed.Close()

	tests := []struct {
		name     string
		gateway  string
		tls      clienttls.Config
		code     string
		contains []string
	}{
		{"gateway down", closedAddr, good, "08001", []string{"tcp:", "refused"}},
		{"unresolvable", "nonexistent.invalid:5432", good, "08001", []string{"resolve:", "nonexistent.invalid"}},
		{"answers N", fakepg.Start(t, fakepg.Config{Negotiation: fakepg.AnswerN}).Addr(), good, "08001", []string{"negotiate:", "'N'"}},
		{"S plus extra bytes", fakepg.Start(t, fakepg.Config{Negotiation: fakepg.AnswerSAndExtra}).Addr(), good, "08001",
			[]string{"negotiate:", "received unencrypted data after SSL response"}},
		{"S then not TLS", fakepg.Start(t, fakepg.Config{Negotiation: fakepg.AnswerSThenGarbage}).Addr(), good, "08001", []string{"tls:"}},
		{"wrong name", fakepg.Start(t, fakepg.Config{TLS: gatewayTLS(t, ca)}).Addr(),
			clienttls.Config{ServerName: "db.example.com", RootCAs: ca.CertPool()}, "08001",
			[]string{"certificate:", `not valid for "db.example.com"`, "localhost", "--server-name"}},
		{"unrelated CA", fakepg.Start(t, fakepg.Config{TLS: gatewayTLS(t, ca)}).Addr(),
			clienttls.Config{ServerName: "localhost", RootCAs: certstest.NewCA(t).CertPool()}, "08001",
			[]string{"certificate:", "--sslrootcert"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, addr := startForwarder(t, tc.gateway, tc.tls)
			pgErr := fatalFrom(t, addr)
			require.Equal(t, tc.code, pgErr.Code)
			for _, s := range tc.contains {
				require.Contains(t, pgErr.Message, s)
			}
		})
	}
}

func TestForwardDirectTLS(t *testing.T) {
	ca := certstest.NewCA(t)
	gw := fakepg.Start(t, fakepg.Config{Negotiation: fakepg.DirectTLS, TLS: gatewayTLS(t, ca)})
	_, addr := startForwarder(t, gw.Addr(), clienttls.Config{ServerName: "127.0.0.1", RootCAs: ca.CertPool(), DirectTLS: true})
	conn, err := pgconn.Connect(ctxT(t), localDSN(addr, "disable"))
	require.NoError(t, err)
	conn.Close(ctxT(t))

	// Direct TLS without the server agreeing to ALPN postgresql is refused.
	noALPN := gatewayTLS(t, ca)
	noALPN.NextProtos = nil
	gw2 := fakepg.Start(t, fakepg.Config{Negotiation: fakepg.DirectTLS, TLS: noALPN})
	_, addr2 := startForwarder(t, gw2.Addr(), clienttls.Config{ServerName: "localhost", RootCAs: ca.CertPool(), DirectTLS: true})
	pgErr := fatalFrom(t, addr2)
	require.Contains(t, pgErr.Message, "ALPN")
	require.Empty(t, gw2.Sessions())
}

// writeClientCert writes a client certificate for cn and returns the paths.
func writeClientCert(t *testing.T, ca *certstest.CA, dir, cn string) (string, string) {
	certPEM, keyPEM := ca.Client(t, cn)
	// Replace by rename, as cert tooling does, so a watcher never reads a
	// half-written file.
	for name, data := range map[string][]byte{"client.crt": certPEM, "client.key": keyPEM} {
		tmp := filepath.Join(dir, "."+name+".tmp")
		require.NoError(t, os.WriteFile(tmp, data, 0o600))
		require.NoError(t, os.Rename(tmp, filepath.Join(dir, name)))
	}
	return filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
}

func TestForwardClientCertificateIsReloaded(t *testing.T) {
	ca := certstest.NewCA(t)
	gw := fakepg.Start(t, fakepg.Config{TLS: gatewayTLS(t, ca)})
	dir := t.TempDir()
	certFile, keyFile := writeClientCert(t, ca, dir, "ci-one")
	loader, err := certs.NewLoader(certFile, keyFile, zaptest.NewLogger(t))
	require.NoError(t, err)
	ctx := ctxT(t)
	watchCtx, stop := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() { defer close(watched); _ = loader.Watch(watchCtx) }()
	t.Cleanup(func() { stop(); <-watched })
	_, addr := startForwarder(t, gw.Addr(), clienttls.Config{ServerName: "localhost", RootCAs: ca.CertPool(), ClientCertificate: loader.Current})

	connect := func() string {
		conn, err := pgconn.Connect(ctx, localDSN(addr, "disable"))
		require.NoError(t, err)
		conn.Close(ctx)
		s := gw.Sessions()
		return s[len(s)-1].ClientCN
	}
	require.Equal(t, "ci-one", connect())
	writeClientCert(t, ca, dir, "ci-two")
	require.Eventually(t, func() bool { return connect() == "ci-two" }, 20*time.Second, 100*time.Millisecond)
}

func TestForwardLocalNegotiationRefusals(t *testing.T) {
	ca := certstest.NewCA(t)
	gw := fakepg.Start(t, fakepg.Config{TLS: gatewayTLS(t, ca)})
	_, addr := startForwarder(t, gw.Addr(), clienttls.Config{ServerName: "localhost", RootCAs: ca.CertPool()})
	ssl := be32(8, sslRequestCode)
	gss := be32(8, gssEncRequestCode)
	tests := []struct {
		name    string
		send    []byte
		replies string // single-byte answers before the error
		want    string
	}{
		{"second SSLRequest", cat(ssl, ssl), "N", "duplicate SSLRequest"},
		{"second GSSENCRequest", cat(gss, ssl, gss), "NN", "duplicate GSSENCRequest"},
		{"length 0", be32(0), "", "invalid startup packet length 0"},
		{"length 7", be32(7), "", "invalid startup packet length 7"},
		{"length 10001", be32(10001), "", "invalid startup packet length 10001"},
		{"negative length", be32(0xffffffff), "", "invalid startup packet length"},
		{"protocol 2", cat(be32(8, 2<<16)), "", "unsupported frontend protocol 2.0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			require.NoError(t, err)
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			_, err = c.Write(tc.send)
			require.NoError(t, err)
			reply := make([]byte, len(tc.replies))
			_, err = io.ReadFull(c, reply)
			require.NoError(t, err)
			require.Equal(t, tc.replies, string(reply))
			fe := pgproto3.NewFrontend(c, c)
			msg, err := fe.Receive()
			require.NoError(t, err)
			er, ok := msg.(*pgproto3.ErrorResponse)
			require.True(t, ok, "got %T", msg)
			require.Equal(t, "08P01", er.Code)
			require.Contains(t, er.Message, tc.want)
		})
	}
	require.Empty(t, gw.Sessions(), "nothing reached the gateway")
}

func TestForwardMaxConnsAndDrain(t *testing.T) {
	ca := certstest.NewCA(t)
	gw := fakepg.Start(t, fakepg.Config{TLS: gatewayTLS(t, ca)})
	f, addr := startForwarder(t, gw.Addr(), clienttls.Config{ServerName: "localhost", RootCAs: ca.CertPool()},
		func(c *Config) { c.MaxConns = 1 })
	ctx := ctxT(t)
	conn, err := pgconn.Connect(ctx, localDSN(addr, "disable"))
	require.NoError(t, err)
	defer conn.Close(ctx)

	pgErr := fatalFrom(t, addr)
	require.Equal(t, codeTooManyConns, pgErr.Code)

	// Shutdown closes the listener; the session keeps working.
	f.Shutdown()
	_, err = net.DialTimeout("tcp", addr, time.Second)
	require.Error(t, err)
	_, err = conn.Exec(ctx, "SELECT 1").ReadAll()
	require.NoError(t, err)
	// Drain with an ended context closes it.
	dctx, cancel := context.WithCancel(ctx)
	cancel()
	require.Equal(t, 1, f.Drain(dctx))
	_, err = conn.Exec(ctx, "SELECT 1").ReadAll()
	require.Error(t, err)
	require.Zero(t, f.Sessions())
}

func TestParseListen(t *testing.T) {
	tests := []struct {
		spec, want, wantErr string
		remote              bool
	}{
		{spec: "127.0.0.1:5432", want: "tcp:127.0.0.1:5432"},
		{spec: "[::1]:6432", want: "tcp:[::1]:6432"},
		{spec: "localhost:5433", want: "tcp:127.0.0.1:5433"},
		{spec: "/run/pg", want: "unix:/run/pg/.s.PGSQL.5432"},
		{spec: "/run/pg:6543", want: "unix:/run/pg/.s.PGSQL.6543"},
		{spec: "./sock:7", want: "unix:sock/.s.PGSQL.7"},
		{spec: "0.0.0.0:5432", wantErr: "not a loopback address"},
		{spec: "10.0.0.1:5432", wantErr: "--allow-remote-listen"},
		{spec: "10.0.0.1:5432", remote: true, want: "tcp:10.0.0.1:5432"},
		{spec: ":5432", wantErr: "every interface"},
		{spec: "db.example.com:5432", wantErr: "not an IP address"},
		{spec: "127.0.0.1", wantErr: "want 127.0.0.1:PORT"},
		{spec: "127.0.0.1:99999", wantErr: "port"},
		{spec: "/" + strings.Repeat("d", 120), wantErr: "longer than"},
		{spec: "[::ffff:127.0.0.1]:5432", want: "tcp:127.0.0.1:5432"},
	}
	for _, tc := range tests {
		la, err := ParseListen(tc.spec, tc.remote)
		if tc.wantErr != "" {
			require.Contains(t, flagText(err), tc.wantErr, tc.spec)
			require.Contains(t, flagText(err), "--listen", tc.spec)
			continue
		}
		require.NoError(t, err, tc.spec)
		require.Equal(t, tc.want, la.String(), tc.spec)
	}
}

func TestListenUnixSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "fwd")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	la, err := ParseListen(dir+":6000", false)
	require.NoError(t, err)
	ln, err := Listen(la)
	require.NoError(t, err)
	fi, err := os.Stat(la.Address)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	_, err = Listen(la)
	require.ErrorContains(t, err, "another process is listening")
	// A socket left by a dead process is replaced.
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	require.NoError(t, ln.Close())
	ln, err = Listen(la)
	require.NoError(t, err)
	require.NoError(t, ln.Close())
	require.NoError(t, os.WriteFile(la.Address, nil, 0o600))
	_, err = Listen(la)
	require.ErrorContains(t, err, "not a socket")
}

func be32(vs ...uint32) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	return b
}

func cat(bs ...[]byte) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}

// TestForwardCancelTakesTheSessionPath runs two gateway instances behind
// one name (DNS round robin, emulated by the dial seam) on a host with two
// source addresses: a cancel must reach the instance its session is on,
// from the address the session left from.
func TestForwardCancelTakesTheSessionPath(t *testing.T) {
	ca := certstest.NewCA(t)
	gws := []*fakepg.Server{
		fakepg.Start(t, fakepg.Config{TLS: gatewayTLS(t, ca), WaitQuery: "SELECT wait"}),
		fakepg.Start(t, fakepg.Config{TLS: gatewayTLS(t, ca), WaitQuery: "SELECT wait"}),
	}
	sources := []string{"127.0.0.2", "127.0.0.3"}
	var mu sync.Mutex
	turn := 0
	dial := func(ctx context.Context, network, address string, local net.Addr) (net.Conn, error) {
		if address == "gw.test:5432" {
			mu.Lock()
			address = gws[turn%2].Addr()
			mu.Unlock()
		}
		if local == nil {
			mu.Lock()
			local = &net.TCPAddr{IP: net.ParseIP(sources[turn%2])}
			turn++
			mu.Unlock()
		}
		d := net.Dialer{LocalAddr: local}
		return d.DialContext(ctx, network, address)
	}
	_, addr := startForwarder(t, "gw.test:5432", clienttls.Config{ServerName: "localhost", RootCAs: ca.CertPool()},
		func(c *Config) { c.dial = dial })
	ctx := ctxT(t)
	var conns []*pgconn.PgConn
	for range 2 {
		conn, err := pgconn.Connect(ctx, localDSN(addr, "disable"))
		require.NoError(t, err)
		defer conn.Close(ctx)
		conns = append(conns, conn)
	}
	for i := 1; i >= 0; i-- { // the second session first
		errc := make(chan error, 1)
		go func() {
			_, err := conns[i].Exec(ctx, "SELECT wait").ReadAll()
			errc <- err
		}()
		require.NoError(t, conns[i].CancelRequest(ctx))
		var pgErr *pgconn.PgError
		require.ErrorAs(t, <-errc, &pgErr)
		require.Equal(t, "57014", pgErr.Code)
		cancels := gws[i].Cancels()
		require.Len(t, cancels, 1, "instance %d", i)
		require.Equal(t, conns[i].PID(), cancels[0].ProcessID)
		require.Equal(t, sources[i], cancels[0].From.(*net.TCPAddr).IP.String())
	}
}

// flagText renders err as pgwarden connect names the fields.
func flagText(err error) string {
	return fielderr.Render(err, fielderr.Names{FieldListen: "--listen", FieldAllowRemote: "--allow-remote-listen"})
}

// TestListenPortTaken: a port already held (a local postgres on the
// default 127.0.0.1:5432, say) gives an error that says what to do.
func TestListenPortTaken(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer held.Close()
	la, err := ParseListen(held.Addr().String(), false)
	require.NoError(t, err)
	_, err = Listen(la)
	require.Error(t, err)
	msg := fielderr.Render(err, fielderr.Names{FieldListen: "--listen"})
	require.Contains(t, msg, "address already in use")
	require.Contains(t, msg, "give another with --listen 127.0.0.1:PORT")
}
