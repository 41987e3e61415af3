// Package check is `pgwarden check`, the server-side doctor: it reads the
// configuration `pgwarden serve` would run, binds nothing that serve would
// keep, and reports one verdict per check, ok, WARN or FAIL, with the
// evidence and the fix.
//
// Whether a database is exposed is decided by a chain of settings of which
// the gateway's own are only a part: postgres's listen_addresses, an old
// server left on a neighbouring port, the certificate clients verify, an
// allowlist wider than meant. The checks look at that chain from this host:
//
//   - config: the configuration is valid, with the errors serve would give;
//   - upstream: each upstream accepts a connection;
//   - exposure: postgres does not accept connections on this host's other
//     addresses (every non-loopback interface address) and is not bound to
//     the wildcard address (read from the kernel's socket table, since a
//     connection to 0.0.0.0 reaches loopback on Linux and proves nothing);
//   - other-postgres: no other postgres answers an SSLRequest on
//     5432-5439 of those addresses (a server left behind);
//   - listen: each listen address can be bound, or is held by a running
//     pgwarden with this configuration (it serves this certificate);
//   - certificate: the key matches, the chain verifies against the CA
//     clients are given, the names cover listen hosts that are names, days
//     until expiry, key type and size;
//   - allowlist: no entry admits (nearly) everyone;
//   - ban-state, admin: the state file is writable, the admin endpoint is
//     loopback and free (or a running pgwarden's);
//   - upstream-startups: --max-upstream-startups against the max_connections
//     of a local postgresql.conf, when one is found.
//
// Connections go only to this host's own addresses. What the checks read
// from the host (its addresses, listening sockets, postgresql.conf files,
// the clock) comes through Env, so tests can stand in for them.
package check
