//! The engine-side Lua scripts: every change to one user's keys is one script, so it is atomic in the engine.
//!
//! Key layout (all keys of one user share the hash slot of `{user}`, so a
//! script over them runs on one Redis Cluster shard):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `rg:{u}:h` | string | inbox head seq (INCR; raised, never lowered) |
//! | `rg:{u}:e` | zset | entries, score = seq, member = `msg_id ts len(from) from payload` |
//! | `rg:{u}:i` | zset | append key → seq (score): an append retried with the same key (the same SEND) returns its first seq |
//! | `rg:{u}:p` | hash | presence: device → `node connected_at_ms acked_seq online remote` |
//! | `rg:{u}:m` | string | muted until (epoch ms), expiring then by itself (`PXAT`) |
//! | `rg:{u}:d:{device}:{b}` | hash | dedup: client_msg_id → `p msg_id ts node targets...` or `d msg_id ts`, bucket b = (client_msg_id % 100) % 16; expires `dedup_ttl_ms` after the device's last SEND |
//! | `rg:{u}:q:{device}` | list | dedup ids in claim order (evicts beyond the bound), expiring with them |
//! | `rg:{u}:d:{device}` | hash | the previous version's dedup records of a device (one hash, no expiry): only read here (`legacy_dedup_key`) |
//! | `rg:{nodes}:z` | zset | node id → server time (ms) of its last heartbeat |
//! | `rg:{nodes}:i` | hash | node id → `host port transport` |
//! | `rg:{nodes}:x` | hash | msg_id index → `node expires_ms` (leases, `LEASE`) |
//! | `rg:{intents}:z` | zset | pending group sends (`user\ndevice\ncmid`) by claim time |
//! | `rg:{g:<group>}:members` | string | a group's member list (JSON array), alone in its slot |
//! | `rg:{groups}:seeded` | string | set once: the config's `[groups]` seeded the engine |
//! | `rg:{k:<key>}:idem` | string | admin idempotency key: `p hash owner` while its publish runs (short ttl), then `d hash answer` for `admin.idempotency_ttl_s` |
//!
//! A user named like `g:x` shares the slot of group `x`, harmlessly: the
//! suffixes differ, so no key is shared.
//!
//! Notifications go out from inside the append script (so an append and
//! its notification are one engine operation): `A <node> <seq> <len(user)>
//! <user><entry>` for an append, on the channel `rg:n:<node>` of each other
//! node the recipient's presence shows a device online on (`NOTIFY`), and
//! `K <node> <len(user)> <user><device>` for a replacement, on `rg:n`,
//! which every node hears.

/// Removes entries beyond `max` and older than the cutoff (ARGV given by
/// the caller), and the append keys of removed entries; returns the oldest
/// retained seq (head + 1 when empty) and the head. `force`: trim the
/// append keys even when nothing was removed here (CONNECT's floor raise
/// removes entries itself). Every script that removes entries ends with
/// the append keys below the oldest entry gone, so an append that removed
/// nothing skips that step. Shared prelude.
const TRIM: &str = r#"
local function trim(e, i, h, max, cutoff, force)
  local removed = force
  local n = redis.call('ZCARD', e)
  if n > max then
    redis.call('ZREMRANGEBYRANK', e, 0, n - max - 1)
    removed = true
  end
  local f = redis.call('ZRANGE', e, 0, 0, 'WITHSCORES')
  for _ = 1, 256 do
    if #f == 0 then break end
    local a = string.find(f[1], ' ', 1, true)
    local b = string.find(f[1], ' ', a + 1, true)
    if tonumber(string.sub(f[1], a + 1, b - 1)) >= cutoff then break end
    redis.call('ZREMRANGEBYRANK', e, 0, 0)
    removed = true
    f = redis.call('ZRANGE', e, 0, 0, 'WITHSCORES')
  end
  local head = tonumber(redis.call('GET', h) or '0')
  local oldest = head + 1
  if #f > 0 then oldest = tonumber(f[2]) end
  if removed then redis.call('ZREMRANGEBYSCORE', i, '-inf', '(' .. oldest) end
  return oldest, head
end
"#;

/// Publishes an append's notification `msg` (module docs). With
/// `targeted` `1` (every live node listens on its own channel: the node's
/// heartbeat says so, `engine.rs`), only to the channels of the nodes other
/// than `me` that the recipient's presence `p` shows a device online on:
/// a node holds a user's mirror only while a device of the user is
/// connected there, and the CONNECT script that makes it so writes the
/// presence in the same atomic step as it loads the inbox, so a device
/// that connects anywhere either is listed here or has loaded this entry.
/// Should a presence record be stale anyway, the node's heartbeat gap
/// repair fetches the entry (within 2 x heartbeat_ms). No presence at all
/// (never connected, or the engine lost it): every node, on `rg:n`, as
/// when a live node of the previous version (which hears only `rg:n`) is
/// in the fleet. Shared prelude.
const NOTIFY: &str = r#"
local function notify(p, me, msg, targeted)
  if targeted == '1' then
    local recs = redis.call('HVALS', p)
    if #recs > 0 then
      local sent = {}
      for _, r in ipairs(recs) do
        local node, online = string.match(r, '^(%S+) %S+ %S+ (%S+)')
        if online == '1' and node ~= me and not sent[node] then
          sent[node] = true
          redis.call('PUBLISH', 'rg:n:' .. node, msg)
        end
      end
      return
    end
  end
  redis.call('PUBLISH', 'rg:n', msg)
end
"#;

/// KEYS: h, e, i, p. ARGV: msg_id, ts, from, payload, max_messages, cutoff_ms,
/// node, user, key, targeted (`NOTIFY`). Returns `{seq, new}`: the entry's seq, and 0 when this
/// key was already appended (its first seq; nothing written). The key
/// names the SEND (`rules::append_key`), not its msg_id: msg_ids of two
/// nodes can be equal (time, counter and core index, no node), and two
/// messages must never be taken for one.
pub fn append() -> String {
    format!(
        "{TRIM}{NOTIFY}{}",
        r#"
local s = redis.call('ZSCORE', KEYS[3], ARGV[9])
if s then return {tonumber(s), 0} end
local seq = redis.call('INCR', KEYS[1])
local entry = ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. #ARGV[3] .. ' ' .. ARGV[3] .. ARGV[4]
redis.call('ZADD', KEYS[2], seq, entry)
redis.call('ZADD', KEYS[3], seq, ARGV[9])
trim(KEYS[2], KEYS[3], KEYS[1], tonumber(ARGV[5]), tonumber(ARGV[6]), false)
notify(KEYS[4], ARGV[7], 'A ' .. ARGV[7] .. ' ' .. seq .. ' ' .. #ARGV[8] .. ' ' .. ARGV[8] .. entry, ARGV[10])
return {seq, 1}
"#
    )
}

/// The whole client SEND in one script, for a single engine (not a
/// Cluster: the sender's dedup keys and the recipients' inboxes are in
/// different slots). KEYS: d (the claim's bucket, `dedup_key`), q, m, the
/// previous version's hash (`legacy_dedup_key`, or d again), then h, e, i,
/// p of each target. ARGV: cmid, msg_id, ts, node, keep, now_ms, claim
/// (`0`: a refused group send only looks for its stored original), from,
/// payload, max_messages, cutoff_ms, append key, dedup ttl (ms), d's
/// prefix (`rg:{u}:d:{device}:`, for evicting from another bucket),
/// legacy (`1`: look in the previous version's hash too), targeted
/// (`NOTIFY`), then one user per target. Returns `{0, record}` when the id is already
/// claimed (done: the original answer; pending: a multi-step attempt the
/// caller finishes), `{2}` muted, `{3}` nothing found (claim `0`), else
/// `{1, seq, new, seq, new, ...}` per target: claimed, appended (each
/// append idempotent by the append key, as `append`) and marked done in
/// one atomic step, so nothing is ever left pending.
pub fn send() -> String {
    format!(
        "{TRIM}{NOTIFY}{}",
        r#"
DEDUP_LOOKUP
if v then return {0, v} end
local m = redis.call('GET', KEYS[3])
if m and tonumber(m) > tonumber(ARGV[6]) then return {2} end
if ARGV[7] ~= '1' then return {3} end
local entry = ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. #ARGV[8] .. ' ' .. ARGV[8] .. ARGV[9]
local max, cutoff = tonumber(ARGV[10]), tonumber(ARGV[11])
local out = {1}
for t = 1, #ARGV - 16 do
  local h, e, i, p = KEYS[4 * t + 1], KEYS[4 * t + 2], KEYS[4 * t + 3], KEYS[4 * t + 4]
  local s = redis.call('ZSCORE', i, ARGV[12])
  if s then
    out[#out + 1] = tonumber(s)
    out[#out + 1] = 0
  else
    local seq = redis.call('INCR', h)
    redis.call('ZADD', e, seq, entry)
    redis.call('ZADD', i, seq, ARGV[12])
    trim(e, i, h, max, cutoff, false)
    local u = ARGV[16 + t]
    notify(p, ARGV[4], 'A ' .. ARGV[4] .. ' ' .. seq .. ' ' .. #u .. ' ' .. u .. entry, ARGV[16])
    out[#out + 1] = seq
    out[#out + 1] = 1
  end
end
DEDUP_RECORD
return out
"#
    )
    .replace("DEDUP_LOOKUP", &dedup_lookup("ARGV[1]", "ARGV[15]", "ARGV[5]", "ARGV[13]", "ARGV[14]"))
    .replace("DEDUP_RECORD", &dedup_record("'d ' .. ARGV[2] .. ' ' .. ARGV[3]", "ARGV[1]", "ARGV[5]", "ARGV[13]", "ARGV[14]"))
}

/// Lua that sets `v` to the dedup record of `cmid`: from the claim's
/// bucket (KEYS[1]), else, when `legacy` is `1`, from the one hash per
/// device in which the previous version kept them (KEYS[4],
/// `legacy_dedup_key`), so a retry that crosses versions during a rolling
/// upgrade gets the answer an old node recorded instead of being stored
/// again. The legacy hash is only read (the old nodes still running own
/// it). A *pending* record found there (an old node died between its claim
/// and its last copy) is copied into the bucket, queued and expiring like
/// any record, so the retry or survivor that finishes it marks it done
/// where `DONE` looks: left pending, every later retry would append it
/// again, a second copy once retention had trimmed the first's append key.
fn dedup_lookup(cmid: &str, legacy: &str, keep: &str, ttl: &str, prefix: &str) -> String {
    format!(
        r#"
local v = redis.call('HGET', KEYS[1], {cmid})
if not v and {legacy} == '1' then
  v = redis.call('HGET', KEYS[4], {cmid})
  if v and string.sub(v, 1, 2) == 'p ' then
{adopt}  end
end
"#,
        adopt = dedup_record("v", cmid, keep, ttl, prefix)
    )
}

/// Lua that stores `rec` for `cmid` in the claim's bucket (KEYS[1]),
/// queues the id (KEYS[2]), evicts the oldest id beyond `keep` from its
/// own bucket (`prefix .. bucket`), and makes the touched keys expire
/// after `ttl` ms without a SEND of the device (`dedup_key` says why).
fn dedup_record(rec: &str, cmid: &str, keep: &str, ttl: &str, prefix: &str) -> String {
    format!(
        r#"
redis.call('HSET', KEYS[1], {cmid}, {rec})
redis.call('RPUSH', KEYS[2], {cmid})
if redis.call('LLEN', KEYS[2]) > tonumber({keep}) then
  local old = redis.call('LPOP', KEYS[2])
  redis.call('HDEL', {prefix} .. (tonumber(string.sub(old, -2)) % {buckets}), old)
end
redis.call('PEXPIRE', KEYS[1], {ttl})
redis.call('PEXPIRE', KEYS[2], {ttl})
"#,
        buckets = DEDUP_BUCKETS
    )
}

/// KEYS: h, e, i, p. ARGV: last_seq, device, node, now_ms, max_messages,
/// cutoff_ms, limit, user, remote (the device's address, `-` unknown). Applies retention, raises the head past a
/// `last_seq` the engine does not know (it lost data: seqs are never
/// reused; what is below the raised head is dropped so no device waits for
/// a seq that will never exist), records presence, announces the
/// replacement and returns `{oldest, head, raised, entries...}` with the
/// entries above `last_seq` (at most `limit`, as member, score pairs).
pub fn connect() -> String {
    format!(
        "{TRIM}{}",
        r#"
local last = tonumber(ARGV[1])
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local raised = 0
if last > head then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
  raised = 1
end
local oldest, h = trim(KEYS[2], KEYS[3], KEYS[1], tonumber(ARGV[5]), tonumber(ARGV[6]), true)
redis.call('HSET', KEYS[4], ARGV[2], ARGV[3] .. ' ' .. ARGV[4] .. ' ' .. ARGV[1] .. ' 1 ' .. ARGV[9])
redis.call('PUBLISH', 'rg:n', 'K ' .. ARGV[3] .. ' ' .. #ARGV[8] .. ' ' .. ARGV[8] .. ARGV[2])
local e = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[7]))
return {oldest, h, raised, e}
"#
    )
}

/// KEYS: h, e. ARGV: after_seq, limit. Returns `{oldest, head, entries}`
/// (entries above `after_seq`, member/score pairs).
pub const FETCH: &str = r#"
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local oldest = head + 1
local f = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #f > 0 then oldest = tonumber(f[2]) end
local e = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
return {oldest, head, e}
"#;

/// KEYS: d (the claim's bucket, `dedup_key`), q, m, the previous
/// version's hash (`legacy_dedup_key`, or d again). ARGV: cmid, msg_id,
/// ts, node, keep, targets (joined by '\n'), payload (group sends only: a
/// survivor completes them without the client), now_ms, claim (`1`; `0`
/// only looks: a group send the engine refuses must still find its stored
/// original, and the intent sweep reads a record this way), dedup ttl
/// (ms), d's prefix, legacy (`1`: look in the previous version's hash
/// too, `dedup_lookup`). Claims the client_msg_id of a
/// sending device: returns nil when claimed now (or, with claim `0`, when
/// there is nothing to find), `m` when the sender is muted (checked after
/// the lookup: a SEND accepted before the mute and retried keeps its
/// answer, ADMIN.md), else the existing record `p|d msg_id ts node
/// len(targets) targets payload` (a done one may be just `d msg_id ts`).
/// The multi-step path (a Cluster, or a group too large for one script).
pub fn claim() -> String {
    format!(
        "{}{}{}return false\n",
        dedup_lookup("ARGV[1]", "ARGV[12]", "ARGV[5]", "ARGV[10]", "ARGV[11]"),
        r#"
if v then return v end
local m = redis.call('GET', KEYS[3])
if m and tonumber(m) > tonumber(ARGV[8]) then return 'm' end
if ARGV[9] ~= '1' then return false end
"#,
        dedup_record("'p ' .. ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[4] .. ' ' .. #ARGV[6] .. ' ' .. ARGV[6] .. ARGV[7]", "ARGV[1]", "ARGV[5]", "ARGV[10]", "ARGV[11]")
    )
}

/// KEYS: d. ARGV: cmid, record. Marks a claimed send done (every copy
/// appended): the record becomes `d msg_id ts` (targets and payload are
/// no longer needed; short, so the bucket stays compact in the engine).
pub const DONE: &str = r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"#;

/// KEYS: rg:{nodes}:z, rg:{nodes}:i. ARGV: node, info, ttl_ms. Heartbeat on the
/// engine's clock (no skew between nodes): records this node, forgets
/// nodes silent for longer than ttl, returns the live ones as
/// `{node, info, ...}`.
pub const HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[3])))
for _, n in ipairs(dead) do
  redis.call('ZREM', KEYS[1], n)
  redis.call('HDEL', KEYS[2], n)
end
local live = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for _, n in ipairs(live) do
  out[#out + 1] = n
  out[#out + 1] = redis.call('HGET', KEYS[2], n) or ''
end
return out
"#;

/// KEYS: h, e, i. ARGV: floor, below, after_ms, seqs to move... A node
/// found that the engine lost data under a device that stayed connected:
/// its mirror holds seqs up to `floor`, and the engine's head is below it,
/// or holds a different message at one of `seqs` (appended after the loss,
/// at a seq the device already has), or one below the mirror's first seq
/// `below` appended after `after_ms` (the devices had everything there by
/// then: their CONNECT cursors, the entries the mirror dropped). Each such
/// message — the listed seqs, and every entry below `below` with a
/// timestamp past `after_ms` — is moved above the head (its append key
/// follows it, so a retry still finds it), the head is raised to at least
/// `floor`. What is left at or below `floor` stays
/// (retention trims it): the node may not have seen every message appended
/// since the loss when it asks — a fast sender's next appends can reach the
/// engine before their notifications reach the node — and those must still
/// be there when its next request names them. Dropping them lost confirmed
/// messages (tests/fleet_failover.rs, sends pipelined right after a
/// FLUSHALL). Returns `{changed, head}` (changed: 0 when the engine was
/// already past `floor` with nothing to move).
pub const FLOOR: &str = r#"
local floor = tonumber(ARGV[1])
local below = tonumber(ARGV[2])
local after_ms = tonumber(ARGV[3])
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local changed = 0
if head < floor then head = floor; changed = 1 end
local seqs = {}
if below > 1 then
  local low = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. below, 'WITHSCORES')
  for k = 1, #low, 2 do
    local a = string.find(low[k], ' ', 1, true)
    local b = string.find(low[k], ' ', a + 1, true)
    if tonumber(string.sub(low[k], a + 1, b - 1)) > after_ms then seqs[#seqs + 1] = tonumber(low[k + 1]) end
  end
end
for k = 4, #ARGV do seqs[#seqs + 1] = tonumber(ARGV[k]) end
for _, s in ipairs(seqs) do
  if s <= floor then
    local m = redis.call('ZRANGEBYSCORE', KEYS[2], s, s)
    if #m > 0 then
      local keys = redis.call('ZRANGEBYSCORE', KEYS[3], s, s)
      head = head + 1
      redis.call('ZREM', KEYS[2], m[1])
      redis.call('ZADD', KEYS[2], head, m[1])
      for _, key in ipairs(keys) do redis.call('ZADD', KEYS[3], head, key) end
      changed = 1
    end
  end
end
if changed == 1 then
  redis.call('SET', KEYS[1], head)
end
return {changed, head}
"#;

/// KEYS: rg:{nodes}:x. ARGV: node, ttl_ms, the index it holds (-1: none),
/// how many indexes there are. The node's msg_id index
/// (`fleet::fleet_msg_id`), on the engine's clock: the one it holds is
/// renewed while still its own; else the first index that is free, lapsed
/// (its holder missed renewing it for ttl), or last held by this node id
/// (a restarted node takes its own back). Returns the index, or -1 when
/// all are held. Hash field = index, value = `node expires_ms`.
pub const LEASE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rec = ARGV[1] .. ' ' .. (now + tonumber(ARGV[2]))
local function usable(i)
  local v = redis.call('HGET', KEYS[1], i)
  if not v then return true end
  local n, exp = string.match(v, '^(%S+) (%d+)$')
  return n == ARGV[1] or exp == nil or tonumber(exp) < now
end
local cur = tonumber(ARGV[3])
if cur >= 0 and usable(cur) then
  redis.call('HSET', KEYS[1], cur, rec)
  return cur
end
for i = 0, tonumber(ARGV[4]) - 1 do
  if usable(i) then
    redis.call('HSET', KEYS[1], i, rec)
    return i
  end
end
return -1
"#;

/// KEYS: p. ARGV: device, node, acked, connected_at_ms. A device's
/// connection ended on `node`: its presence shows it offline with its
/// cursor, unless the record is another connection's — the device has
/// connected since, on another node or on this one (its CONNECT stamped
/// the record with another `connected_at_ms`; a replaced connection
/// closing late must not hide the newer one).
pub const OFFLINE: &str = r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local node, at, _, _, remote = string.match(v, '^(%S+) (%S+) (%S+) (%S+) ?(.*)$')
if node ~= ARGV[2] or at ~= ARGV[4] then return 0 end
if remote == nil or remote == '' then remote = '-' end
redis.call('HSET', KEYS[1], ARGV[1], node .. ' ' .. at .. ' ' .. ARGV[3] .. ' 0 ' .. remote)
return 1
"#;

/// KEYS: h, e, p, m. The admin API's view of a user: `{head, oldest,
/// muted_until, device, record, ...}`.
pub const PRESENCE: &str = r#"
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local oldest = head + 1
local f = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #f > 0 then oldest = tonumber(f[2]) end
local m = tonumber(redis.call('GET', KEYS[4]) or '0')
return {head, oldest, m, redis.call('HGETALL', KEYS[3])}
"#;

/// KEYS: rg:{nodes}:z. ARGV: ttl_ms. The nodes live now, on the engine's
/// clock (the same rule as the heartbeat's, read fresh rather than from
/// the last heartbeat, so a dead node is off within 3 x heartbeat_ms).
pub const LIVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')
"#;

/// KEYS: a group's key. ARGV: expected ('' = absent), new. Compare and
/// set: a member edit (read, change, write) from any node applies on the
/// list it read, or is retried. Returns 1 when set.
pub const GROUP_CAS: &str = r#"
local v = redis.call('GET', KEYS[1]) or ''
if v ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"#;

/// KEYS: an idempotency key. ARGV: pending record, its ttl (ms). Returns
/// nil when claimed now, else the record found.
pub const IDEM_CLAIM: &str = r#"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"#;

/// KEYS: an idempotency key. ARGV: the pending record this node wrote,
/// the final record ('' = forget: the publish failed), its ttl (ms).
/// Only the claim's owner finishes it.
pub const IDEM_FINISH: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1
"#;

/// A group's key: alone in its hash slot.
pub fn group_key(group: &str) -> String {
    format!("rg:{{g:{group}}}:members")
}

/// An admin idempotency key's key.
pub fn idem_key(key: &str) -> String {
    format!("rg:{{k:{key}}}:idem")
}

/// Dedup records of one sending device are spread over this many hashes
/// by `client_msg_id`, so each stays small enough (Redis's default
/// `hash-max-listpack-entries` is 128) for the engine's compact encoding:
/// about a quarter of the memory of one large hash.
pub const DEDUP_BUCKETS: u64 = 16;

/// The hash holding the dedup record of `cmid` sent by `device` of `user`
/// (the user's slot). The records of a device expire together with the
/// device's queue `dedup_ttl_ms` after its last SEND; while it sends, the
/// last `keep` ids are kept (PROTOCOL.md rule 4 asks for 1024).
pub fn dedup_key(user: &str, device: &str, cmid: u64) -> String {
    format!("{}{}", dedup_prefix(user, device), dedup_bucket(cmid))
}

/// From the last two decimal digits (what the eviction in Lua, whose
/// numbers are doubles, computes exactly for any u64): even for ids that
/// count up, and at most 7 of every 100 consecutive ids in one bucket.
pub fn dedup_bucket(cmid: u64) -> u64 {
    (cmid % 100) % DEDUP_BUCKETS
}

/// `dedup_key` without the bucket.
pub fn dedup_prefix(user: &str, device: &str) -> String {
    format!("rg:{{{user}}}:d:{device}:")
}

/// The one hash per device in which the previous version kept a device's
/// dedup records (no buckets, no expiry), read as a fallback during a
/// rolling upgrade (`dedup_lookup`). None when that name is also a bucket
/// of another device (`x:3`'s old hash is bucket 3 of device `x`): such a
/// device's retries across versions are not recognised, rather than
/// answered with another device's record.
pub fn legacy_dedup_key(user: &str, device: &str) -> Option<String> {
    // Exactly how `dedup_key` writes a bucket: 0..=15, no leading zero.
    let bucket_like = device.rsplit_once(':').is_some_and(|(_, b)| b.parse::<u64>().is_ok_and(|n| n < DEDUP_BUCKETS && n.to_string() == b));
    (!bucket_like).then(|| format!("rg:{{{user}}}:d:{device}"))
}

/// The queue of a device's dedup ids in claim order.
pub fn dedup_queue(user: &str, device: &str) -> String {
    format!("rg:{{{user}}}:q:{device}")
}

/// A user's mute key (the user's slot: the claim script reads it).
pub fn mute_key(user: &str) -> String {
    format!("rg:{{{user}}}:m")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_legacy_dedup_hash_is_never_another_devices_bucket() {
        assert_eq!(legacy_dedup_key("u", "a1").as_deref(), Some("rg:{u}:d:a1"));
        assert_eq!(dedup_key("u", "x", 3), "rg:{u}:d:x:3");
        assert_eq!(legacy_dedup_key("u", "x:3"), None, "bucket 3 of device x");
        assert_eq!(legacy_dedup_key("u", "x:15"), None);
        for d in ["x:16", "x:03", "x:", "x:-1", "3", "a:b"] {
            assert_eq!(legacy_dedup_key("u", d), Some(format!("rg:{{u}}:d:{d}")), "{d} names no bucket");
        }
    }
}
