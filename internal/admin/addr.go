package admin

import (
	"net"

	"github.com/pgwarden/pgwarden/internal/fielderr"
	"github.com/pgwarden/pgwarden/internal/netaddr"
)

// FieldAddr is Config.Addr (and the client's endpoint address).
var FieldAddr = fielderr.Field{Pkg: "admin", Name: "admin address"}

// DefaultAddr is where the client looks when told nothing else.
const DefaultAddr = "127.0.0.1:9187"

var errorf = fielderr.Errorf

// ValidateAddr checks an endpoint address and returns the address to
// bind: a literal loopback IP (127.0.0.0/8, ::1) with a port, or
// localhost:PORT, which binds 127.0.0.1 so a hosts file cannot point it
// elsewhere. Port 0 (any free port) is allowed.
func ValidateAddr(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", errorf("%s %q: expected HOST:PORT: %w; use 127.0.0.1:PORT, [::1]:PORT or localhost:PORT (e.g. %s %s)", FieldAddr, addr, err, FieldAddr, DefaultAddr)
	}
	if _, err := netaddr.Port(port, 0); err != nil {
		return "", errorf("%s %q: %w; use 127.0.0.1:PORT, [::1]:PORT or localhost:PORT (e.g. %s %s)", FieldAddr, addr, err, FieldAddr, DefaultAddr)
	}
	if netaddr.IsLocalhost(host) {
		return net.JoinHostPort("127.0.0.1", port), nil
	}
	ip, ok := netaddr.LoopbackIP(host)
	if !ok {
		return "", errorf("%s %q: the admin endpoint must listen on a loopback address, "+
			"because it has no authentication and can ban and unban sources; "+
			"use 127.0.0.1:PORT, [::1]:PORT or localhost:PORT (e.g. %s %s) "+
			"(reach it from elsewhere through an SSH tunnel)", FieldAddr, addr, FieldAddr, DefaultAddr)
	}
	return net.JoinHostPort(ip.String(), port), nil
}
