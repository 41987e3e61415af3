package acl

import (
	"net"
	"net/netip"

	"github.com/pgwarden/pgwarden/internal/netaddr"
)

// PeerAddr returns the normalised IP of a connection's remote address:
// IPv4-mapped IPv6 is unmapped and any zone is dropped, so the same client
// gets the same decision and the same ban key whether it reached a v4 or a
// dual-stack socket. It handles *net.TCPAddr, *net.UDPAddr and any other
// net.Addr whose String() is "host:port" with a literal IP host (names are
// never resolved). ok is false for unix sockets, nil, and anything else
// without an IP.
func PeerAddr(addr net.Addr) (netip.Addr, bool) { return netaddr.Peer(addr) }
