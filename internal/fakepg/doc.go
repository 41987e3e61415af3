// Package fakepg is a scripted PostgreSQL server for tests of clients
// (`pgwarden connect`, `pgwarden probe`): it answers the SSLRequest in a
// chosen way (including wrongly), runs TLS with a given certificate,
// "authenticates" anyone, hands out BackendKeyData, answers simple queries,
// and records what it saw (startup parameters, cancel requests and the
// address they came from, client certificates). It listens on 127.0.0.1:0.
//
// It is for the behaviours a real postgres cannot be made to show (an 'S'
// followed by injected bytes, a query that always fails) and for checking
// paths (which instance a cancel reached); the end-to-end tests use a real
// postgres behind a real gateway.
package fakepg
