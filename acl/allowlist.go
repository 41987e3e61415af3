package acl

import (
	"errors"
	"net/netip"
	"slices"
	"strings"

	"github.com/pgwarden/pgwarden/internal/fielderr"
)

// Allowlist is an immutable set of IP prefixes. Build it with
// ParseAllowlist (or ParseList); share it freely between goroutines, and
// swap a whole new one in on reload (Listener.SetAllowlist).
type Allowlist struct {
	prefixes []netip.Prefix // masked, unmapped, deduplicated, sorted
	warnings []error        // field errors (fielderr), though none is fatal
}

// ParseAllowlist parses allowlist entries (FieldAllow): each is an IP, a
// CIDR, or a go-sockaddr template rendered now. Every address is validated
// strictly; every bad entry is an *EntryError naming it and the fix, all of
// them joined (errors.Join), so one run shows everything to correct. An
// empty list is ErrNoAllowlist: the gateway fails closed.
func ParseAllowlist(entries []string) (*Allowlist, error) {
	if len(nonBlank(entries)) == 0 {
		return nil, ErrNoAllowlist
	}
	return ParseList(FieldAllow, entries)
}

// ParseList parses entries the way ParseAllowlist does, naming field in
// errors (e.g. FieldIgnore). Unlike ParseAllowlist it accepts an empty
// list and returns an empty, match-nothing Allowlist.
func ParseList(field fielderr.Field, entries []string) (*Allowlist, error) {
	r := defaultRenderer()
	a := &Allowlist{}
	var errs []error
	for _, raw := range entries {
		entry := strings.TrimSpace(raw)
		ps, warns, err := r.entry(entry)
		if err != nil {
			err.Field, err.Entry = field, entry
			errs = append(errs, err)
			continue
		}
		for _, w := range warns {
			a.warnings = append(a.warnings, fielderr.Errorf("%s %s", field, w))
		}
		a.prefixes = append(a.prefixes, ps...)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	a.prefixes = dedupe(a.prefixes)
	a.warnings = append(a.warnings, a.coverageWarnings(field)...)
	return a, nil
}

// WithAddrs returns a new list holding a's prefixes and each of addrs as a
// single address (/32, /128): exact addresses, never the networks around
// them. a may be nil.
func (a *Allowlist) WithAddrs(addrs []netip.Addr) *Allowlist {
	out := &Allowlist{}
	if a != nil {
		out.prefixes = slices.Clone(a.prefixes)
		out.warnings = slices.Clone(a.warnings)
	}
	for _, ip := range addrs {
		if ip.IsValid() {
			ip = normalize(ip)
			out.prefixes = append(out.prefixes, netip.PrefixFrom(ip, ip.BitLen()))
		}
	}
	out.prefixes = dedupe(out.prefixes)
	return out
}

// Allows reports whether ip lies inside one of the prefixes. ip is
// normalised first (IPv4-mapped IPv6 is unmapped, any zone is dropped), so a
// dual-stack listener's ::ffff:10.1.2.3 matches 10.0.0.0/8. A nil Allowlist
// or an invalid address allows nothing.
func (a *Allowlist) Allows(ip netip.Addr) bool {
	if a == nil || !ip.IsValid() {
		return false
	}
	ip = normalize(ip)
	for _, p := range a.prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Prefixes returns a copy of the parsed, masked prefixes in sorted order.
func (a *Allowlist) Prefixes() []netip.Prefix {
	if a == nil {
		return nil
	}
	return slices.Clone(a.prefixes)
}

// Len is the number of distinct prefixes.
func (a *Allowlist) Len() int {
	if a == nil {
		return 0
	}
	return len(a.prefixes)
}

// AllowsAny reports whether the list contains 0.0.0.0/0 or ::/0, i.e. it
// admits every source of a family; the caller should warn loudly.
func (a *Allowlist) AllowsAny() bool {
	if a == nil {
		return false
	}
	for _, p := range a.prefixes {
		if p.Bits() == 0 {
			return true
		}
	}
	return false
}

// Warnings lists things the operator probably wants to know about the
// parsed list (host bits dropped, a template's network address widened,
// ::/0 without 0.0.0.0/0). The caller logs them; none is an error.
func (a *Allowlist) Warnings() []string {
	if a == nil {
		return nil
	}
	out := make([]string, len(a.warnings))
	for i, w := range a.warnings {
		out[i] = w.Error()
	}
	return out
}

// WarningErrors are the Warnings as field errors (fielderr), for a caller
// that names the list its own way: log each with zap.Error through
// fielderr.Core, and it names the flag.
func (a *Allowlist) WarningErrors() []error {
	if a == nil {
		return nil
	}
	return slices.Clone(a.warnings)
}

// String lists the prefixes separated by ", ", e.g. "10.0.0.0/8, 192.0.2.1/32".
func (a *Allowlist) String() string {
	if a == nil {
		return ""
	}
	s := make([]string, len(a.prefixes))
	for i, p := range a.prefixes {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// coverageWarnings points out that ::/0 does not admit IPv4 peers: netip (and
// this package) never match an IPv4 address against an IPv6 prefix.
func (a *Allowlist) coverageWarnings(field fielderr.Field) []error {
	var any4, any6 bool
	for _, p := range a.prefixes {
		if p.Bits() == 0 {
			any4 = any4 || p.Addr().Is4()
			any6 = any6 || p.Addr().Is6()
		}
	}
	if any6 && !any4 {
		return []error{fielderr.Errorf("%s ::/0 matches every IPv6 source but no IPv4 source; add 0.0.0.0/0 to match those too", field)}
	}
	return nil
}

// normalize is the one place peer addresses are canonicalised: unmapped and
// stripped of any zone, so v4-mapped and plain v4 decide (and ban) alike.
func normalize(ip netip.Addr) netip.Addr {
	return ip.Unmap().WithZone("")
}

func dedupe(ps []netip.Prefix) []netip.Prefix {
	slices.SortFunc(ps, comparePrefix)
	return slices.Compact(ps)
}

// comparePrefix orders IPv4 before IPv6, then by address, then by length.
func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

func nonBlank(entries []string) []string {
	var out []string
	for _, e := range entries {
		if strings.TrimSpace(e) != "" {
			out = append(out, e)
		}
	}
	return out
}
