// Package rulehits counts, per route and per admission rule (an allowlist
// entry, a grant), the connections the rule admitted and when it last did,
// so an operator can find the entries nobody uses any more and prune them,
// as PostgreSQL's guides advise for pg_hba.conf host records.
//
// Counting is on the accept path (acl.Gate's OnAdmit): one map lookup in an
// immutable snapshot, an atomic add and an atomic store for an allowlist
// entry; no lock, no allocation, no disk. The counts persist in the
// gateway's state file (the ban jail's bbolt file, bucket "rule_hits"), so
// "never used since March" survives restarts; they are written in batches
// (Counter.Run flushes every FlushEvery and once more at the end), one
// transaction and fsync per batch, never per connection. Memory is bounded
// by the configuration (one cell per allowlist entry) plus MaxDynamic cells
// for rules that come and go (grants); past that the least recently used
// dynamic cell is forgotten.
//
// Each entry also remembers Since, when counting began for it (the first
// time the gateway ran with it), so an entry added yesterday is not taken
// for one unused for a month.
package rulehits
