package certs

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLibpqNeverResumes is the libpq half of the session-ticket measurement:
// with tickets switched ON, real psql connects twice to a minimal
// SSLRequest+TLS endpoint built on ServerConfig, and neither connection
// resumes, while each costs the ticket record. It skips without psql.
func TestLibpqNeverResumes(t *testing.T) {
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Skip("psql not installed")
	}
	t.Parallel()
	for _, tickets := range []bool{false, true} {
		cfg, _ := testServerConfig(t, Policy{SessionTickets: tickets})
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		t.Cleanup(func() { _ = ln.Close() })
		port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)

		for i := range 2 {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			cmd := exec.CommandContext(ctx, psql, "-w", "-X", "-c", "select 1",
				"host=127.0.0.1 port="+port+" user=probe dbname=probe sslmode=require connect_timeout=5")
			cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent"} // no ~/.postgresql client cert or service file
			require.NoError(t, cmd.Start())
			state, wrote := acceptLibpq(t, ln, cfg)
			_ = cmd.Wait() // psql fails on our FATAL; that is expected
			cancel()
			assert.False(t, state.DidResume, "libpq resumed")
			t.Logf("psql connection %d tickets=%-5v %s resumed=%v server wrote %d records / %d bytes",
				i+1, tickets, tls.VersionName(state.Version), state.DidResume, wrote.records, wrote.bytes)
		}
	}
}

// acceptLibpq answers one SSLRequest with 'S', runs the TLS handshake, reads
// the StartupMessage and refuses it with a FATAL so psql exits.
func acceptLibpq(t *testing.T, ln net.Listener, cfg *tls.Config) (tls.ConnectionState, counts) {
	t.Helper()
	raw, err := ln.Accept()
	require.NoError(t, err)
	defer raw.Close()
	require.NoError(t, raw.SetDeadline(time.Now().Add(10*time.Second)))
	var req [8]byte
	_, err = io.ReadFull(raw, req[:])
	require.NoError(t, err)
	require.Equal(t, uint32(80877103), binary.BigEndian.Uint32(req[4:]), "want SSLRequest")
	_, err = raw.Write([]byte{'S'})
	require.NoError(t, err)
	counting := &recordCountingConn{Conn: raw}
	conn := tls.Server(counting, cfg)
	require.NoError(t, conn.Handshake())
	var hdr [4]byte
	_, err = io.ReadFull(conn, hdr[:])
	require.NoError(t, err)
	_, err = io.CopyN(io.Discard, conn, int64(binary.BigEndian.Uint32(hdr[:]))-4)
	require.NoError(t, err)
	msg := "SFATAL\x00C28000\x00Mprobe done\x00\x00"
	out := append([]byte{'E', 0, 0, 0, 0}, msg...)
	binary.BigEndian.PutUint32(out[1:], uint32(len(msg)+4))
	_, _ = conn.Write(out)
	_ = conn.Close()
	return conn.ConnectionState(), counting.c
}
