package acl

import (
	"fmt"
	"net/netip"
	"strings"

	sockaddr "github.com/hashicorp/go-sockaddr"
	"github.com/hashicorp/go-sockaddr/template"
)

// renderer turns one list entry into prefixes. Interfaces are read once per
// entry; the snapshot is the template's dot (so `{{ . | include ... }}`
// works, and tests inject fake interfaces that way) and feeds the
// network-length lookup. go-sockaddr's own sources (GetAllInterfaces,
// GetPrivateIP, ...) read the host's interfaces again themselves.
type renderer struct {
	interfaces func() (sockaddr.IfAddrs, error)
}

func defaultRenderer() renderer {
	return renderer{interfaces: sockaddr.GetAllInterfaces}
}

// isTemplate reports go-sockaddr template syntax.
func isTemplate(entry string) bool {
	return strings.Contains(entry, "{{")
}

// entry parses a literal, or renders a template and parses every
// space-separated token it produced. The returned EntryError has Field and
// Entry left for the caller to fill in.
func (r renderer) entry(entry string) ([]netip.Prefix, []string, *EntryError) {
	if !isTemplate(entry) {
		p, warn, err := parseToken(entry)
		if err != nil {
			return nil, nil, err
		}
		return []netip.Prefix{p}, nonEmpty(warn), nil
	}
	ifs, err := r.interfaces()
	if err != nil {
		return nil, nil, &EntryError{Reason: "reading network interfaces", Err: err}
	}
	out, err := template.ParseIfAddrs(entry, ifs)
	if err != nil {
		return nil, nil, &EntryError{Reason: "rendering template", Err: err,
			Fix: "see https://pkg.go.dev/github.com/hashicorp/go-sockaddr/template"}
	}
	toks := strings.Fields(out)
	if len(toks) == 0 {
		// GetPrivateIP and friends return "" with a nil error when nothing
		// matches; an empty allow entry must not quietly mean "nothing" (or,
		// worse, be mistaken elsewhere for "everything").
		return nil, nil, &EntryError{Reason: "template rendered nothing (no interface address matched)",
			Fix: "fix the template or write the address or CIDR itself"}
	}
	var (
		ps    []netip.Prefix
		warns []string
	)
	for _, tok := range toks {
		p, warn, perr := parseToken(tok)
		if perr != nil {
			perr.Rendered = tok
			return nil, nil, perr
		}
		if p.IsSingleIP() {
			if wide, ok := networkOf(p.Addr(), ifs); ok {
				warns = append(warns, fmt.Sprintf("%q rendered %s, the network address of a local interface; using %s",
					entry, p.Addr(), wide))
				p = wide
			}
		}
		if warn != "" {
			warns = append(warns, fmt.Sprintf("%q rendered %s", entry, warn))
		}
		ps = append(ps, p)
	}
	return ps, warns, nil
}

// networkOf restores the prefix length that go-sockaddr's "network"
// attribute drops: `{{ GetPrivateInterfaces | attr "network" }}` renders
// "10.1.0.0", not "10.1.0.0/16", and read as a host it would allow almost
// nobody. A rendered bare address is widened only when it is exactly the
// network address of a local interface's prefix and is not itself an
// address of any local interface (so GetPrivateIP's host stays a host). If
// interfaces disagree on the length, the narrowest wins: failing towards
// fewer admitted sources.
func networkOf(a netip.Addr, ifs sockaddr.IfAddrs) (netip.Prefix, bool) {
	var best netip.Prefix
	for _, ifa := range ifs {
		ip := sockaddr.ToIPAddr(ifa.SockAddr)
		if ip == nil {
			continue
		}
		addr, ok := netip.AddrFromSlice((*ip).NetIP().To16())
		if !ok {
			continue
		}
		addr = normalize(addr)
		if addr == a {
			return netip.Prefix{}, false // a host of ours: keep it a host
		}
		bits := int((*ip).Maskbits())
		if bits >= addr.BitLen() {
			continue
		}
		n := netip.PrefixFrom(addr, bits).Masked()
		if n.Addr() == a && (!best.IsValid() || n.Bits() > best.Bits()) {
			best = n
		}
	}
	return best, best.IsValid()
}

func nonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}
