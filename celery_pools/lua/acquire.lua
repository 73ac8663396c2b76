--[[
acquire.lua: take a slot of the pool serving a connector instance, or register as a waiter.

KEYS[1]  {p}:instances              HASH instance -> pool name
KEYS[2]  {p}:held                   HASH task id -> pool name
KEYS[3]  {p}:pool:<name>            HASH limit, timeout (ms), uid, cleared (ms)
KEYS[4]  {p}:pool:<name>:instances  SET  (unused here; keeps every pool script's key order)
KEYS[5]  {p}:pool:<name>:holders    ZSET task id -> lease expiry (ms)
KEYS[6]  {p}:pool:<name>:holder     HASH task id -> holder JSON
KEYS[7]  {p}:pool:<name>:waiters    ZSET task id -> deadline (ms)
KEYS[8]  {p}:pool:<name>:waiter     HASH task id -> waiter JSON
KEYS[9]  {p}:pool:<name>:stats      HASH counters and histogram buckets

ARGV[1]  connector instance
ARGV[2]  pool name the caller believes serves the instance ("" for none); KEYS[3..8] are its keys
ARGV[3]  token: the task id
ARGV[4]  lease (ms)
ARGV[5]  when the task first asked for a slot (ms, Redis clock), "" on its first attempt
ARGV[6]  uid of the pool the task last waited in, "" if it has not waited
ARGV[7]  JSON object describing the task (task_name, instance, hostname, pid); "since" is added
ARGV[8]  histogram bucket upper bounds (ms, ascending, comma-separated)

Stats fields touched: acquired_immediate, acquired_waited, timeouts, reclaimed, "acquired:<instance>",
and the wait-time histogram "wait:<bucket index>" (index #bounds is +Inf), "wait:sum" (ms),
"wait:count"; "started" is set (ms) on the first event.

The Redis server's clock decides every lease and deadline. Holders whose lease has lapsed are
reclaimed first. A token that already holds a slot keeps it (a redelivered message takes no second).

Returns one of
  {"MOVED", now, pool}          the instance is served by another pool ("" for none): call again
  {"UNASSIGNED", now}           the instance has no pool
  {"CLEARED", now, first}       the pool was cleared after this task began to wait in it
  {status, now, first, limit, in_use, timeout, uid, reentrant, reclaimed JSON...}
      status "OK"      the slot is taken (reentrant = 1 when the token already held it)
      status "FULL"    no free slot; the task is registered as a waiter until first + timeout
      status "TIMEOUT" no free slot and first + timeout has passed; the waiter entry is removed
]]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local actual = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if actual ~= ARGV[2] then
  return {'MOVED', now, actual}
end
if actual == '' then
  return {'UNASSIGNED', now}
end

local cfg = redis.call('HMGET', KEYS[3], 'limit', 'timeout', 'uid', 'cleared')
if not cfg[1] then
  return {'MOVED', now, ''}
end
local limit = tonumber(cfg[1])
local timeout = tonumber(cfg[2])
local uid = cfg[3]
local cleared = tonumber(cfg[4] or '')
local token = ARGV[3]
local first = tonumber(ARGV[5]) or now

if cleared and ARGV[6] == uid and first <= cleared then
  redis.call('ZREM', KEYS[7], token)
  redis.call('HDEL', KEYS[8], token)
  return {'CLEARED', now, first}
end

-- Reclaim lapsed leases (bounded per call; every acquisition continues the sweep).
local function observe(field, ms)
  local index = 0
  for bound in string.gmatch(ARGV[8], '[^,]+') do
    if ms <= tonumber(bound) then break end
    index = index + 1
  end
  redis.call('HINCRBY', KEYS[9], field .. ':' .. index, 1)
  redis.call('HINCRBY', KEYS[9], field .. ':sum', ms)
  redis.call('HINCRBY', KEYS[9], field .. ':count', 1)
end
redis.call('HSETNX', KEYS[9], 'started', now)

local reclaimed = {}
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, 100)
for _, holder in ipairs(lapsed) do
  local info = redis.call('HGET', KEYS[6], holder)
  redis.call('ZREM', KEYS[5], holder)
  redis.call('HDEL', KEYS[6], holder)
  if redis.call('HGET', KEYS[2], holder) == actual then
    redis.call('HDEL', KEYS[2], holder)
  end
  reclaimed[#reclaimed + 1] = cjson.encode({token = holder, info = info or ''})
end
if #reclaimed > 0 then
  redis.call('HINCRBY', KEYS[9], 'reclaimed', #reclaimed)
end
-- Forget waiters a minute past their deadline: their task is gone (revoked, purged, lost).
local stale = redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', now - 60000, 'LIMIT', 0, 100)
for _, waiter in ipairs(stale) do
  redis.call('ZREM', KEYS[7], waiter)
  redis.call('HDEL', KEYS[8], waiter)
end

local function reply(status, in_use, reentrant)
  local out = {status, now, first, limit, in_use, timeout, uid, reentrant}
  for _, r in ipairs(reclaimed) do out[#out + 1] = r end
  return out
end

local in_use = redis.call('ZCARD', KEYS[5])
if redis.call('ZSCORE', KEYS[5], token) then
  redis.call('ZADD', KEYS[5], now + tonumber(ARGV[4]), token)
  return reply('OK', in_use, 1)
end

if in_use < limit then
  local info = cjson.decode(ARGV[7])
  info['since'] = now
  redis.call('ZADD', KEYS[5], now + tonumber(ARGV[4]), token)
  redis.call('HSET', KEYS[6], token, cjson.encode(info))
  redis.call('HSET', KEYS[2], token, actual)
  redis.call('ZREM', KEYS[7], token)
  redis.call('HDEL', KEYS[8], token)
  redis.call('HINCRBY', KEYS[9], ARGV[5] == '' and 'acquired_immediate' or 'acquired_waited', 1)
  redis.call('HINCRBY', KEYS[9], 'acquired:' .. ARGV[1], 1)
  observe('wait', now - first)
  return reply('OK', in_use + 1, 0)
end

local deadline = first + timeout
if now >= deadline then
  redis.call('ZREM', KEYS[7], token)
  redis.call('HDEL', KEYS[8], token)
  redis.call('HINCRBY', KEYS[9], 'timeouts', 1)
  return reply('TIMEOUT', in_use, 0)
end

redis.call('ZADD', KEYS[7], deadline, token)
if redis.call('HEXISTS', KEYS[8], token) == 0 then
  local info = cjson.decode(ARGV[7])
  info['since'] = first
  redis.call('HSET', KEYS[8], token, cjson.encode(info))
end
return reply('FULL', in_use, 0)
