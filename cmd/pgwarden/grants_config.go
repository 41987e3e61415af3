package main

import (
	"fmt"

	"github.com/spf13/pflag"

	"github.com/pgwarden/pgwarden/internal/gateway"
	"github.com/pgwarden/pgwarden/internal/grants"
	"github.com/pgwarden/pgwarden/internal/oidcauth"
)

// oidcKey is the config file's section for the grant endpoint's token
// issuer and rules:
//
//	oidc:
//	  issuer: https://token.actions.githubusercontent.com
//	  audience: pgwarden-prod
//	  jwks: https://token.actions.githubusercontent.com/.well-known/jwks
//	  rules:
//	    - claims: {repository_id: "123456", ref: "refs/heads/main", environment: "production"}
//	      max-ttl: 30m
//	      users: [migrator]
//	      databases: [shop]
const oidcKey = "oidc"

// grantFlags defines the access grant flags on fs, bound to c.
func grantFlags(fs *pflag.FlagSet, c *gateway.Config) {
	fs.DurationVar(&c.GrantMaxTTL, "grant-max-ttl", grants.DefaultMaxTTL, "longest access grant accepted, from the admin API or a CI job's token")
	fs.BoolVar(&c.GrantEndSessions, "grant-end-sessions", false, "when a grant expires, also end the sessions it admitted (revoking always does, unless --keep-sessions)")
	fs.StringVar(&c.GrantListen, "grant-listen", "", "HOST:PORT of the HTTPS endpoint where CI jobs ask for grants with their OIDC token (it faces the internet; needs --oidc-issuer, --oidc-audience and oidc.rules in --config)")
	fs.StringArrayVar(&c.GrantProxyProtocolFrom, "grant-proxy-protocol-from", nil, "load balancer IP or CIDR (repeatable) in front of --grant-listen whose connections MUST start with a PROXY v1 or v2 header; the grant is for the client it names")
	pathVar(fs, &c.GrantTLSCert, "grant-tls-cert", "certificate (PEM) of the grant endpoint (default: the first route's --tls-cert)")
	pathVar(fs, &c.GrantTLSKey, "grant-tls-key", "private key (PEM) of the grant endpoint (default: the first route's --tls-key)")
	fs.StringVar(&c.OIDC.Issuer, "oidc-issuer", "", "issuer whose tokens the grant endpoint accepts, e.g. https://token.actions.githubusercontent.com (the token's iss must equal it)")
	fs.StringVar(&c.OIDC.Audience, "oidc-audience", "", "audience the tokens must be for (their aud must contain it)")
	fs.StringVar(&c.OIDC.JWKS, "oidc-jwks", "", "the issuer's keys: an https URL, or a FILE for air-gapped hosts (default: OIDC discovery from --oidc-issuer)")
	markPath(fs, "oidc-jwks", pathOrURL)
}

// applyOIDC reads the file's oidc: section. Its issuer, audience and jwks
// are the --oidc-* flags, which win when given on the command line; its
// rules come only from the file.
func applyOIDC(c *serveConfig, f *configFile, kv keyValue, present map[string]bool, fs *pflag.FlagSet, fromCLI map[string]bool) error {
	where := f.at(kv.line)
	fc, err := oidcauth.DecodeNode(kv.value)
	if err != nil {
		return usageError{fmt.Errorf("%s: %w", where, err)}
	}
	for _, v := range []struct {
		key, flag string
		dst       *string
	}{
		{"issuer", "oidc-issuer", &c.OIDC.Issuer},
		{"audience", "oidc-audience", &c.OIDC.Audience},
		{"jwks", "oidc-jwks", &c.OIDC.JWKS},
	} {
		val := map[string]string{"issuer": fc.Issuer, "audience": fc.Audience, "jwks": fc.JWKS}[v.key]
		if val == "" {
			continue
		}
		if present[v.flag] {
			return usageError{fmt.Errorf("%s: %s and %s.%s say the same thing: keep one", where, v.flag, oidcKey, v.key)}
		}
		if !fromCLI[v.flag] {
			// A key file named here is found next to the config file,
			// as every path in it is.
			*v.dst = resolvePath(fs.Lookup(v.flag), f.dir, val)
		}
	}
	c.OIDC.Rules = fc.Rules
	return nil
}
