// Package pptest writes PROXY protocol headers for tests, with
// go-proxyproto's own writer, as real load balancers send them.
package pptest

import (
	"net"
	"net/netip"
	"testing"

	pp "github.com/pires/go-proxyproto"
)

// Header is a PROXY header (version 1 or 2) for a TCP connection from
// client to server (both "ip:port").
func Header(t testing.TB, version byte, client, server string) []byte {
	t.Helper()
	src, err := netip.ParseAddrPort(client)
	if err != nil {
		t.Fatalf("pptest: client %q: %v", client, err)
	}
	dst, err := netip.ParseAddrPort(server)
	if err != nil {
		t.Fatalf("pptest: server %q: %v", server, err)
	}
	b, err := pp.HeaderProxyFromAddrs(version, net.TCPAddrFromAddrPort(src), net.TCPAddrFromAddrPort(dst)).Format()
	if err != nil {
		t.Fatalf("pptest: formatting a v%d header: %v", version, err)
	}
	return b
}

// Local is a v2 LOCAL header: a balancer's own health check, naming no
// client.
func Local(t testing.TB) []byte {
	t.Helper()
	b, err := (&pp.Header{Version: 2, Command: pp.LOCAL, TransportProtocol: pp.UNSPEC}).Format()
	if err != nil {
		t.Fatalf("pptest: formatting a LOCAL header: %v", err)
	}
	return b
}
