package oidcauth

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/big"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Bounds on rules written by the operator.
const (
	maxRules         = 1000
	maxRuleClaims    = 32
	maxClaimValueLen = 1024
	maxNameLen       = 63 // postgres NAMEDATALEN-1
)

// immutableClaims are the claims that keep naming the same repository or
// project when names change hands (GitHub repository_id and
// repository_owner_id, GitLab project_id and namespace_id). A rule pinning
// none of them admits whoever owns a name next.
var immutableClaims = []string{"repository_id", "repository_owner_id", "project_id", "namespace_id"}

// Rule is one compiled rule.
type Rule struct {
	// Name is the rule's name, or "#N" (1-based) without one.
	Name string
	// MaxTTL caps grants made under the rule; 0 means only the global cap.
	MaxTTL time.Duration
	// Users and Databases limit the grant; empty means any.
	Users, Databases []string
	// Route limits the grant to one route; "" means every route.
	Route  string
	claims []claimMatcher
}

// Label names the rule for messages and audit: `oidc rule "deploy"`.
func (r *Rule) Label() string {
	if strings.HasPrefix(r.Name, "#") {
		return "oidc rule " + r.Name
	}
	return "oidc rule " + strconv.Quote(r.Name)
}

type claimMatcher struct {
	name  string
	value string         // exact value, when glob is nil
	glob  *regexp.Regexp // compiled glob, when the value contains *
}

func (m claimMatcher) match(v string) bool {
	if m.glob != nil {
		return m.glob.MatchString(v)
	}
	return v == m.value
}

// Rules is an ordered list of compiled rules.
type Rules struct {
	rules    []*Rule
	warnings []string
}

// Match is the first rule admitting a token, and the claims it matched
// (name → the token's value as text), for the audit log.
type Match struct {
	Rule   *Rule
	Claims map[string]string
}

// Match returns the first rule whose claims all match claims (a verified
// token's Claims).
func (rs *Rules) Match(claims map[string]any) (*Match, bool) {
	if rs == nil {
		return nil, false
	}
next:
	for _, r := range rs.rules {
		got := make(map[string]string, len(r.claims))
		for _, m := range r.claims {
			v, ok := ClaimText(claims[m.name])
			if !ok || !m.match(v) {
				continue next
			}
			got[m.name] = v
		}
		return &Match{Rule: r, Claims: got}, true
	}
	return nil, false
}

// Len is the number of rules.
func (rs *Rules) Len() int { return len(rs.rules) }

// Warnings lists rules that compile but are risky (no immutable id
// pinned), for the log at start.
func (rs *Rules) Warnings() []string { return slices.Clone(rs.warnings) }

// ClaimText is the text a token's claim value is matched as: a string as
// is, a number as its JSON text, a boolean as true/false. Arrays, objects,
// null and absent claims have none.
func ClaimText(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case json.Number:
		return x.String(), true
	case bool:
		return strconv.FormatBool(x), true
	case float64: // claims decoded without UseNumber
		if x == math.Trunc(x) && math.Abs(x) < 1<<53 {
			return strconv.FormatInt(int64(x), 10), true
		}
		return strconv.FormatFloat(x, 'g', -1, 64), true
	default:
		return "", false
	}
}

// CompileRules checks and compiles rule configs. Errors name the rule
// ("rules[2].claims.ref: ...") and are joined, one per problem.
func CompileRules(cfgs []RuleConfig) (*Rules, error) {
	if len(cfgs) == 0 {
		return nil, errors.New("rules: at least one rule is needed (no rule would refuse every token)")
	}
	if len(cfgs) > maxRules {
		return nil, fmt.Errorf("rules: %d rules, more than %d", len(cfgs), maxRules)
	}
	rs := &Rules{}
	var errs []error
	names := map[string]bool{}
	for i, c := range cfgs {
		r, warn, err := compileRule(i, c)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if names[r.Name] {
			errs = append(errs, fmt.Errorf("rules[%d].name: %q is used twice", i, r.Name))
		}
		names[r.Name] = true
		if warn != "" {
			rs.warnings = append(rs.warnings, warn)
		}
		rs.rules = append(rs.rules, r)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return rs, nil
}

func compileRule(i int, c RuleConfig) (*Rule, string, error) {
	where := fmt.Sprintf("rules[%d]", i)
	var errs []error
	r := &Rule{Name: c.Name, Route: c.Route}
	if r.Name == "" {
		r.Name = "#" + strconv.Itoa(i+1)
	} else if strings.HasPrefix(r.Name, "#") || len(r.Name) > 64 || !printable(r.Name) {
		errs = append(errs, fmt.Errorf("%s.name: %q: want up to 64 printable characters, not starting with #", where, c.Name))
	}
	switch {
	case len(c.Claims) == 0:
		errs = append(errs, fmt.Errorf("%s.claims: at least one claim is needed (a rule without claims would admit every token of the issuer)", where))
	case len(c.Claims) > maxRuleClaims:
		errs = append(errs, fmt.Errorf("%s.claims: more than %d claims", where, maxRuleClaims))
	}
	for _, name := range slices.Sorted(maps.Keys(c.Claims)) {
		m, err := compileClaim(name, c.Claims[name])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s.claims.%s: %w", where, name, err))
			continue
		}
		r.claims = append(r.claims, m)
	}
	if c.MaxTTL != "" {
		d, err := time.ParseDuration(c.MaxTTL)
		if err != nil || d < time.Second {
			errs = append(errs, fmt.Errorf("%s.max-ttl: %q: want a duration of at least 1s, such as 30m", where, c.MaxTTL))
		}
		r.MaxTTL = d
	}
	var err error
	if r.Users, err = checkNameList(c.Users); err != nil {
		errs = append(errs, fmt.Errorf("%s.users: %w", where, err))
	}
	if r.Databases, err = checkNameList(c.Databases); err != nil {
		errs = append(errs, fmt.Errorf("%s.databases: %w", where, err))
	}
	if len(r.Route) > 128 || !printable(r.Route) {
		errs = append(errs, fmt.Errorf("%s.route: %q is not a route name", where, c.Route))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, "", err
	}
	var warn string
	if !slices.ContainsFunc(immutableClaims, func(n string) bool { _, ok := c.Claims[n]; return ok }) {
		warn = fmt.Sprintf("%s (%s) pins none of %s: names can be renamed or re-registered, ids cannot",
			where, r.Label(), strings.Join(immutableClaims, ", "))
	}
	return r, warn, nil
}

// compileClaim turns one rule value into a matcher. YAML gives strings,
// ints and bools; numbers with a fraction or exponent, null, dates and
// collections are refused because their text would not be what the
// operator sees in the token.
func compileClaim(name string, v any) (claimMatcher, error) {
	m := claimMatcher{name: name}
	if name == "" {
		return m, errors.New("empty claim name")
	}
	switch x := v.(type) {
	case string:
		m.value = x
	case int:
		m.value = strconv.Itoa(x)
	case int64:
		m.value = strconv.FormatInt(x, 10)
	case uint64:
		m.value = strconv.FormatUint(x, 10)
	case *big.Int:
		m.value = x.String()
	case bool:
		m.value = strconv.FormatBool(x)
	case float64:
		return m, fmt.Errorf("%v: a number with a fraction or exponent cannot be matched exactly; quote the value as the token shows it", x)
	case nil:
		return m, errors.New("no value: write the value to match, or \"*\" for any string without /")
	default:
		return m, fmt.Errorf("a %T cannot be matched; write a string, an integer or true/false", v)
	}
	switch {
	case m.value == "":
		return m, errors.New("empty value: write the value to match")
	case len(m.value) > maxClaimValueLen:
		return m, fmt.Errorf("value longer than %d bytes", maxClaimValueLen)
	}
	if strings.Contains(m.value, "*") {
		m.glob = compileGlob(m.value)
	}
	return m, nil
}

// compileGlob compiles a claim glob: `*` is any run of characters but
// `/`, `**` (or more stars) any run at all, everything else literal;
// anchored. Go's regexp runs in linear time, so no claim can make a match
// slow.
func compileGlob(p string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString(`^`)
	for len(p) > 0 {
		i := strings.IndexByte(p, '*')
		if i < 0 {
			b.WriteString(regexp.QuoteMeta(p))
			break
		}
		b.WriteString(regexp.QuoteMeta(p[:i]))
		n := len(p[i:]) - len(strings.TrimLeft(p[i:], "*"))
		if n == 1 {
			b.WriteString(`[^/]*`)
		} else {
			b.WriteString(`.*`)
		}
		p = p[i+n:]
	}
	b.WriteString(`$`)
	// (?s): `.` must also match a newline inside a claim value.
	return regexp.MustCompile(`(?s)` + b.String())
}

// checkNameList validates users or databases of a rule.
func checkNameList(names []string) ([]string, error) {
	out := make([]string, 0, len(names))
	for _, n := range names {
		if n == "" || len(n) > maxNameLen || strings.ContainsRune(n, 0) {
			return nil, fmt.Errorf("%q: want a name of 1 to %d bytes", n, maxNameLen)
		}
		out = append(out, n)
	}
	return out, nil
}

func printable(s string) bool {
	for _, c := range s {
		if c < 0x20 || c == 0x7f || c == '\uFFFD' {
			return false
		}
	}
	return true
}
