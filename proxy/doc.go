// Package proxy is pgwarden's connection path: it takes connections that the
// accept-time policy (package acl) has already admitted, requires TLS, reads
// and checks the startup packet, passes authentication on with pgproto3 while
// watching its outcome, and then copies bytes both ways.
//
// A connection's life, in the order the code runs it:
//
//	client                      pgwarden                              postgres
//	  │ (via a trusted balancer:   │ its PROXY header, read exactly, names    │
//	  │  PROXY header)             │ the client, admitted then (source.go)    │
//	  │ SSLRequest (8 bytes)       │ read exactly 8 bytes (framing.go)        │
//	  │ ◄──────────── 'S'          │ nothing more is written before TLS       │
//	  │ ═══ TLS handshake ═══════► │ (or direct TLS: first byte 0x16 + ALPN)  │
//	  │ StartupMessage ──────────► │ frame-exact read, length/protocol checks │
//	  │                            │ client-certificate authorization         │
//	  │                            │ startup policy: an access grant's limits │
//	  │                            │ admission: a slot of the source (ban     │
//	  │                            │ jail) and of the upstream (authgate.go)  │
//	  │                            │ dial upstream (only now) ──────────────► │
//	  │                            │ forward the startup packet verbatim ───► │
//	  │ ◄─── Authentication* ──────┼───────────── authExchange (auth.go) ──── │
//	  │ ───── password/SASL ───────┼─────────────────────────────────────────►│
//	  │ ◄── AuthenticationOk … ReadyForQuery ─────────────────────────────────│
//	  │ ═══════ raw byte relay (relay.go: event loop or goroutines) ═════════ │
//
// Everything before ReadyForQuery runs under two absolute deadlines counted
// from accept (handshake and authentication), so a client trickling one byte
// at a time is dropped on time; each wait for the client's answer to an
// authentication request also has its own, shorter, step deadline. Nothing the client sent before the TLS
// handshake is ever interpreted after it (CVE-2021-23214), and no reader ever
// buffers bytes past the current protocol frame, so the switch to the raw
// relay loses nothing.
//
// Once authenticated, a session is handed to the relay (relay.go), chosen
// once per Server: the event loops of package eventloop on Linux
// (level-triggered epoll, one per two cores, crypto/tls over a non-blocking
// adapter), or two goroutines per session (package relay). The connection
// path meets the relay only twice: the client's conn is wrapped before the
// TLS handshake, and the session is handed over after ReadyForQuery.
// Either way what a client can make the gateway hold is bounded: queues are
// capped, a client is not read while its output is blocked, and what
// crypto/tls writes on its own (key update replies) is limited
// (relay.Guard).
//
// Errors reach the client only as postgres ErrorResponses built in errors.go
// from a fixed set of public texts; causes go to the log.
package proxy
