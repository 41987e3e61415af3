package acl

import (
	"fmt"
	"math/bits"
	"net/netip"
	"strconv"
	"strings"
)

// parseToken parses one literal address or CIDR strictly with net/netip and
// returns it as a masked prefix, plus a warning when the operator's text was
// normalised in a way worth telling them about. IPv4-mapped IPv6 input is
// turned into plain IPv4, because peers are unmapped before matching
// (::ffff:10.0.0.0/104 means 10.0.0.0/8, as go-sockaddr also reads it).
//
// Everything net/netip accepts loosely or go-sockaddr silently rewrites is
// refused with the reason and the fix: zones, hostnames, ports, brackets,
// leading zeros, hex or dotted netmasks, out-of-range lengths and the
// unspecified address.
func parseToken(tok string) (netip.Prefix, string, *EntryError) {
	bad := func(reason, fix string) (netip.Prefix, string, *EntryError) {
		return netip.Prefix{}, "", &EntryError{Reason: reason, Fix: fix}
	}
	if tok == "" {
		return bad("empty entry", "write an IP address or CIDR such as 10.0.0.0/8")
	}
	if strings.ContainsAny(tok, " \t\r\n,;") {
		return bad("one address or CIDR per entry", "repeat the flag for each one")
	}
	if strings.Contains(tok, "%") {
		return bad("zones are not allowed (a peer address never carries one)",
			"write "+stripZone(tok))
	}
	if ap, err := netip.ParseAddrPort(tok); err == nil {
		return bad("a port is not allowed", "write "+ap.Addr().String())
	}
	if strings.HasPrefix(tok, "[") {
		return bad("brackets are not allowed", "write "+strings.Trim(strings.SplitN(tok, "]", 2)[0], "[]"))
	}
	addrPart, lenPart, hasLen := strings.Cut(tok, "/")
	if looksLikeHostname(addrPart) {
		return bad("hostnames are not allowed: the list is matched against the peer IP and never resolved",
			"write an IP address or CIDR")
	}
	addr, err := netip.ParseAddr(addrPart)
	if err != nil {
		if fixed, ok := unpadIPv4(addrPart); ok {
			return bad("leading zeros are ambiguous (octal or decimal?)", "write "+replaceAddr(tok, addrPart, fixed))
		}
		return bad("not an IP address or CIDR", "write e.g. 10.0.0.1 or 10.0.0.0/8")
	}
	if !hasLen {
		addr = addr.Unmap()
		if addr.IsUnspecified() {
			return bad("the unspecified address never appears as a peer",
				fmt.Sprintf("write %s/0 to match every %s source", addr, family(addr)))
		}
		return netip.PrefixFrom(addr, addr.BitLen()), "", nil
	}
	n, lerr := parseLength(lenPart)
	if lerr != nil {
		return bad(lerr.reason, lerr.fixFor(addrPart))
	}
	if n > addr.BitLen() {
		return bad(fmt.Sprintf("prefix length %d is out of range for %s (0-%d)", n, family(addr), addr.BitLen()), "")
	}
	if addr.Is4In6() {
		if n < 96 {
			return bad("an IPv4-mapped prefix shorter than /96 mixes IPv4 and IPv6",
				"write the IPv4 CIDR and the IPv6 CIDR as separate entries")
		}
		addr, n = addr.Unmap(), n-96
	}
	p := netip.PrefixFrom(addr, n)
	var warn string
	if m := p.Masked(); m != p {
		// Accepted, as pg_hba.conf, iptables and net.ParseCIDR accept it
		// (and as go-sockaddr templates render an interface's address with
		// its prefix length), but it usually is a typo for a single host:
		// say how much more it admits than that.
		warn = fmt.Sprintf("%q has host bits set: it matches every address in %s; write %s/%d for the one host, or %s for the network",
			tok, m, addr, addr.BitLen(), m)
		p = m
	}
	return p, warn, nil
}

// lengthError describes a bad text after the slash.
type lengthError struct {
	reason string
	bits   int // the equivalent prefix length when known, else -1
}

func (e *lengthError) fixFor(addr string) string {
	if e.bits >= 0 {
		return fmt.Sprintf("write %s/%d", addr, e.bits)
	}
	return "write a prefix length such as /24"
}

// parseLength accepts only a plain decimal prefix length. go-sockaddr
// silently strips a trailing 8-digit hex netmask (leaving a /32), and a
// dotted netmask or "/024" is easy to misread, so each is an error that
// spells out the equivalent length when the mask is contiguous.
func parseLength(s string) (int, *lengthError) {
	if s == "" {
		return 0, &lengthError{reason: "missing prefix length after '/'", bits: -1}
	}
	if strings.Contains(s, ".") || strings.Contains(s, ":") {
		if m, err := netip.ParseAddr(s); err == nil {
			return 0, &lengthError{reason: "netmasks are not supported", bits: maskBits(m.AsSlice())}
		}
		return 0, &lengthError{reason: fmt.Sprintf("bad prefix length %q", s), bits: -1}
	}
	if len(s) == 8 || strings.HasPrefix(s, "0x") || strings.ContainsAny(s, "abcdefABCDEF") {
		if v, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 32); err == nil {
			b := uint32(v)
			return 0, &lengthError{reason: "hex netmasks are not supported",
				bits: maskBits([]byte{byte(b >> 24), byte(b >> 16), byte(b >> 8), byte(b)})}
		}
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return 0, &lengthError{reason: fmt.Sprintf("bad prefix length %q", s), bits: -1}
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || len(s) > 3 {
		return 0, &lengthError{reason: fmt.Sprintf("prefix length %s is out of range", s), bits: -1}
	}
	if len(s) > 1 && s[0] == '0' {
		return 0, &lengthError{reason: "leading zeros in a prefix length are ambiguous", bits: n}
	}
	return n, nil
}

// maskBits returns the prefix length of a contiguous netmask, or -1.
func maskBits(mask []byte) int {
	n, done := 0, false
	for _, b := range mask {
		if done && b != 0 {
			return -1
		}
		ones := bits.LeadingZeros8(^b)
		if ones != 8 {
			if b<<ones != 0 {
				return -1
			}
			done = true
		}
		n += ones
	}
	return n
}

// looksLikeHostname reports text that can only be a DNS name: it has a
// letter but no colon (IPv6 needs a colon) and is not all hex-digit groups.
func looksLikeHostname(s string) bool {
	if strings.Count(s, ":") == 1 {
		s, _, _ = strings.Cut(s, ":") // "db.example.com:5432"
	}
	if strings.Contains(s, ":") {
		return false
	}
	for _, r := range s {
		if (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || r == '-' || r == '_' {
			return true
		}
	}
	return false
}

// unpadIPv4 turns "010.0.0.1" into "10.0.0.1" when every field is decimal.
// The suggested fix reads the octets as decimal, the way a human meant them;
// the error still says the input is ambiguous because some parsers read
// leading zeros as octal (CVE-2021-29923).
func unpadIPv4(s string) (string, bool) {
	fields := strings.Split(s, ".")
	if len(fields) != 4 {
		return "", false
	}
	padded := false
	for i, f := range fields {
		if f == "" || len(f) > 4 {
			return "", false
		}
		v, err := strconv.ParseUint(f, 10, 8)
		if err != nil {
			return "", false
		}
		if len(f) > 1 && f[0] == '0' {
			padded = true
		}
		fields[i] = strconv.FormatUint(v, 10)
	}
	return strings.Join(fields, "."), padded
}

func replaceAddr(tok, oldAddr, newAddr string) string {
	return newAddr + strings.TrimPrefix(tok, oldAddr)
}

func stripZone(tok string) string {
	addr, rest, _ := strings.Cut(tok, "%")
	if _, after, ok := strings.Cut(rest, "/"); ok {
		return addr + "/" + after
	}
	return addr
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}
