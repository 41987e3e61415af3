// Package oidcauth verifies the OIDC identity tokens CI systems give their
// jobs (GitHub Actions' ACTIONS_ID_TOKEN_REQUEST_URL, GitLab's id_tokens)
// and matches their claims against grant rules.
//
// # Verification
//
// Verifier.Verify accepts a compact JWS signed with RS256 or ES256 by a key
// of the configured key set, whose iss equals Config.Issuer and whose aud
// contains Config.Audience (github.com/coreos/go-oidc/v3 checks signature,
// issuer and audience; this package adds the rest):
//
//   - exp is required; the token is refused once now > exp + Leeway.
//   - nbf, when present, must be <= now + Leeway.
//   - iat is required, must be <= now + Leeway, and no older than MaxAge
//     (10 minutes; no leeway on the age: a CI job asks for its grant right
//     after it gets the token).
//   - jti is required: replay protection needs it, and GitHub and GitLab
//     tokens always carry one. A token without jti is refused (401).
//   - sub is required: it is the grant's created_by.
//
// Leeway (default 30s) absorbs clock skew between the issuer and this host;
// it is deliberately smaller than go-oidc's built-in 5 minutes for nbf,
// which this package replaces with its own check.
//
// Every refusal is a *VerifyError whose Reason is a fixed, plain text that
// never contains anything from the token (the endpoint faces the
// internet; echoing an attacker's iss or aud back would make it a
// reflector), with the cause kept in Err for the log.
//
// # Keys
//
// Config.JWKS names a file (a static JWKS: air-gapped hosts, tests), an
// https URL, or nothing (OIDC discovery from the issuer). go-oidc's own
// RemoteKeySet refetches the key set for every unknown kid, with no pause,
// so anyone can make it hammer the issuer with tokens carrying random kids.
// This package's key set instead:
//
//   - fetches at most once per FetchCooldown (default 1m), whatever arrives;
//   - remembers kids a fresh fetch did not contain (NegativeTTL, default
//     5m; at most 1024 of them) and refuses them without fetching;
//   - refreshes a key set older than RefreshInterval (1h) on the next use,
//     keeping the old keys if that fails;
//   - never lets a request's cancellation abort a fetch (a client that
//     hangs up cannot starve the others of keys);
//   - keeps only RSA (>= 2048 bits) and P-256 keys meant for signatures.
//
// A token whose kid is unknown is refused as 401, or as unavailable (503,
// not the client's fault, not counted towards a ban) when the key set
// could not be fetched at all.
//
// # Replay
//
// ReplayCache remembers each used jti until the token could no longer
// verify (min(exp+Leeway, iat+MaxAge)), so at most MaxAge of tokens are
// held. It is bounded: when full of unexpired entries it refuses new
// tokens (503 with Retry-After) rather than forget one, because forgetting
// would let that token be replayed. Filling it takes that many distinct
// valid tokens from the issuer inside ten minutes, each past the per-source
// rate limit.
//
// # Rules
//
// Rules (the `oidc.rules` of the config file) admit a token when all of a
// rule's claims match; the first matching rule wins. A value matches
// exactly, or, where it contains `*`, as a glob in which `*` matches any
// run of characters except `/` and `**` matches any run including `/`
// ("acme/*" matches "acme/app" but not "acme/app/x"; "repo:acme/app:**"
// matches every sub of that repository). Nothing else is special: `?`,
// `[`, `\` are literal. Matching is case-sensitive and anchored at both
// ends. Token claims that are not strings are compared by their JSON text
// as sent (123456, true); arrays, objects and null never match.
package oidcauth
