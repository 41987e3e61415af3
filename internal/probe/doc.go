// Package probe answers "why can't I connect?" for any PostgreSQL endpoint
// (postgres itself, PgBouncer, stunnel, a pgwarden gateway): it walks a
// connection through its layers in order and reports each as ok, FAIL or
// skip with the evidence:
//
//	resolve             the addresses the name resolves to
//	tcp                 connected in N ms / refused / timed out / reset at accept
//	negotiate           the answer to the SSLRequest: 'S', 'N', or an error
//	tls                 version, cipher suite, ALPN
//	certificate         subject, issuer, SANs, days left; the name; the chain
//	client-certificate  requested? sent? accepted, or refused with the reason
//	auth                with --user: ok, or the SQLSTATE and message
//	query               SELECT 1 and its round trip
//
// The first failure ends the walk: later layers are skipped, and nothing is
// sent over a connection whose server could not be verified. The result's
// ExitCode is 0 when nothing failed, else 10 + the index of the first
// failing layer (resolve 10 … query 17).
package probe
