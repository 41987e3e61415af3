// Package certs owns pgwarden's TLS material and policy.
//
// Where certificates come from: an operator's files (--tls-cert, --tls-key),
// for example from cert-manager or certbot, or `pgwarden certs init`, which
// writes a private CA and a server certificate (InitCA) and issues client
// certificates from it (IssueClient). RenewServer replaces the server
// certificate from the same CA; InitClientCA makes a CA that signs client
// certificates only (the one to hand to CI); Revoke and RefreshCRL maintain
// its revocation list, which the Authorizer checks (--tls-client-crl).
//
// Reload: a Loader holds the current pair behind an atomic pointer. Reload
// (SIGHUP) and Watch (file changes, watched by directory so rename and
// symlink swaps are seen) build the new pair completely, check that it parses,
// that the key matches and that it is within its validity period, and only
// then swap it in. New handshakes get the new pair; established sessions are
// untouched. A broken pair is logged at error level, naming the file, and the
// old pair keeps serving.
//
// Policy: ServerConfig is the single place that builds the server
// tls.Config (TLS 1.2+, ECDHE+AEAD, ALPN "postgresql", no session tickets).
//
// Client certificates: with Policy.ClientCAFile the handshake only requests
// a certificate; Authorizer.Authorize verifies it after the StartupMessage so
// a refusal can be a postgres FATAL 28000 with a reason instead of a TLS
// alert, and checks the identity against --tls-allow-cn/--tls-allow-san and
// the startup role against --tls-map-user (default: role == CN), in the
// spirit of postgres's clientcert=verify-full with pg_ident.
package certs
