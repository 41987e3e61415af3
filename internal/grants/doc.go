// Package grants holds time-boxed access grants: "source S may connect to
// route R, as these users to these databases, until T", made by an
// operator (the admin API) or by a CI job that proved its identity with an
// OIDC token (see internal/grantapi).
//
// A Registry keeps the active grants. The accept path asks Covering, which
// reads an immutable snapshot through one atomic load (no lock), so a
// thousand grants cost an accept what the ban check costs. Writers (Add,
// Revoke, the expiry sweeper) build a new snapshot and swap it in.
//
// A second grant of a source and route that already have one extends it:
// the grant keeps its id and its sessions, its end moves to the later of
// the two, its user and database limits become the union of both (both
// requests came from that address, and either would have admitted it
// alone), and the audit log has one line for each request.
//
// Limits: TTLs are capped (Config.MaxTTL, and a per-request cap such as an
// OIDC rule's max-ttl), and at most Config.MaxGrants grants exist at once;
// beyond that Add refuses with ErrFull rather than forgetting anything.
//
// Expiry is decided at lookup time (a grant stops covering at its Until,
// whatever the sweeper does); the sweeper only removes expired grants,
// writes the audit line and calls OnExpire so the gateway can end the
// sessions a grant admitted when it is configured to.
//
// Every change (a grant created, extended, revoked or expired) goes through
// one place, which writes its audit line and then calls OnExpire or
// OnRevoke and OnChange: observers (metrics, state shared with other
// gateways) see each change once.
//
// Grants persist through a Store; BoltStore keeps them in the bucket
// "grants" of a bbolt file someone else opened (the ban jail's state
// file), so bans and grants live and move together. Grants that expired
// while the gateway was down are dropped, with their audit line, at start.
package grants
