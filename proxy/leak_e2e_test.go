package proxy_test

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

// TestNoGoroutineOrDescriptorLeaks runs every kind of connection through a
// gateway (relayed sessions closed by either side, refusals, cancels, a
// client gone mid-auth), shuts the gateway down, and requires the process's
// goroutines and file descriptors to come back to where they started.
func TestNoGoroutineOrDescriptorLeaks(t *testing.T) {
	needPostgres(t)
	settle := func() (int, int) {
		runtime.GC()
		fds, err := os.ReadDir("/proc/self/fd")
		require.NoError(t, err)
		return runtime.NumGoroutine(), len(fds)
	}
	g0, fd0 := settle()

	g := startGateway(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := 0; i < 5; i++ {
		// A session the client ends.
		conn := g.connect(t, "")
		require.Equal(t, "1", queryOne(t, conn, "SELECT 1"))
		require.NoError(t, conn.Close(ctx))

		// A session postgres ends (the backend is terminated).
		conn = g.connect(t, "")
		_, err := conn.Exec(ctx, "SELECT pg_terminate_backend(pg_backend_pid())").ReadAll()
		require.Error(t, err)

		// A client that stops reading a large result and then resets:
		// the relay has output queued for it when the RST comes.
		resetMidResult(t, g)

		// Refusals: plaintext, a wrong password, a bad length, a silent hang-up.
		_, err = pgconn.Connect(ctx, strings.Replace(g.connString(""), "sslmode=verify-full", "sslmode=disable", 1))
		require.Error(t, err)
		_, err = pgconn.Connect(ctx, strings.Replace(g.connString(""), "password="+pg.Password, "password=x", 1))
		require.Error(t, err)
		raw := g.dialRaw(t, "")
		_, _ = raw.Write(binary.BigEndian.AppendUint32(nil, 0xffffffff))
		_, _ = io.ReadAll(raw)
		raw.Close()
		g.dialRaw(t, "").Close()

		// A cancel with an unknown key.
		raw = g.dialRaw(t, "")
		_, _ = raw.Write(packet(80877102, []byte{0, 0, 0, 1, 9, 9, 9, 9}))
		_, _ = io.ReadAll(raw)
		raw.Close()
	}
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	require.NoError(t, g.server.Shutdown(sctx))
	require.Zero(t, g.server.Sessions())

	// Handlers finish asynchronously after the client sees EOF; give them a
	// bounded moment, then compare.
	deadline := time.Now().Add(10 * time.Second)
	for {
		g1, fd1 := settle()
		if g1 <= g0 && fd1 <= fd0 {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("goroutines %d -> %d, fds %d -> %d\n%s", g0, g1, fd0, fd1, buf[:n])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// resetMidResult asks for a result far larger than the socket buffers, does
// not read it, and closes its TCP connection with RST.
func resetMidResult(t *testing.T, g *gateway) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cfg, err := pgconn.ParseConfig(g.connString(""))
	require.NoError(t, err)
	var tcp *net.TCPConn
	var d net.Dialer
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err == nil {
			tcp = c.(*net.TCPConn)
		}
		return c, err
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	require.NoError(t, err)
	_ = conn.Exec(ctx, "SELECT repeat('r', 1000) FROM generate_series(1, 30000)")
	time.Sleep(200 * time.Millisecond) // postgres fills every buffer on the way
	require.NoError(t, tcp.SetLinger(0))
	require.NoError(t, tcp.Close())
}
