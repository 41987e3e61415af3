//go:build unix

package clienttls

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// Pending reports whether bytes are already waiting in conn's socket,
// without consuming them or waiting for any: a non-blocking MSG_PEEK. After
// the server's 'S' nothing may be there before our ClientHello has even
// been sent, so anything found is injected plaintext (CVE-2021-23222).
// Connections that are not sockets (net.Pipe in tests) report false; for
// them, and for bytes that arrive a moment later, the exact one-byte read
// still leaves them to the TLS handshake, which rejects them.
func Pending(conn net.Conn) bool {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	n := 0
	_ = raw.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, _ = unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return true // never wait for readiness: we want what is there now
	})
	return n > 0
}
