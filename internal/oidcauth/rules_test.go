package oidcauth

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// issueExample is the rules block of the feature's specification.
const issueExample = `
issuer: https://token.actions.githubusercontent.com
audience: pgwarden-prod
jwks: https://token.actions.githubusercontent.com/.well-known/jwks
rules:                              # the first rule whose claims all match wins
  - claims: {repository_id: "123456", ref: "refs/heads/main", environment: "production"}
    max-ttl: 30m
    users: [migrator]
    databases: [shop]
`

func TestParseFileConfig(t *testing.T) {
	t.Parallel()
	fc, err := ParseFileConfig([]byte(issueExample))
	require.NoError(t, err)
	require.Equal(t, "https://token.actions.githubusercontent.com", fc.Issuer)
	require.Equal(t, "pgwarden-prod", fc.Audience)
	require.Len(t, fc.Rules, 1)
	rs, err := CompileRules(fc.Rules)
	require.NoError(t, err)
	r := rs.rules[0]
	require.Equal(t, 30*time.Minute, r.MaxTTL)
	require.Equal(t, []string{"migrator"}, r.Users)
	require.Equal(t, []string{"shop"}, r.Databases)
	require.Equal(t, "", r.Route)
	require.Equal(t, "oidc rule #1", r.Label())
	require.Empty(t, rs.Warnings(), "repository_id is pinned")

	_, err = ParseFileConfig([]byte("issuer: x\nrules:\n  - claims: {a: b}\n    max_ttl: 30m\n"))
	require.ErrorContains(t, err, `line 4: unknown key "max_ttl" in a rule (a rule takes name, claims, max-ttl`, "a typo is an error, not a missing limit")
	_, err = ParseFileConfig([]byte("issuer: x\nrule: []\n"))
	require.ErrorContains(t, err, `unknown key "rule" in the oidc section`)
}

func TestCompileRulesErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		yaml    string
		wantErr string
	}{
		{"no rules", "rules: []", "at least one rule"},
		{"no claims", "rules: [{users: [a]}]", "rules[0].claims: at least one claim"},
		{"float", "rules: [{claims: {run_id: 1.5}}]", "rules[0].claims.run_id: 1.5: a number with a fraction"},
		{"null", "rules: [{claims: {ref: }}]", "rules[0].claims.ref: no value"},
		{"empty string", `rules: [{claims: {ref: ""}}]`, "empty value"},
		{"list", "rules: [{claims: {ref: [a, b]}}]", "cannot be matched"},
		{"map", "rules: [{claims: {ref: {a: b}}}]", "cannot be matched"},
		{"bad ttl", "rules: [{claims: {a: b}, max-ttl: soon}]", `rules[0].max-ttl: "soon"`},
		{"tiny ttl", "rules: [{claims: {a: b}, max-ttl: 10ms}]", "at least 1s"},
		{"long user", "rules: [{claims: {a: b}, users: [" + strings.Repeat("u", 64) + "]}]", "rules[0].users"},
		{"empty database", `rules: [{claims: {a: b}, databases: [""]}]`, "rules[0].databases"},
		{"duplicate names", "rules: [{name: x, claims: {a: b}}, {name: x, claims: {a: c}}]", `rules[1].name: "x" is used twice`},
		{"name like a number", "rules: [{name: '#2', claims: {a: b}}]", "not starting with #"},
		{"second rule bad", "rules: [{claims: {a: b}}, {claims: {}}]", "rules[1].claims"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fc, err := ParseFileConfig([]byte(tc.yaml))
			require.NoError(t, err)
			_, err = CompileRules(fc.Rules)
			require.ErrorContains(t, err, tc.wantErr)
		})
	}
}

func TestGlob(t *testing.T) {
	t.Parallel()
	tests := []struct {
		pattern, value string
		want           bool
	}{
		{"acme/*", "acme/app", true},
		{"acme/*", "acme/", true},
		{"acme/*", "acme/app/x", false}, // * stops at /
		{"acme/*", "acme", false},
		{"acme/*", "ACME/app", false}, // case-sensitive
		{"acme/**", "acme/app/x", true},
		{"acme/***", "acme/app/x", true}, // more stars = **
		{"*/app", "acme/app", true},
		{"*/app", "evil/acme/app", false},
		{"**/app", "evil/acme/app", true},
		{"refs/heads/release-*", "refs/heads/release-1.2", true},
		{"refs/heads/release-*", "refs/heads/release-1/evil", false},
		{"refs/tags/v*", "refs/tags/v1.0.0", true},
		{"repo:acme/app:**", "repo:acme/app:ref:refs/heads/main", true},
		{"repo:acme/app:*", "repo:acme/app:ref:refs/heads/main", false},
		{"repo:acme/app:*", "repo:acme/app:environment:production", true},
		{"repo:acme/app:**", "repo:acme/app-fork:ref:refs/heads/main", false},
		{"a.b*", "axb", false}, // regexp metacharacters are literal
		{"a?b*", "a?bc", true},
		{"a?b*", "axbc", false},
		{"[ab]*", "[ab]x", true},
		{"[ab]*", "ax", false},
		{`a\*`, `a\b`, true},
		{"*", "", true},
		{"*", "x/y", false},
		{"**", "line1\nline2", true},
		{"pre*post", "pre-and-post", true},
		{"pre*post", "pre-and-post-not", false},
	}
	for _, tc := range tests {
		if got := compileGlob(tc.pattern).MatchString(tc.value); got != tc.want {
			t.Errorf("glob %q on %q = %v, want %v", tc.pattern, tc.value, got, tc.want)
		}
	}
}

func mustRules(t *testing.T, y string) *Rules {
	t.Helper()
	fc, err := ParseFileConfig([]byte(y))
	require.NoError(t, err)
	rs, err := CompileRules(fc.Rules)
	require.NoError(t, err)
	return rs
}

func TestRulesMatch(t *testing.T) {
	t.Parallel()
	rs := mustRules(t, `
rules:
  - name: deploy
    claims: {repository_id: 123456, ref: refs/heads/main, environment: production}
    max-ttl: 30m
    users: [migrator]
    databases: [shop]
  - name: any-branch
    claims: {repository_id: "123456", ref: "refs/heads/*"}
    users: [reader]
    route: reporting
  - name: flags
    claims: {project_id: 42, protected: true}
`)
	base := func() map[string]any {
		return map[string]any{
			"repository_id": "123456", "ref": "refs/heads/main", "environment": "production",
			"sub": "repo:acme/app:environment:production",
		}
	}
	m, ok := rs.Match(base())
	require.True(t, ok)
	require.Equal(t, "deploy", m.Rule.Name)
	require.Equal(t, `oidc rule "deploy"`, m.Rule.Label())
	require.Equal(t, map[string]string{"repository_id": "123456", "ref": "refs/heads/main", "environment": "production"}, m.Claims,
		"only the claims the rule matched, for the audit log")

	// First match wins; a branch outside main falls to the second rule.
	c := base()
	c["ref"] = "refs/heads/feature/x"
	_, ok = rs.Match(c)
	require.False(t, ok, "refs/heads/* does not cross /")
	c["ref"] = "refs/heads/feature-x"
	m, ok = rs.Match(c)
	require.True(t, ok)
	require.Equal(t, "any-branch", m.Rule.Name)
	require.Equal(t, "reporting", m.Rule.Route)

	// A missing claim never matches, not even a glob.
	c = base()
	delete(c, "ref")
	_, ok = rs.Match(c)
	require.False(t, ok)

	// Numbers and booleans match by their JSON text, whichever side quotes.
	for _, tc := range []struct {
		claims map[string]any
		want   bool
	}{
		{map[string]any{"project_id": json.Number("42"), "protected": true}, true},
		{map[string]any{"project_id": "42", "protected": "true"}, true},
		{map[string]any{"project_id": float64(42), "protected": true}, true},
		{map[string]any{"project_id": json.Number("42.0"), "protected": true}, false},
		{map[string]any{"project_id": json.Number("4.2e1"), "protected": true}, false},
		{map[string]any{"project_id": json.Number("42"), "protected": false}, false},
		{map[string]any{"project_id": []any{"42"}, "protected": true}, false},
		{map[string]any{"project_id": map[string]any{"42": "42"}, "protected": true}, false},
		{map[string]any{"project_id": nil, "protected": true}, false},
	} {
		m, ok := rs.Match(tc.claims)
		require.Equal(t, tc.want, ok, "%v", tc.claims)
		if ok {
			require.Equal(t, "flags", m.Rule.Name)
		}
	}
	var nilRules *Rules
	_, ok = nilRules.Match(base())
	require.False(t, ok)
}

func TestRulesWarnWithoutImmutableID(t *testing.T) {
	t.Parallel()
	rs := mustRules(t, `
rules:
  - claims: {repository: acme/app, ref: refs/heads/main}
  - claims: {project_id: "42", ref_protected: "true"}
`)
	w := rs.Warnings()
	require.Len(t, w, 1)
	require.Contains(t, w[0], "rules[0]")
	require.Contains(t, w[0], "repository_id")
}
