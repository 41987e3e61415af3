package proxyproto

import (
	"net"
	"net/netip"
)

// Header is what a PROXY protocol header said about a connection.
type Header struct {
	// Version is 1 (the text format) or 2 (the binary one).
	Version int
	// Local is true for a v2 LOCAL command and a v1 "PROXY UNKNOWN" line:
	// the balancer opened the connection itself (a health check) or could
	// not tell who the client is. There is no client to judge, so the
	// caller closes the connection without reaching postgres. Source and
	// Destination are zero then.
	Local bool
	// Source is the client as the balancer saw it, normalised like every
	// peer address in pgwarden (IPv4-mapped IPv6 unmapped, no zone). It is
	// the address for the allowlist, bans, grants, cancel routing and logs.
	Source netip.AddrPort
	// Destination is the address the client connected to on the balancer.
	Destination netip.AddrPort
	// Len is the number of bytes the header took on the wire; exactly that
	// many were read from the connection.
	Len int
}

// SourceAddr returns Source as a *net.TCPAddr (nil when Local), for code
// that wants a net.Addr such as the connection's remote address.
func (h Header) SourceAddr() net.Addr {
	if h.Local || !h.Source.IsValid() {
		return nil
	}
	return net.TCPAddrFromAddrPort(h.Source)
}
