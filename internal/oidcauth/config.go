package oidcauth

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"

	"gopkg.in/yaml.v3"
)

// FileConfig is the `oidc:` section of the config file:
//
//	oidc:
//	  issuer: https://token.actions.githubusercontent.com
//	  audience: pgwarden-prod
//	  jwks: https://token.actions.githubusercontent.com/.well-known/jwks
//	  rules:                              # the first rule whose claims all match wins
//	    - claims: {repository_id: "123456", ref: "refs/heads/main", environment: "production"}
//	      max-ttl: 30m
//	      users: [migrator]
//	      databases: [shop]
type FileConfig struct {
	Issuer   string       `yaml:"issuer"`
	Audience string       `yaml:"audience"`
	JWKS     string       `yaml:"jwks"`
	Rules    []RuleConfig `yaml:"rules"`
}

// RuleConfig is one rule as written.
type RuleConfig struct {
	// Name (optional) names the rule in messages and audit lines.
	Name string `yaml:"name"`
	// Claims must all match (see the package doc for globs).
	Claims map[string]any `yaml:"claims"`
	// MaxTTL caps the grant, e.g. "30m" (optional).
	MaxTTL string `yaml:"max-ttl"`
	// Users and Databases limit the grant (optional: any).
	Users     []string `yaml:"users"`
	Databases []string `yaml:"databases"`
	// Route limits the grant to one route (optional: every route).
	Route string `yaml:"route"`
}

// ParseFileConfig decodes the `oidc:` section (the mapping under the key)
// strictly: an unknown key (a typo such as "max_ttl") is an error, not an
// ignored limit.
func ParseFileConfig(data []byte) (FileConfig, error) {
	var c FileConfig
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			return FileConfig{}, readableTypeError(te)
		}
		return FileConfig{}, fmt.Errorf("oidc: %w", err)
	}
	return c, nil
}

// unknownField is yaml.v3's text for a key KnownFields refused.
var unknownField = regexp.MustCompile(`^(line \d+): field (\S+) not found in type oidcauth\.(\w+)$`)

// readableTypeError turns yaml.v3's type errors into one line per
// problem, in the operator's words: "line 5: unknown key "max_ttl" in a
// rule (a rule takes ...)", not a Go type name.
func readableTypeError(te *yaml.TypeError) error {
	keys := map[string]string{
		"FileConfig": "the oidc section (it takes issuer, audience, jwks, rules)",
		"RuleConfig": "a rule (a rule takes name, claims, max-ttl, users, databases, route)",
	}
	errs := make([]error, 0, len(te.Errors))
	for _, e := range te.Errors {
		if m := unknownField.FindStringSubmatch(e); m != nil && keys[m[3]] != "" {
			e = fmt.Sprintf("%s: unknown key %q in %s", m[1], m[2], keys[m[3]])
		}
		errs = append(errs, fmt.Errorf("oidc: %s", e))
	}
	return errors.Join(errs...)
}

// DecodeNode is ParseFileConfig for a node of an already parsed document.
func DecodeNode(n *yaml.Node) (FileConfig, error) {
	data, err := yaml.Marshal(n)
	if err != nil {
		return FileConfig{}, fmt.Errorf("oidc: %w", err)
	}
	return ParseFileConfig(data)
}
