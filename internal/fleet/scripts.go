package fleet

import "github.com/redis/go-redis/v9"

// Every script takes all its keys in KEYS (they share the {prefix} hash
// tag, hence one Cluster slot) and reads the clock with TIME: since Redis 5
// scripts are replicated by their effects, so TIME is allowed before
// writes, and every gateway sees the same clock.

// luaLib is prepended to the scripts that need it.
const luaLib = `
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- prune removes up to 1000 fields whose end (score in z) has passed; every
-- writing script calls it, so the hash never holds much that has expired.
local function prune(h, z, now)
  local dead = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, 1000)
  if #dead > 0 then
    redis.call('HDEL', h, unpack(dead))
    redis.call('ZREM', z, unpack(dead))
  end
end

-- keep_until_last makes the hash and its index expire with their last
-- entry, so an idle fleet leaves nothing behind.
local function keep_until_last(h, z)
  local last = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')
  if #last == 2 then
    local at = math.floor(tonumber(last[2])) + 1000
    redis.call('PEXPIREAT', h, at)
    redis.call('PEXPIREAT', z, at)
  end
end

local function event(stream, maxlen, typ, key, value, origin)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 't', typ, 'k', key, 'v', value, 'o', origin)
end

-- store sets field to value until untilms in hash h (indexed by z) and
-- announces it with an event of type typ.
local function store(h, z, field, untilms, value, stream, maxlen, typ, origin)
  redis.call('HSET', h, field, value)
  redis.call('ZADD', z, untilms, field)
  keep_until_last(h, z)
  event(stream, maxlen, typ, field, value, origin)
end

local function tombstone(th, tz, field, now, ttl)
  redis.call('HSET', th, field, now)
  redis.call('ZADD', tz, now + ttl, field)
  keep_until_last(th, tz)
end

local function untombstone(th, tz, field)
  redis.call('HDEL', th, field)
  redis.call('ZREM', tz, field)
end
`

// failureScript records one failure and returns {failures in the window,
// bans in the history}.
//
//	KEYS[1] {P}:fail:<prefix>  KEYS[2] {P}:hist:<prefix>
//	ARGV[1] window ms  ARGV[2] cap  ARGV[3] unique member
//
// A retried call reuses its member, so it cannot count twice. Members older
// than the window go, then the oldest beyond the cap: an attacker flooding
// one source cannot grow the set past the cap.
var failureScript = redis.NewScript(luaLib + `
local now = now_ms()
local window = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
if n > cap then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - cap - 1)
  n = cap
end
redis.call('PEXPIRE', KEYS[1], window)
local bans = tonumber(redis.call('GET', KEYS[2]) or '0')
return {n, bans}
`)

// countScript returns, for each key {P}:fail:<prefix>, its failures within
// the window, without recording one.
//
//	KEYS: {P}:fail:<prefix>...  ARGV[1] window ms
var countScript = redis.NewScript(luaLib + `
local floor = now_ms() - tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do out[i] = redis.call('ZCOUNT', KEYS[i], '(' .. floor, '+inf') end
return out
`)

// banKeys is the KEYS layout shared by banScript, pushBanScript and
// unbanScript; failure windows to clear follow from index 8.
//
//	1 {P}:ban  2 {P}:ban:exp  3 {P}:hist:<prefix>  4 {P}:tomb  5 {P}:tomb:exp
//	6 {P}:events  7 {P}:fail:<prefix>  8.. more {P}:fail:<prefix> to clear

// banScript stores a ban made now and returns its JSON.
//
//	ARGV[1] prefix  ARGV[2] duration ms  ARGV[3] failures  ARGV[4] manual (0/1)
//	ARGV[5] origin  ARGV[6] history TTL ms  ARGV[7] stream max length
//
// Like the jail: an automatic ban never shortens the ban in force nor turns
// a manual one automatic; a manual ban replaces whatever was there. The
// ban history count goes up by one, atomically with the ban. The failure
// windows are cleared, so the count starts again after the ban.
var banScript = redis.NewScript(luaLib + `
local now = now_ms()
local key = ARGV[1]
local untilms = now + tonumber(ARGV[2])
local manual = ARGV[4] == '1'
prune(KEYS[1], KEYS[2], now)
local bans = redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[6]))
local old = redis.call('HGET', KEYS[1], key)
if old and not manual then
  local o = cjson.decode(old)
  if tonumber(o['until']) > untilms then untilms = tonumber(o['until']) end
  manual = o['manual'] == true
end
local rec = cjson.encode({['until'] = untilms, failures = tonumber(ARGV[3]), bans = bans,
  manual = manual, at = now, origin = ARGV[5]})
untombstone(KEYS[4], KEYS[5], 'ban/' .. key)
for i = 7, #KEYS do redis.call('DEL', KEYS[i]) end
store(KEYS[1], KEYS[2], key, untilms, rec, KEYS[6], ARGV[7], 'ban', ARGV[5])
return rec
`)

// pushBanScript offers a ban this gateway holds (made while Redis was away,
// or lost by a Redis restart) and returns {status, json}: "stale" when the
// fleet lifted the key after the ban was made, "expired", "kept" when the
// fleet already has a ban on the key ending no earlier, else "stored".
//
//	ARGV[1] prefix  ARGV[2] until ms  ARGV[3] failures  ARGV[4] manual (0/1)
//	ARGV[5] origin  ARGV[6] history TTL ms  ARGV[7] stream max length
//	ARGV[8] made at ms (the gateway's clock)  ARGV[9] the gateway's ban count
var pushBanScript = redis.NewScript(luaLib + `
local now = now_ms()
local key = ARGV[1]
local untilms = tonumber(ARGV[2])
local at = tonumber(ARGV[8])
prune(KEYS[1], KEYS[2], now)
prune(KEYS[4], KEYS[5], now)
local tomb = redis.call('HGET', KEYS[4], 'ban/' .. key)
if tomb and tonumber(tomb) >= at then return {'stale', ''} end
if untilms <= now then return {'expired', ''} end
local old = redis.call('HGET', KEYS[1], key)
if old and tonumber(cjson.decode(old)['until']) >= untilms then return {'kept', old} end
local bans = tonumber(redis.call('GET', KEYS[3]) or '0')
if bans < tonumber(ARGV[9]) then
  bans = tonumber(ARGV[9])
  redis.call('SET', KEYS[3], bans, 'PX', tonumber(ARGV[6]))
end
local rec = cjson.encode({['until'] = untilms, failures = tonumber(ARGV[3]), bans = bans,
  manual = ARGV[4] == '1', at = at, origin = ARGV[5]})
store(KEYS[1], KEYS[2], key, untilms, rec, KEYS[6], ARGV[7], 'ban', ARGV[5])
return {'stored', rec}
`)

// unbanScript lifts a ban, clears the source's failure window (like the
// jail's Unban), leaves a tombstone, and returns 1 if a ban was stored.
// The event goes out even when Redis had no such ban: a gateway may hold
// one it made while Redis was away.
//
//	ARGV[1] prefix  ARGV[2] origin  ARGV[3] tombstone TTL ms  ARGV[4] stream max length
var unbanScript = redis.NewScript(luaLib + `
local now = now_ms()
local key = ARGV[1]
prune(KEYS[1], KEYS[2], now)
prune(KEYS[4], KEYS[5], now)
local had = redis.call('HDEL', KEYS[1], key)
redis.call('ZREM', KEYS[2], key)
for i = 7, #KEYS do redis.call('DEL', KEYS[i]) end
tombstone(KEYS[4], KEYS[5], 'ban/' .. key, now, tonumber(ARGV[3]))
event(KEYS[6], ARGV[4], 'unban', key, '', ARGV[2])
return had
`)

// recKeys: 1 {P}:rec  2 {P}:rec:exp  3 {P}:tomb  4 {P}:tomb:exp  5 {P}:events

// putRecordScript stores a record and returns {status, old json}. The JSON
// is built by the caller and stored verbatim (it carries data the script
// must not re-encode); the script reads only its "at".
//
//	ARGV[1] field kind/id  ARGV[2] until ms  ARGV[3] json  ARGV[4] origin
//	ARGV[5] stream max length  ARGV[6] made at ms  ARGV[7] "push" or "put"
//
// put: the record replaces any other ("added" or "replaced"). push: as
// pushBanScript, "stale" when revoked after it was made, "expired", "kept"
// when the fleet's copy is as new, else "stored".
var putRecordScript = redis.NewScript(luaLib + `
local now = now_ms()
local field = ARGV[1]
local untilms = tonumber(ARGV[2])
local at = tonumber(ARGV[6])
prune(KEYS[1], KEYS[2], now)
prune(KEYS[3], KEYS[4], now)
local old = redis.call('HGET', KEYS[1], field)
local status = 'added'
if old then status = 'replaced' end
if ARGV[7] == 'push' then
  local tomb = redis.call('HGET', KEYS[3], field)
  if tomb and tonumber(tomb) >= at then return {'stale', ''} end
  if old and tonumber(cjson.decode(old)['at']) >= at then return {'kept', old} end
  status = 'stored'
end
if untilms <= now then return {'expired', ''} end
untombstone(KEYS[3], KEYS[4], field)
store(KEYS[1], KEYS[2], field, untilms, ARGV[3], KEYS[5], ARGV[5], 'put', ARGV[4])
return {status, old or ''}
`)

// revokeRecordScript removes a record, leaves a tombstone, and returns 1 if
// it was stored. The event goes out either way, as for unbans, carrying
// the caller's note (how to revoke: JSON, or empty).
//
//	ARGV[1] field  ARGV[2] origin  ARGV[3] tombstone TTL ms  ARGV[4] stream max length
//	ARGV[5] note
var revokeRecordScript = redis.NewScript(luaLib + `
local now = now_ms()
local field = ARGV[1]
prune(KEYS[1], KEYS[2], now)
prune(KEYS[3], KEYS[4], now)
local had = redis.call('HDEL', KEYS[1], field)
redis.call('ZREM', KEYS[2], field)
tombstone(KEYS[3], KEYS[4], field, now, tonumber(ARGV[3]))
event(KEYS[5], ARGV[4], 'revoke', field, ARGV[5] or '', ARGV[2])
return had
`)

// snapshotScript prunes and returns {server time ms, HGETALL ban, HGETALL rec}.
//
//	KEYS: 1 {P}:ban 2 {P}:ban:exp 3 {P}:rec 4 {P}:rec:exp
var snapshotScript = redis.NewScript(luaLib + `
local now = now_ms()
prune(KEYS[1], KEYS[2], now)
prune(KEYS[3], KEYS[4], now)
return {now, redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[3])}
`)

// allScripts are loaded into the script cache on every (re)connect, so
// pipelined EVALSHA calls find them even after a Redis restart.
var allScripts = []*redis.Script{failureScript, countScript, banScript, pushBanScript, unbanScript,
	putRecordScript, revokeRecordScript, snapshotScript}
