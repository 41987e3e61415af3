// Package netaddr checks the pieces of network addresses that operators
// type: port numbers and loopback hosts. Every flag that takes an address
// goes through it, so they all accept and refuse the same things.
package netaddr

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Port parses a port number written in decimal digits, from min (0, "any
// free port", or 1) to 65535.
func Port(s string, min int) (int, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || int(n) < min {
		return 0, fmt.Errorf("port %q is not a number from %d to 65535", s, min)
	}
	return int(n), nil
}

// LoopbackIP parses host as a loopback IP literal (127.0.0.0/8, ::1, or
// one of them IPv4-mapped) without a zone, and returns it unmapped.
func LoopbackIP(host string) (netip.Addr, bool) {
	ip, err := netip.ParseAddr(host)
	if err != nil || ip.Zone() != "" || !ip.Unmap().IsLoopback() {
		return netip.Addr{}, false
	}
	return ip.Unmap(), true
}

// IsLocalhost reports the name localhost, in any case.
func IsLocalhost(host string) bool { return strings.EqualFold(host, "localhost") }

// Peer returns the normalised IP of a connection's remote address:
// IPv4-mapped IPv6 is unmapped and any zone is dropped, so the same client
// gets the same decision and the same ban key whether it reached a v4 or a
// dual-stack socket. It handles *net.TCPAddr, *net.UDPAddr and any other
// net.Addr whose String() is "host:port" with a literal IP host (names are
// never resolved). ok is false for unix sockets, nil, and anything else
// without an IP.
func Peer(addr net.Addr) (netip.Addr, bool) {
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
	return ip.Unmap().WithZone(""), true
}

// LocalAddrs returns every address assigned to one of the host's network
// interfaces (127.0.0.1 and ::1 on lo, the public and private addresses),
// unmapped and without zones, sorted and without repeats: exact addresses,
// not the networks around them.
func LocalAddrs() ([]netip.Addr, error) {
	ifas, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("reading the host's interface addresses: %w", err)
	}
	out := make([]netip.Addr, 0, len(ifas))
	for _, ifa := range ifas {
		var ip net.IP
		switch a := ifa.(type) {
		case *net.IPNet:
			ip = a.IP
		case *net.IPAddr:
			ip = a.IP
		}
		if addr, ok := netip.AddrFromSlice(ip); ok {
			out = append(out, addr.Unmap().WithZone(""))
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out), nil
}
