// Package netaddr checks the pieces of network addresses that operators
// type: port numbers and loopback hosts. Every flag that takes an address
// goes through it, so they all accept and refuse the same things.
package netaddr

import (
	"fmt"
	"net/netip"
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
