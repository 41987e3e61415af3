// Package forward is the client-side forwarder behind `pgwarden connect`,
// pgwarden's replacement for stunnel's `client = yes`: local clients that
// cannot do TLS, or cannot present a client certificate, connect to it in
// plaintext on loopback or a unix socket, and it carries each connection to
// a gateway over verified TLS.
//
// A connection's path:
//
//		local client ──plaintext──▶ Forwarder ──TLS (verify-full, client cert)──▶ gateway
//
//	 1. readLocalStartup: SSLRequest and GSSENCRequest are answered 'N' (at
//	    most once each; libpq's default sslmode=prefer sends one), then the
//	    StartupMessage is read frame-exactly (8..10000 bytes, under a
//	    deadline). A CancelRequest goes to forwardCancel instead.
//	 2. dialGateway: TCP to --to, SSLRequest with exactly one byte of answer
//	    and nothing behind it (CVE-2021-23222), or direct TLS with ALPN
//	    "postgresql"; verify-full; the client certificate from a watched file.
//	    Any failure is a FATAL ErrorResponse to the local client naming the
//	    layer (resolve, tcp, negotiate, tls, certificate, client-certificate):
//	    never a hang or a bare close.
//	 3. relay: the StartupMessage is forwarded as it came (any 3.x version, in
//	    its parameter order), the gateway's messages are followed frame by
//	    frame until ReadyForQuery to learn the session's BackendKeyData, and
//	    then bytes flow both ways unparsed.
//	 4. forwardCancel: a CancelRequest (psql's Ctrl-C sends one in plaintext)
//	    is forwarded over a new TLS connection to the very address the
//	    session's connection went to, from the same local address, so it
//	    reaches the same gateway instance behind a DNS name and passes the
//	    same allowlist. Keys of sessions it does not relay are dropped.
//
// Shutdown closes the listeners; sessions keep running until they end or
// Drain's context ends, as `pgwarden serve` drains.
package forward
