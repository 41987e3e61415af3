// Package grantapi is the internet-facing self-service grant endpoint:
//
//	POST /v1/grants/self
//	Authorization: Bearer <the CI job's OIDC token>
//	{"ttl": "20m"}                       (optional)
//
// It grants the address the request came from (the TCP peer, or, for a
// connection from a load balancer in ServerConfig.Balancers, the client its
// PROXY header names) for min(ttl, the matched
// rule's max-ttl, --grant-max-ttl), and answers 201 with the grant:
//
//	{"id": "g-…", "source": "203.0.113.7/32", "until": "2026-…Z", "reason": "…",
//	 "users": ["migrator"], "databases": ["shop"], "created_by": "repo:…",
//	 "route": "", "via": "oidc", "rule": "oidc rule \"deploy\"", "claims": {…},
//	 "created": "…", "extensions": 0, "extended": false}
//
// Every other answer is {"error": "plain reason"}, with nothing of the
// token in it:
//
//	400  bad body: not JSON, unknown or repeated keys, trailing data, bad ttl
//	401  the token does not verify (each one counts as a failed login of the
//	     source, through Config.AuthFailed, so guessing leads to a ban)
//	403  a valid token that no rule admits; or a banned source
//	404  another path;  405  another method
//	409  a token used before (its jti)
//	413  a body over 16 KiB
//	429  past the per-source rate (Retry-After says when to come back)
//	503  the issuer's keys cannot be fetched, the replay cache or the grant
//	     table is full (Retry-After where known); not counted against anyone
//
// The checks run cheapest first, so a flood costs as little as possible:
// ban, rate, body, then the signature (RSA/ECDSA), rules, replay, grant.
//
// Server serves the handler over TLS only (HTTP/1.1; the gateway passes
// its first route's certificate), with header, read, write and idle
// deadlines, a header size cap and a cap on open connections. A trusted
// balancer's PROXY header is read exactly, by the connection's first read
// (its TLS handshake, in its own goroutine), within the header timeout and
// the server's own read deadline, which stays in force after it.
package grantapi
