"""The Lua scripts that change a shared cache in Redis: each one changes the entries and appends
its change to the shard's stream in one atomic step.

Every key a script touches carries the shard's hash tag (``{prefix:shard}``), so a shard lives in
one Redis Cluster slot. ``KEYS`` are always the shard's fixed keys in this order::

    1 ids      zset  entry id -> last use (ms)      the capacity and eviction order
    2 exp      zset  entry id -> expiry time (ms)   entries with a TTL only
    3 keys     hash  "<key>\\0<namespace>" -> id     the exact-match key of each keyed entry
    4 writers  hash  writer number -> last id it stored (replayed writes are applied once)
    5 seq      string  the number of the last stream record
    6 log      stream  the changes, bounded by ``MAXLEN ~``

``ARGV[1]`` is the shard's tag (``{prefix:shard}``): entry ``id`` lives at ``<tag>:e:<id>`` (a
hash: ``c`` code, ``n`` namespace, ``k`` key or ``""``, ``x`` expiry in ms or 0, ``p`` payload,
``t`` creation time in ms) and the ids of namespace ``ns`` in the set ``<tag>:n:<ns>``.
``ARGV[2]`` is the stream's approximate maximum length.

Times come from the Redis server's clock (``TIME``), so every process agrees on them.
"""

from __future__ import annotations

__all__ = ["COMMON", "DELETE", "FLUSH", "HEAD", "NAMESPACE", "PURGE", "PUT", "WRITER"]

# Helpers shared by the scripts below (prepended to each).
COMMON = r"""
local tag = ARGV[1]
local maxlen = ARGV[2]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Removes entry g everywhere; whether it was there.
local function drop(g)
  local ek = tag .. ':e:' .. g
  local f = redis.call('HMGET', ek, 'n', 'k')
  local was = redis.call('ZREM', KEYS[1], g) == 1
  redis.call('ZREM', KEYS[2], g)
  if f[1] then
    was = true
    redis.call('UNLINK', ek)
    redis.call('SREM', tag .. ':n:' .. f[1], g)
    if f[2] and f[2] ~= '' then
      local field = f[2] .. '\0' .. f[1]
      if redis.call('HGET', KEYS[3], field) == g then redis.call('HDEL', KEYS[3], field) end
    end
  end
  return was
end
-- Removes up to `limit` entries whose TTL has run out; their ids.
local function purge(now, limit)
  local gone = {}
  local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
  for _, g in ipairs(due) do
    if drop(g) then table.insert(gone, g) end
  end
  return gone
end
local function append(...)
  local q = redis.call('INCR', KEYS[5])
  local id = redis.call('XADD', KEYS[6], 'MAXLEN', '~', maxlen, '*', 'q', q, ...)
  return q, id
end
"""

# ARGV: tag, maxlen, writer, id, code, namespace, key ("" for none), ttl in ms ("" for none),
# payload, capacity.
# Returns {0} for a write already applied (a replay), else {1, q, stream id, now, expiry,
# evicted ids, other removed ids} (ids comma-separated).
PUT = r"""
local writer, g = ARGV[3], ARGV[4]
local code, ns, key, ttl, payload = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local cap = tonumber(ARGV[10])
local last = redis.call('HGET', KEYS[4], writer)
if last and tonumber(last) >= tonumber(g) then return {0} end
redis.call('HSET', KEYS[4], writer, g)
local now = now_ms()
local gone = purge(now, 64)
if key ~= '' then
  local field = key .. '\0' .. ns
  local old = redis.call('HGET', KEYS[3], field)
  if old and drop(old) then table.insert(gone, old) end
end
local evicted = {}
while redis.call('ZCARD', KEYS[1]) >= cap do
  local popped = redis.call('ZPOPMIN', KEYS[1])
  if #popped == 0 then break end
  drop(popped[1])
  table.insert(evicted, popped[1])
end
local x = 0
if ttl ~= '' then x = now + tonumber(ttl) end
local ek = tag .. ':e:' .. g
redis.call('HSET', ek, 'c', code, 'n', ns, 'k', key, 'x', x, 'p', payload, 't', now)
if x > 0 then redis.call('ZADD', KEYS[2], x, g) end
redis.call('ZADD', KEYS[1], now, g)
redis.call('SADD', tag .. ':n:' .. ns, g)
if key ~= '' then redis.call('HSET', KEYS[3], key .. '\0' .. ns, g) end
local ev, gn = table.concat(evicted, ','), table.concat(gone, ',')
local q, id = append('o', 'put', 'g', g, 'c', code, 'n', ns, 'k', key, 'x', x, 'p', payload, 't', now,
  'ev', ev, 'gn', gn)
return {1, q, id, now, x, ev, gn}
"""

# ARGV: tag, maxlen, ids... Returns {removed ids (comma-separated), q, stream id} or {''}.
DELETE = r"""
local gone = {}
for i = 3, #ARGV do
  if drop(ARGV[i]) then table.insert(gone, ARGV[i]) end
end
if #gone == 0 then return {''} end
local gn = table.concat(gone, ',')
local q, id = append('o', 'del', 'gn', gn)
return {gn, q, id}
"""

# ARGV: tag, maxlen, namespace. Returns as DELETE.
NAMESPACE = r"""
local members = redis.call('SMEMBERS', tag .. ':n:' .. ARGV[3])
local gone = {}
for _, g in ipairs(members) do
  if drop(g) then table.insert(gone, g) end
end
redis.call('UNLINK', tag .. ':n:' .. ARGV[3])
if #gone == 0 then return {''} end
local gn = table.concat(gone, ',')
local q, id = append('o', 'del', 'gn', gn)
return {gn, q, id}
"""

# ARGV: tag, maxlen, limit. Returns as DELETE (the expired ids).
PURGE = r"""
local gone = purge(now_ms(), tonumber(ARGV[3]))
if #gone == 0 then return {''} end
local gn = table.concat(gone, ',')
local q, id = append('o', 'del', 'gn', gn)
return {gn, q, id}
"""

# ARGV: tag, maxlen. Removes every entry of the shard. Returns {count, q, stream id}.
FLUSH = r"""
local count = 0
while true do
  local batch = redis.call('ZRANGE', KEYS[1], 0, 999)
  if #batch == 0 then break end
  for _, g in ipairs(batch) do
    if drop(g) then count = count + 1 end
  end
end
local rest = redis.call('ZRANGE', KEYS[2], 0, -1)
for _, g in ipairs(rest) do drop(g) end
redis.call('UNLINK', KEYS[2], KEYS[3])
local q, id = append('o', 'flush')
return {count, q, id}
"""

# KEYS: the writer counter; ARGV: a floor. A new writer number: the counter, first raised to the
# floor, plus one.
WRITER = r"""
local c = tonumber(redis.call('GET', KEYS[1]) or '0')
local f = tonumber(ARGV[1])
if c < f then redis.call('SET', KEYS[1], f) end
return redis.call('INCR', KEYS[1])
"""

# ARGV: tag, maxlen. The shard's position: {q, last stream id ("0-0" when empty), now}.
HEAD = r"""
local q = tonumber(redis.call('GET', KEYS[5]) or '0')
local last = redis.call('XREVRANGE', KEYS[6], '+', '-', 'COUNT', 1)
local id = '0-0'
if #last > 0 then id = last[1][1] end
return {q, id, now_ms()}
"""
