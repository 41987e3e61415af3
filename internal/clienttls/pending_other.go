//go:build !unix

package clienttls

import "net"

// Pending cannot peek without consuming on this platform and reports
// false; the exact one-byte read of the SSLRequest answer still leaves any
// injected bytes to the TLS handshake, which rejects them.
func Pending(net.Conn) bool { return false }
