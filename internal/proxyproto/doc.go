// Package proxyproto reads the PROXY protocol header (HAProxy's
// proxy-protocol.txt, versions 1 and 2) that a trusted TCP load balancer
// sends before the client's first byte, so the gateway can judge the real
// client instead of the balancer.
//
// The header is read frame-exactly from the net.Conn itself: ReadHeader
// never reads a byte past the header's end. Whatever the client sent after
// it (the SSLRequest, a TLS ClientHello) stays in the socket for the
// postgres negotiation, the TLS handshake and the event-loop hand-off, which
// reads the raw file descriptor. That is why github.com/pires/go-proxyproto
// serves only as the parser of bytes already read, never as a reader: its
// Conn and Read go through a bufio.Reader that may swallow the client's
// bytes, and it parses lazily on the first RemoteAddr call, which in an
// accept loop lets one slow peer stall every accept.
//
// The rules it applies:
//
//   - The receiver never guesses: a peer in the Trusted set must start with
//     a header (ErrNoHeader otherwise) and a peer outside it is never asked
//     for one; its header is garbage to the postgres protocol.
//   - One absolute deadline covers the whole header, so trickling bytes
//     cannot extend it (CVE-2021-23409 was a PROXY reader with no timeout).
//   - Sizes are bounded before anything is read: a v1 line is at most 107
//     bytes, a v2 header 16 bytes plus go-proxyproto's MaxV2HeaderSize.
//   - A v2 LOCAL command (a balancer's health check) and a v1 "UNKNOWN"
//     line carry no client; Header.Local reports them and the caller closes
//     the connection without reaching postgres. The balancer's own address
//     is never used as the client's.
//   - A PROXY command for UDP, a unix socket, or an unspecified family names
//     no TCP client whose address could be checked: ErrUnsupported.
//
// A second header after the first is not this package's concern: the bytes
// that follow go to the postgres negotiation, which refuses them.
package proxyproto
