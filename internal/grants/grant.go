package grants

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/pgwarden/pgwarden/acl"
	"github.com/pgwarden/pgwarden/internal/fielderr"
)

// Who made a grant.
const (
	ViaAdmin = "admin" // the admin API (pgwarden grants add)
	ViaOIDC  = "oidc"  // a CI job's OIDC token (POST /v1/grants/self)
)

// maxNameLen is PostgreSQL's NAMEDATALEN-1: longer role and database names
// are truncated by postgres, so a limit naming one could never be matched
// exactly.
const maxNameLen = 63

// Grant admits Source to Route ("" = every route) until Until, optionally
// only as Users to Databases (empty = any). Its JSON is the API's and the
// state file's shape. Grants handed out by a Registry are read-only.
type Grant struct {
	ID        string       `json:"id"`
	Source    netip.Prefix `json:"source"`
	Route     string       `json:"route"`
	Users     []string     `json:"users"`
	Databases []string     `json:"databases"`
	Until     time.Time    `json:"until"`
	Reason    string       `json:"reason"`
	// CreatedBy is "admin" or the OIDC token's sub.
	CreatedBy string `json:"created_by"`
	// Via is ViaAdmin or ViaOIDC.
	Via string `json:"via"`
	// Rule names what allowed the grant, for messages and audit: e.g.
	// `oidc rule "deploy"` or "admin grant". Never the grant id.
	Rule string `json:"rule"`
	// Claims are the token claims the rule matched, as text.
	Claims     map[string]string `json:"claims,omitempty"`
	Created    time.Time         `json:"created"`
	Extensions int               `json:"extensions"`

	// used is shared by every copy of one grant (extensions included), so
	// its first use is logged once; nil on grants not from a Registry.
	used *atomic.Bool
}

// MarshalJSON writes Source as the admin API takes it and as bans show
// theirs: a single address bare ("203.0.113.7"), a wider prefix as CIDR.
func (g Grant) MarshalJSON() ([]byte, error) {
	type plain Grant // without the methods, so this does not recurse
	return json.Marshal(struct {
		plain
		Source string `json:"source"`
	}{plain(g), SourceString(g.Source)})
}

// UnmarshalJSON reads Source in either form MarshalJSON and older state
// files write ("203.0.113.7" or "203.0.113.7/32").
func (g *Grant) UnmarshalJSON(data []byte) error {
	type plain Grant
	var v struct {
		*plain
		Source string `json:"source"`
	}
	v.plain = (*plain)(g)
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	g.Source = netip.Prefix{}
	if v.Source == "" {
		return nil
	}
	if !strings.Contains(v.Source, "/") {
		a, err := netip.ParseAddr(v.Source)
		if err != nil {
			return fmt.Errorf("grant source %q: %w", v.Source, err)
		}
		g.Source = netip.PrefixFrom(a, a.BitLen())
		return nil
	}
	p, err := netip.ParsePrefix(v.Source)
	if err != nil {
		return fmt.Errorf("grant source %q: %w", v.Source, err)
	}
	g.Source = p
	return nil
}

// Answer is a grant as the admin API and the self-service endpoint answer
// it: the grant's own JSON and whether an existing grant of the source and
// route was extended. (Embedding Grant alone would promote its MarshalJSON
// and drop Extended.)
type Answer struct {
	Grant
	Extended bool
}

// MarshalJSON writes the grant's members and "extended".
func (a Answer) MarshalJSON() ([]byte, error) {
	g, err := json.Marshal(a.Grant)
	if err != nil {
		return nil, err
	}
	ext, _ := json.Marshal(a.Extended)
	out := append(g[:len(g)-1:len(g)-1], `,"extended":`...)
	return append(append(out, ext...), '}'), nil
}

// UnmarshalJSON reads what MarshalJSON writes.
func (a *Answer) UnmarshalJSON(data []byte) error {
	if err := json.Unmarshal(data, &a.Grant); err != nil {
		return err
	}
	var v struct {
		Extended bool `json:"extended"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	a.Extended = v.Extended
	return nil
}

// SourceString shows a single-address source as the address, a prefix as
// CIDR.
func SourceString(p netip.Prefix) string {
	if p.IsValid() && p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

// Active reports whether g admits connections at now.
func (g *Grant) Active(now time.Time) bool { return now.Before(g.Until) }

// clone returns a deep copy sharing only the used flag.
func (g *Grant) clone() Grant {
	c := *g
	c.Users = slices.Clone(g.Users)
	c.Databases = slices.Clone(g.Databases)
	if g.Claims != nil {
		c.Claims = make(map[string]string, len(g.Claims))
		for k, v := range g.Claims {
			c.Claims[k] = v
		}
	}
	return c
}

// Permits checks the user and database of a startup message against g's
// limits. database "" means the user's name, as postgres reads a startup
// message without one. The error is a *NotPermittedError whose text is safe
// to send to the unauthenticated client (it names the rule, not the
// grant); nil g permits nothing.
func Permits(g *Grant, user, database string) error {
	if g == nil {
		return &NotPermittedError{Rule: "no access grant", What: "user", Name: user}
	}
	if database == "" {
		database = user
	}
	if len(g.Users) > 0 && !slices.Contains(g.Users, user) {
		return &NotPermittedError{Rule: g.Rule, What: "user", Name: user}
	}
	if len(g.Databases) > 0 && !slices.Contains(g.Databases, database) {
		return &NotPermittedError{Rule: g.Rule, What: "database", Name: database}
	}
	return nil
}

// FieldSource is a grant's source address or CIDR, as errors name it.
var FieldSource = fielderr.Field{Pkg: "grants", Name: "source"}

// ParseSource parses a grant's source, an IP address or a CIDR, with the
// allowlist's strict rules (no zones, hostnames, ports, leading zeros or
// templates) and normalises it the way peers are normalised: IPv4-mapped
// IPv6 becomes IPv4 and host bits are cleared. A prefix of length 0 is
// refused: that is "everyone", which belongs in --allow, not in a grant.
func ParseSource(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "{{") {
		return netip.Prefix{}, fmt.Errorf("source %q: templates are not allowed in a grant; write an IP address or CIDR", s)
	}
	l, err := acl.ParseList(FieldSource, []string{s})
	if err != nil {
		return netip.Prefix{}, err
	}
	ps := l.Prefixes()
	if len(ps) != 1 {
		return netip.Prefix{}, fmt.Errorf("source %q: want one IP address or CIDR", s)
	}
	if ps[0].Bits() == 0 {
		return netip.Prefix{}, fmt.Errorf("source %q: a grant for every address is an allowlist entry; use --allow", s)
	}
	return ps[0], nil
}

// HostPrefix is the single-address source of ip (/32 or /128), normalised
// like acl.PeerAddr.
func HostPrefix(ip netip.Addr) netip.Prefix {
	ip = ip.Unmap().WithZone("")
	return netip.PrefixFrom(ip, ip.BitLen())
}

// newID returns a random grant id, "g-" and 16 hex digits: never an IP or
// CIDR, so Revoke can tell the two apart.
func newID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generating a grant id: %w", err)
	}
	return "g-" + hex.EncodeToString(b[:]), nil
}

// checkNames validates a user or database limit list and returns it
// sorted, deduplicated and never nil (so the JSON shows []).
func checkNames(what string, names []string) ([]string, error) {
	out := make([]string, 0, len(names))
	for _, n := range names {
		switch {
		case n == "":
			return nil, fmt.Errorf("%w: empty %s name", ErrBadRequest, what)
		case len(n) > maxNameLen:
			return nil, fmt.Errorf("%w: %s name %s is longer than %d bytes (postgres truncates names)", ErrBadRequest, what, quote(n), maxNameLen)
		case strings.ContainsRune(n, 0):
			return nil, fmt.Errorf("%w: %s name contains NUL", ErrBadRequest, what)
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// union merges two limit lists; an empty list means "any", so it wins.
func union(a, b []string) []string {
	if len(a) == 0 || len(b) == 0 {
		return []string{}
	}
	out := append(slices.Clone(a), b...)
	slices.Sort(out)
	return slices.Compact(out)
}

// quote renders a client-supplied name for a message: Go-quoted, so control
// characters and invalid UTF-8 cannot forge text, and cut to a sane length.
func quote(s string) string {
	const max = 100
	if len(s) > max {
		s = s[:max] + "..."
	}
	return strconv.Quote(s)
}
