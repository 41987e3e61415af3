// Package fakepg is a fake PostgreSQL server for deterministic protocol
// tests, in two forms, both on 127.0.0.1:0:
//
//   - Start: a canned server for tests of clients (`pgwarden connect`,
//     `pgwarden probe`). It answers the SSLRequest in a chosen way
//     (including wrongly), runs TLS with a given certificate,
//     "authenticates" anyone, hands out BackendKeyData, answers simple
//     queries, and records what it saw (startup parameters, cancel
//     requests and the address they came from, client certificates).
//   - StartScript: a scripted upstream for tests of the gateway, like pgx's
//     internal/pgmock. It plays postgres's side of a plaintext connection
//     as a list of steps (expect this message, send those, pause, wait for
//     the close) and reports the first step that did not go as scripted.
//
// It is for the behaviours a real postgres cannot be made to show (an 'S'
// followed by injected bytes, a query that always fails, a GSSAPI exchange
// without a Kerberos realm) and for checking paths (which instance a cancel
// reached); the end-to-end tests use a real postgres behind a real gateway.
package fakepg
