// Package fleet shares a gateway's jail and grants with every other gateway
// on the same Redis: authentication failures count toward one fleet-wide
// window per source, a ban made anywhere is enforced everywhere, the ban
// history that escalates repeat offenders is fleet-wide, and grants (or any
// other expiring record) travel the same way.
//
// Redis is an accelerator, never the source of truth and never a single
// point of failure. Each gateway keeps its embedded store as its own state;
// this package only publishes changes and delivers other gateways' changes.
// Every call has a short timeout; after a failure the Store is down and
// calls fail at once with ErrUnavailable (one call per RetryInterval probes
// Redis again), so the accept and authentication paths never wait for a
// dead server. Down and up are logged once per outage.
//
// # Keys
//
// Every key carries one hash tag, {PREFIX}, so they all live in one Redis
// Cluster slot and the Lua scripts below may touch any of them:
//
//	{P}:fail:<prefix>   ZSET  one member per failure, scored by the Redis
//	                          server's clock in ms; trimmed to the window and
//	                          to MaxFailures members; expires with the window
//	{P}:hist:<prefix>   INT   how many times the source was banned; expires
//	                          HistoryTTL after its last ban
//	{P}:ban             HASH  active bans: <prefix> → JSON (see Ban)
//	{P}:ban:exp         ZSET  <prefix> scored by the ban's end (ms); expired
//	                          fields are pruned by every script, and both
//	                          keys expire with the last ban
//	{P}:rec, {P}:rec:exp      the same for records: <kind>/<id> → JSON
//	{P}:tomb, {P}:tomb:exp    tombstones: ban/<prefix> or <kind>/<id> → the
//	                          time (ms) it was lifted; kept TombstoneTTL, so a
//	                          gateway coming back from an outage does not
//	                          resurrect what the fleet lifted meanwhile
//	{P}:events          STREAM one entry per change (type, key, value,
//	                          origin), trimmed with MAXLEN ~ StreamMaxLen
//	{P}:epoch           STRING a random value; its disappearance means the
//	                          server lost its data (a restart without
//	                          persistence, a failover to an empty replica)
//
// Nothing grows without bound: windows, bans, records and tombstones
// expire, failures per source are capped, the stream is trimmed.
//
// # Propagation
//
// Watch reads the stream with XREAD BLOCK from the last entry it saw, so a
// change reaches every watching gateway one round trip after it was made.
// Pub/sub would lose messages across a reconnect; a stream does not. On
// every (re)connect, when the epoch changes, and every ResyncInterval,
// Watch resynchronises both ways: it pushes the local state (bans and
// records the gateway made while Redis was away; Push), then hands the
// fleet's full state to the caller (Snapshot). A local item that the fleet
// lifted after it was made comes back as stale, and the caller drops it.
//
// Clocks: failure windows and online bans use the Redis server's clock
// (TIME inside the scripts), so gateways with skewed clocks still agree.
// Items pushed after an outage carry the local clock of the gateway that
// made them; keep clocks synchronised (NTP) so those comparisons hold.
package fleet
