package proxyproto

import (
	"net"
	"net/netip"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/internal/fielderr"
)

// FieldTrusted is the list ParseTrusted reads; errors and warnings name it
// (the command line renders it as its flag).
var FieldTrusted = fielderr.Field{Pkg: "proxyproto", Name: "proxy-protocol-from"}

// Trusted is the set of peers (load balancers) that must start every
// connection with a PROXY header. It is immutable; swap a new one in on
// reload. A nil *Trusted trusts nobody: PROXY support is off.
type Trusted struct {
	list  *acl.Allowlist
	field fielderr.Field // what the warnings name
}

// ParseTrusted parses CIDRs, addresses or go-sockaddr templates with the
// same strict rules as --allow (acl.ParseList). No entries at all yields
// (nil, nil): nobody is trusted.
func ParseTrusted(entries []string) (*Trusted, error) {
	return ParseTrustedAs(FieldTrusted, entries)
}

// ParseTrustedAs is ParseTrusted for a list that errors name as field.
func ParseTrustedAs(field fielderr.Field, entries []string) (*Trusted, error) {
	list, err := acl.ParseList(field, entries)
	if err != nil {
		return nil, err
	}
	if list.Len() == 0 {
		return nil, nil
	}
	return &Trusted{list: list, field: field}, nil
}

// Contains reports whether peer, a connection's remote address, is a
// trusted balancer. IPv4-mapped IPv6 matches its IPv4 entry; unix sockets
// and anything without an IP never match.
func (t *Trusted) Contains(peer net.Addr) bool {
	ip, ok := acl.PeerAddr(peer)
	return ok && t.ContainsAddr(ip)
}

// ContainsAddr is Contains for an address already extracted.
func (t *Trusted) ContainsAddr(ip netip.Addr) bool {
	return t != nil && t.list.Allows(ip)
}

// Len is the number of distinct prefixes (0 for nil).
func (t *Trusted) Len() int {
	if t == nil {
		return 0
	}
	return t.list.Len()
}

// String lists the prefixes, e.g. "10.0.0.5/32, 10.0.1.0/24".
func (t *Trusted) String() string {
	if t == nil {
		return ""
	}
	return t.list.String()
}

// Warnings are things to log at startup, none of them an error: the
// parser's own (host bits dropped and the like) and, loudest, a prefix that
// trusts every source of a family, which lets anyone who can reach the
// port name any client address it likes in its header.
func (t *Trusted) Warnings() []string {
	if t == nil {
		return nil
	}
	w := t.list.Warnings()
	if t.list.AllowsAny() {
		w = append(w, t.field.Name+" trusts every source of an address family: any peer can then claim any client address; list only the load balancers")
	}
	return w
}
