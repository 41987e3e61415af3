// Package clienttls is the client side of PostgreSQL's TLS negotiation, as
// `pgwarden connect` and `pgwarden probe` speak it towards a server or a
// gateway: the SSLRequest exchange (or direct TLS with ALPN "postgresql"),
// the TLS handshake, and the attribution of every failure to the layer where
// it happened (resolve, tcp, negotiate, tls, certificate, client-certificate),
// so that a user is told which layer to look at.
//
// The SSLRequest answer is read one byte exactly, and nothing may follow it
// before the handshake: bytes a server (or a man in the middle) sends after
// its 'S' would otherwise be taken as part of the encrypted session. That is
// CVE-2021-23222, the client-side twin of the server-side CVE-2021-23214
// (protocol.sgml, "SSL Session Encryption"; libpq reports "received
// unencrypted data after SSL response").
package clienttls
