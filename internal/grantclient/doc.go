// Package grantclient is the CI side of pgwarden's self-service grants: it
// obtains the job's OIDC token and asks a gateway's grant endpoint to admit
// the address the request comes from, for a while, then keeps the grant
// alive by asking again before it expires.
//
// The token comes from GitHub Actions (ACTIONS_ID_TOKEN_REQUEST_URL and
// ACTIONS_ID_TOKEN_REQUEST_TOKEN, with `audience=`, which needs the job's
// `permissions: id-token: write`), or from an environment variable (GitLab's
// `id_tokens:`, or any CI that puts a JWT in the environment).
//
// The request is `POST URL/v1/grants/self` with `Authorization: Bearer JWT`
// and, optionally, `{"ttl": "20m"}`. The server answers 201 with the grant
// ({"id", "source", "until", "reason", "users", "databases", "created_by"}),
// or an error status (401, 403, 409, 413, 429) with {"error": "..."}.
//
// Used by `pgwarden connect --grant-url` and `pgwarden grants request`.
package grantclient
