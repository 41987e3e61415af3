package acl

import (
	"net"
	"net/netip"
)

// PeerAddr returns the normalised IP of a connection's remote address:
// IPv4-mapped IPv6 is unmapped and any zone is dropped, so the same client
// gets the same decision and the same ban key whether it reached a v4 or a
// dual-stack socket. It handles *net.TCPAddr, *net.UDPAddr and any other
// net.Addr whose String() is "host:port" with a literal IP host (names are
// never resolved). ok is false for unix sockets, nil, and anything else
// without an IP.
func PeerAddr(addr net.Addr) (netip.Addr, bool) {
	var ip netip.Addr
	switch a := addr.(type) {
	case nil:
		return netip.Addr{}, false
	case *net.TCPAddr:
		if a == nil {
			return netip.Addr{}, false
		}
		ip, _ = netip.AddrFromSlice(a.IP)
	case *net.UDPAddr:
		if a == nil {
			return netip.Addr{}, false
		}
		ip, _ = netip.AddrFromSlice(a.IP)
	case *net.UnixAddr:
		return netip.Addr{}, false
	default:
		ap, err := netip.ParseAddrPort(a.String())
		if err != nil {
			return netip.Addr{}, false
		}
		ip = ap.Addr()
	}
	if !ip.IsValid() {
		return netip.Addr{}, false
	}
	return normalize(ip), true
}
