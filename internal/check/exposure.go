package check

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgwarden/pgwarden/internal/gateway"
	"github.com/pgwarden/pgwarden/proxy"
)

// hostAddrs are this host's interface addresses that other hosts can
// reach: every one but loopback, link-local and multicast.
func hostAddrs() ([]netip.Addr, error) {
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("listing this host's addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range ifaddrs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := p.Addr().Unmap()
		if ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsMulticast() || ip.IsUnspecified() {
			continue
		}
		out = append(out, ip)
	}
	return out, nil
}

// listeningSockets reads the kernel's table of listening TCP sockets
// (/proc/net/tcp and tcp6); off Linux it knows nothing.
func listeningSockets() ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		data, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", f, err)
		}
		out = append(out, parseProcNetTCP(data)...)
	}
	return out, nil
}

// parseProcNetTCP returns the local addresses of the LISTEN (state 0A)
// sockets of /proc/net/tcp or tcp6: "sl local_address rem_address st ...",
// the address in hex, each 32-bit word in host (little-endian) order.
func parseProcNetTCP(data []byte) []netip.AddrPort {
	var out []netip.AddrPort
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Scan() // the header
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || f[3] != "0A" {
			continue
		}
		hostHex, portHex, ok := strings.Cut(f[1], ":")
		if !ok {
			continue
		}
		raw, err := hex.DecodeString(hostHex)
		port, perr := strconv.ParseUint(portHex, 16, 16)
		if err != nil || perr != nil || (len(raw) != 4 && len(raw) != 16) {
			continue
		}
		for i := 0; i+4 <= len(raw); i += 4 {
			binary.BigEndian.PutUint32(raw[i:], binary.LittleEndian.Uint32(raw[i:]))
		}
		ip, _ := netip.AddrFromSlice(raw)
		out = append(out, netip.AddrPortFrom(ip.Unmap(), uint16(port)))
	}
	return out
}

// dial connects to addr within the dial timeout.
func (c *checker) dial(network, addr string) (net.Conn, error) {
	return net.DialTimeout(network, addr, c.env.DialTimeout)
}

// checkUpstream: the upstream accepts a connection, and a TCP upstream is
// not also reachable from outside.
func (c *checker) checkUpstream(rc gateway.RouteConfig) {
	up, err := gateway.ParseUpstream(rc.Upstream, rc.AllowRemoteUpstream)
	if err != nil {
		return // a config FAIL already
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), c.env.DialTimeout)
	conn, err := up.Dial(ctx)
	cancel()
	if err != nil {
		c.result("upstream", Fail, &rc, "start postgres, or point "+c.name(gateway.FieldUpstream)+" at where it listens",
			"%s does not accept connections: %s", up, describe(err))
	} else {
		// Connected and closed without a byte, which postgres does not log
		// as an error (monitoring does the same).
		_ = conn.Close()
		c.ok("upstream", &rc, "%s accepts connections (%.1f ms)", up, float64(time.Since(start).Microseconds())/1000)
	}
	if up.Network == "tcp" {
		c.checkExposure(rc, up)
	}
}

// checkExposure: postgres, which the gateway reaches on loopback, must not
// also accept connections on this host's other addresses, nor listen on
// the wildcard (which covers addresses the host gets later).
func (c *checker) checkExposure(rc gateway.RouteConfig, up proxy.Upstream) {
	host, portText, _ := net.SplitHostPort(up.Address)
	port, _ := strconv.Atoi(portText)
	if ip, err := netip.ParseAddr(host); err == nil && !ip.IsLoopback() {
		c.ok("exposure", &rc, "the upstream %s is another host (%s): its exposure is that host's to check", up.Address, c.name(gateway.FieldAllowRemoteUpstream))
		return
	}
	fix := fmt.Sprintf("in postgresql.conf set listen_addresses = 'localhost' (or '' and use the unix socket), restart postgres; or firewall port %d", port)
	addrs, err := c.env.HostAddrs()
	if err != nil {
		c.result("exposure", Warn, &rc, "", "cannot list this host's addresses: %v", err)
		return
	}
	var exposed []string
	for _, a := range addrs {
		target := net.JoinHostPort(a.String(), portText)
		if conn, err := c.dial("tcp", target); err == nil {
			_ = conn.Close()
			exposed = append(exposed, target)
		}
	}
	listening, err := c.env.Listening()
	if err != nil {
		c.result("exposure", Warn, &rc, "", "cannot read the listening sockets: %v", err)
	}
	var wildcard []string
	for _, l := range listening {
		if int(l.Port()) == port && l.Addr().IsUnspecified() {
			wildcard = append(wildcard, l.String())
		}
	}
	slices.Sort(wildcard)
	wildcard = slices.Compact(wildcard)
	var problems []string
	if len(exposed) > 0 {
		problems = append(problems, fmt.Sprintf("postgres accepts connections on %s, not only on loopback: anyone who reaches this host there bypasses the gateway",
			strings.Join(exposed, ", ")))
	}
	if len(wildcard) > 0 {
		problems = append(problems, fmt.Sprintf("a server listens on %s, every address of this host (and any it gets later), not only on loopback",
			strings.Join(wildcard, ", ")))
	}
	switch {
	case len(problems) > 0:
		c.result("exposure", Fail, &rc, fix, "%s", strings.Join(problems, "; "))
	case len(addrs) == 0:
		c.ok("exposure", &rc, "this host has no address but loopback, and nothing listens on the wildcard at port %d", port)
	default:
		c.ok("exposure", &rc, "port %d refuses connections on %s, and nothing listens on the wildcard there", port, joinAddrs(addrs))
	}
}

// checkOtherPostgres: no postgres answers on 5432-5439 of this host's
// other addresses, beyond the upstreams (checked above) and this
// configuration's own listeners.
func (c *checker) checkOtherPostgres() {
	addrs, err := c.env.HostAddrs()
	if err != nil || len(addrs) == 0 || len(c.env.PostgresPorts) == 0 {
		return // said by the exposure check
	}
	skip := map[int]bool{}
	for _, rc := range c.routes {
		if up, err := gateway.ParseUpstream(rc.Upstream, rc.AllowRemoteUpstream); err == nil && up.Network == "tcp" {
			_, p, _ := net.SplitHostPort(up.Address)
			n, _ := strconv.Atoi(p)
			skip[n] = true
		}
	}
	var found []string
	for _, a := range addrs {
		for _, port := range c.env.PostgresPorts {
			if skip[port] {
				continue
			}
			target := net.JoinHostPort(a.String(), strconv.Itoa(port))
			if what, isPostgres := c.identify(target); isPostgres {
				found = append(found, target+" ("+what+")")
			}
		}
	}
	if len(found) > 0 {
		c.result("other-postgres", Fail, nil, "stop the servers nobody uses, or set their listen_addresses = 'localhost'",
			"a postgres answers on %s: a server left behind after a move or an upgrade is reachable without the gateway", strings.Join(found, ", "))
		return
	}
	c.ok("other-postgres", nil, "no other postgres answers on ports %d-%d of %s",
		c.env.PostgresPorts[0], c.env.PostgresPorts[len(c.env.PostgresPorts)-1], joinAddrs(addrs))
}

// identify sends an SSLRequest to addr and tells what answered: a
// postgres (it answers 'S' or 'N'), unless it is this configuration's
// gateway (its TLS certificate is one of ours). Nothing listening, a reset
// at accept (a pgwarden refusing this host) or anything else is not a
// postgres.
func (c *checker) identify(addr string) (what string, isPostgres bool) {
	conn, err := c.dial("tcp", addr)
	if err != nil {
		return "", false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(c.env.DialTimeout))
	// SSLRequest: length 8, code 80877103.
	if _, err := conn.Write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}); err != nil {
		return "", false
	}
	reply := make([]byte, 1)
	if _, err := conn.Read(reply); err != nil {
		return "", false
	}
	switch reply[0] {
	case 'N':
		return "SSLRequest answered 'N': postgres without TLS", true
	case 'S':
		tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"postgresql"}}) // only to read its certificate
		if err := tc.Handshake(); err != nil {
			return "SSLRequest answered 'S'", true
		}
		leaf := tc.ConnectionState().PeerCertificates[0]
		if c.ours(leaf.Raw) {
			return "this configuration's gateway", false
		}
		return fmt.Sprintf("SSLRequest answered 'S', certificate %s", leaf.Subject), true
	}
	return "", false
}

// ours reports whether der is one of this configuration's certificates.
func (c *checker) ours(der []byte) bool {
	for _, mine := range c.certs {
		if bytes.Equal(mine, der) {
			return true
		}
	}
	return false
}

// describe reduces a dial error to its cause.
func describe(err error) string {
	var errno syscall.Errno
	switch {
	case errors.As(err, &errno):
		return errno.Error()
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return "no answer in time"
	}
	return err.Error()
}

func joinAddrs(addrs []netip.Addr) string {
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}
