// Package sdtest stands in for systemd in tests: a unixgram socket where
// NOTIFY_SOCKET can point, collecting what the service sends.
package sdtest

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

// NotifySocket collects the datagrams sent to Path, one message each.
type NotifySocket struct {
	Path string
	Msgs <-chan string
}

// ListenNotify listens on a new unixgram socket until tb ends.
func ListenNotify(tb testing.TB) *NotifySocket {
	tb.Helper()
	// sun_path holds 107 bytes: keep the path short, not under a long
	// test temp dir.
	dir, err := os.MkdirTemp("", "sdn")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(dir) })
	path := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	msgs := make(chan string, 1024)
	go func() {
		defer close(msgs)
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	return &NotifySocket{Path: path, Msgs: msgs}
}
