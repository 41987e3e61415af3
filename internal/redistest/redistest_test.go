package redistest_test

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgwarden/pgwarden/internal/redistest"
)

// do sends one inline command and returns the first reply line.
func do(t *testing.T, addr, cmd string) (string, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(cmd + "\r\n")); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

func TestStartKillRestart(t *testing.T) {
	srv := redistest.Start(t)
	require.Equal(t, "127.0.0.1", srv.Host)
	require.True(t, strings.HasPrefix(srv.URL(), "redis://127.0.0.1:"))

	got, err := do(t, srv.Addr(), "SET k v")
	require.NoError(t, err)
	require.Equal(t, "+OK", got)
	// No persistence: CONFIG GET save is empty.
	c, err := net.Dial("tcp", srv.Addr())
	require.NoError(t, err)
	_, _ = c.Write([]byte("CONFIG GET save\r\n"))
	r := bufio.NewReader(c)
	var lines []string
	for range 5 {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		l, err := r.ReadString('\n')
		require.NoError(t, err)
		lines = append(lines, strings.TrimSpace(l))
	}
	c.Close()
	require.Equal(t, []string{"*2", "$4", "save", "$0", ""}, lines)

	srv.Kill()
	_, err = do(t, srv.Addr(), "PING")
	require.Error(t, err, "the server must be gone after Kill")

	srv.Restart(t)
	got, err = do(t, srv.Addr(), "GET k")
	require.NoError(t, err)
	require.Equal(t, "$-1", got, "a restarted server is empty")
}
