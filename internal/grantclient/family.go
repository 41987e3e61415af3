package grantclient

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// Family returns "tcp4" or "tcp6": the family of the first address of
// address's host (HOST:PORT). A grant admits the source address the grant
// server saw, and a dual-stack runner leaves from different addresses over
// IPv4 and IPv6, so the grant request and the database connections must be
// pinned to one family: this one.
func Family(ctx context.Context, address string) (string, error) {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return "", fmt.Errorf("%s: want HOST:PORT", address)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		ips, err := net.DefaultResolver.LookupNetIP(rctx, "ip", host)
		if err != nil {
			return "", fmt.Errorf("resolving %s to pin the address family of the grant: %w", host, err)
		}
		if len(ips) == 0 {
			return "", fmt.Errorf("resolving %s to pin the address family of the grant: no address", host)
		}
		ip = ips[0]
	}
	if ip.Unmap().Is4() {
		return "tcp4", nil
	}
	return "tcp6", nil
}
