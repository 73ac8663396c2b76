--[[
acquire.lua: take a slot of the pool serving a connector instance (and a rate token, when the
instance has a rate limit), or register as a waiter. A task gets both or neither: no slot is held
while it waits for a token, and no token is spent while no slot is free.

KEYS[1]  {p}:instances              HASH instance -> pool name
KEYS[2]  {p}:held                   HASH task id -> pool name
KEYS[3]  {p}:rates                  HASH instance -> "<interval ms>/<tolerance ms>/<count>/<period ms>"
KEYS[4]  {p}:paused                 HASH instance -> paused until (ms)
KEYS[5]  {p}:rate:<instance>        STRING GCRA theoretical arrival time (ms)
KEYS[6]  {p}:pool:<name>            HASH limit, timeout (ms), uid, cleared (ms)
KEYS[7]  {p}:pool:<name>:instances  SET  (unused here; keeps every pool script's key order)
KEYS[8]  {p}:pool:<name>:holders    ZSET task id -> lease expiry (ms)
KEYS[9]  {p}:pool:<name>:holder     HASH task id -> holder JSON
KEYS[10] {p}:pool:<name>:waiters    ZSET task id -> deadline (ms)
KEYS[11] {p}:pool:<name>:waiter     HASH task id -> waiter JSON
KEYS[12] {p}:pool:<name>:stats      HASH counters and histogram buckets
KEYS[13] {p}:pool:<name>:queue      ZSET parked task id -> place in line (us): the hand-off FIFO
KEYS[14] {p}:pool:<name>:parked     HASH (unused here; keeps every pool script's key order)
KEYS[15] {p}:pool:<name>:handing    HASH task id handed a slot, not started -> entry JSON
KEYS[16] {p}:pool:<name>:rate_parked HASH rate-limited instance -> its tasks parked in the FIFO
KEYS[17] {p}:stale                  ZSET hand-off ids whose message must never run

ARGV[1]  connector instance
ARGV[2]  pool name the caller believes serves the instance ("" for none); KEYS[6..12] are its keys
ARGV[3]  token: the task id
ARGV[4]  lease (ms)
ARGV[5]  when the task first asked for a slot (ms, Redis clock), "" on its first attempt
ARGV[6]  uid of the pool the task last waited in, "" if it has not waited
ARGV[7]  JSON object describing the task (task_name, instance, hostname, pid); "since" is added
ARGV[8]  histogram bucket upper bounds (ms, ascending, comma-separated)
ARGV[9]  timeout (ms) for an instance with no pool that waits for its rate limit or a pause
ARGV[10] how this task waits: "countdown", "handoff", or "" for the pool's own mode
ARGV[11] the hand-off id the task's message carries ("" when it was not handed a slot)
ARGV[12] how many tasks of one rate-limited instance may be parked in a pool at a time: past
         that, a task that would park waits by countdown, and parks in its place (its first
         request) when there is room

The Redis server's clock decides every lease, deadline and rate decision. Holders whose lease has
lapsed are reclaimed first. A token that already holds a slot keeps it (a redelivered message
takes no second slot and no second rate token). Rate limits use GCRA: a call may start when the
theoretical arrival time is at most <tolerance> ahead of now; each call moves it <interval> on.

Stats fields touched: acquired_immediate, acquired_waited, timeouts, reclaimed, handoffs_returned,
"acquired:<instance>",
and the wait-time histogram "wait:<bucket index>" (index #bounds is +Inf), "wait:sum" (ms),
"wait:count"; "started" is set (ms) on the first event.

Returns {"MOVED", now, pool} when the instance is served by another pool ("" for none): call again
with that pool's keys. Otherwise
  {status, now, first, limit, in_use, timeout, uid, reentrant, retry_ms, reason, reclaimed JSON...}
  status "OK"         the slot (and token) are taken; reentrant = 1 when the token already held it;
                      reason "handoff" when it claimed a slot handed to it after waiting,
                      "granted" when the slot was granted to it as it was published
  status "STALE"      a stale copy of a handed-off message: its hand-off lapsed (the task was
                      handed its slot again, or ended by its deadline, a clear or a delete), or
                      the task holds, or waits for, its slot under another hand-off id; this
                      copy must not run
  status "UNASSIGNED" the instance has no pool (its rate token, if it has a rate limit, is taken)
  status "FULL"       no free slot; with reason "countdown" the task is registered as a waiter
                      until first + timeout; with reason "handoff" it must park (park.lua). In
                      hand-off mode a task also parks while older tasks are parked (FIFO).
  status "RATE"       a slot is free but the rate limit or a pause says wait retry_ms; reason is
                      "rate" or "paused"; nothing was taken. A task handed or granted a slot
                      whose instance was paused or rate-limited since gives the slot back (the
                      caller hands it on) and gets this answer (TIMEOUT past its deadline)
  status "TIMEOUT"    first + timeout has passed; reason is "pool", "rate" or "paused"
  status "CLEARED"    the pool was cleared after this task began to wait in it
]]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local instance, token = ARGV[1], ARGV[3]

local actual = redis.call('HGET', KEYS[1], instance) or ''
if actual ~= ARGV[2] then
  return {'MOVED', now, actual}
end
local first = tonumber(ARGV[5]) or now

-- include: gcra.lua

-- How long the rate limit or a pause holds this call back (0: it may go). Takes the token,
-- unless `rated` says the call has it already (a hand-off took it).
local function hold_back(rated)
  local paused = tonumber(redis.call('HGET', KEYS[4], instance) or '')
  if paused then
    if paused > now then
      return math.ceil(paused - now), 'paused'
    end
    redis.call('HDEL', KEYS[4], instance)
  end
  local spec = not rated and redis.call('HGET', KEYS[3], instance)
  if not spec then
    return 0, ''
  end
  local retry = take_rate_token(KEYS[5], spec, now)
  return retry, retry > 0 and 'rate' or ''
end

local reclaimed = {}
local function reply(status, limit, in_use, timeout, uid, reentrant, retry, reason)
  local out = {status, now, first, limit, in_use, timeout, uid, reentrant, retry, reason}
  for _, r in ipairs(reclaimed) do out[#out + 1] = r end
  return out
end

-- A copy of a message whose hand-off lapsed never runs, whenever it arrives and wherever the
-- instance's pool is now: the task was handed its slot again, or ended, under another message.
-- (Unless the task holds its slot under that very id: ids start over in a pool deleted and
-- created again, or one that counted them with its metrics, before an upgrade.)
if ARGV[11] ~= '' and redis.call('ZSCORE', KEYS[17], ARGV[11]) then
  local mine = actual ~= '' and redis.call('HGET', KEYS[9], token)
  local held = mine and cjson.decode(mine) or {}
  if held['handoff'] ~= ARGV[11] and held['claimed'] ~= ARGV[11] then
    return reply('STALE', 0, 0, 0, '', 0, 0, '')
  end
end

if actual == '' then
  local timeout = tonumber(ARGV[9])
  local retry, reason = hold_back()
  if retry == 0 then
    return reply('UNASSIGNED', 0, 0, timeout, '', 0, 0, '')
  end
  if now >= first + timeout then
    return reply('TIMEOUT', 0, 0, timeout, '', 0, retry, reason)
  end
  return reply('RATE', 0, 0, timeout, '', 0, retry, reason)
end

local cfg = redis.call('HMGET', KEYS[6], 'limit', 'timeout', 'uid', 'cleared', 'wait')
if not cfg[1] then
  return {'MOVED', now, ''}
end
local limit = tonumber(cfg[1])
local timeout = tonumber(cfg[2])
local uid = cfg[3]
local cleared = tonumber(cfg[4] or '')
local mode = ARGV[10] ~= '' and ARGV[10] or (cfg[5] or 'countdown')
if mode == 'handoff' and redis.call('HEXISTS', KEYS[4], instance) == 1 then
  -- A paused instance waits by countdown: its next chance is known in time. (A rate-limited
  -- one parks: a hand-off takes its rate token, in FIFO order among the tokens that are due.)
  mode = 'countdown'
end
-- Enough tasks of this rate-limited instance are parked already (they keep the pool's FIFO short
-- to scan, handoff.lua): this one keeps to the FIFO but waits by countdown if it must wait.
local overflow = mode == 'handoff' and redis.call('HEXISTS', KEYS[3], instance) == 1
  and tonumber(redis.call('HGET', KEYS[16], instance) or '0') >= tonumber(ARGV[12])

-- A task that holds a slot (handed or granted to it, or its own from an earlier delivery) is no
-- longer waiting: a clear keeps it, as it keeps every holder unless asked to release them.
if cleared and ARGV[6] == uid and first <= cleared and not redis.call('ZSCORE', KEYS[8], token) then
  redis.call('ZREM', KEYS[10], token)
  redis.call('HDEL', KEYS[11], token)
  return reply('CLEARED', limit, 0, timeout, uid, 0, 0, '')
end

local function observe(field, ms)
  local index = 0
  for bound in string.gmatch(ARGV[8], '[^,]+') do
    if ms <= tonumber(bound) then break end
    index = index + 1
  end
  redis.call('HINCRBY', KEYS[12], field .. ':' .. index, 1)
  redis.call('HINCRBY', KEYS[12], field .. ':sum', ms)
  redis.call('HINCRBY', KEYS[12], field .. ':count', 1)
end
redis.call('HSETNX', KEYS[12], 'started', now)

-- Reclaim lapsed leases (bounded per call; every acquisition continues the sweep).
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[8], '-inf', now, 'LIMIT', 0, 100)
for _, holder in ipairs(lapsed) do
  -- A lapsed hand-off keeps its place in the FIFO: handoff.lua puts it back, not this script.
  if redis.call('HEXISTS', KEYS[15], holder) == 0 then
  local info = redis.call('HGET', KEYS[9], holder)
  redis.call('ZREM', KEYS[8], holder)
  redis.call('HDEL', KEYS[9], holder)
  if redis.call('HGET', KEYS[2], holder) == actual then
    redis.call('HDEL', KEYS[2], holder)
  end
  if info and cjson.decode(info)['direct'] then
    redis.call('HINCRBY', KEYS[12], 'grants_lapsed', 1)  -- granted at publication, never claimed
  else
    reclaimed[#reclaimed + 1] = cjson.encode({token = holder, info = info or ''})
  end
  end
end
if #reclaimed > 0 then
  redis.call('HINCRBY', KEYS[12], 'reclaimed', #reclaimed)
end
-- Forget waiters a minute past their deadline: their task is gone (revoked, purged, lost).
local stale = redis.call('ZRANGEBYSCORE', KEYS[10], '-inf', now - 60000, 'LIMIT', 0, 100)
for _, waiter in ipairs(stale) do
  redis.call('ZREM', KEYS[10], waiter)
  redis.call('HDEL', KEYS[11], waiter)
end

local deadline = first + timeout
local function give_up(reason)
  redis.call('ZREM', KEYS[10], token)
  redis.call('HDEL', KEYS[11], token)
  redis.call('HINCRBY', KEYS[12], 'timeouts', 1)
  if reason ~= 'pool' then
    redis.call('HINCRBY', KEYS[12], 'rate_timeouts', 1)
  end
end
local function wait_here()
  redis.call('ZADD', KEYS[10], deadline, token)
  if redis.call('HEXISTS', KEYS[11], token) == 0 then
    local info = cjson.decode(ARGV[7])
    info['since'] = first
    redis.call('HSET', KEYS[11], token, cjson.encode(info))
  end
end

local in_use = redis.call('ZCARD', KEYS[8])
if redis.call('ZSCORE', KEYS[8], token) then
  local held = cjson.decode(redis.call('HGET', KEYS[9], token) or '{}')
  if held['handoff'] then
    -- A slot granted at publication has one message, which claims it even without the grant's
    -- id (the producer lost Redis's answer and published it as usual); a parked task's copies
    -- other than the one published with its hand-off are stale.
    if held['handoff'] ~= ARGV[11] and not held['direct'] then
      return reply('STALE', limit, in_use, timeout, uid, 0, 0, '')
    end
    -- Paused, or rate-limited, since it was parked or granted (a hand-off that took its rate
    -- token says so): it gives the slot back (the caller hands it to the next parked task) and
    -- waits by countdown until the pause ends or its token is due, then asks again.
    local retry, reason = hold_back(held['rated'])
    if retry > 0 then
      redis.call('ZREM', KEYS[8], token)
      redis.call('HDEL', KEYS[9], token)
      redis.call('HDEL', KEYS[15], token)
      redis.call('HINCRBY', KEYS[12], 'handoffs_returned', 1)
      if redis.call('HGET', KEYS[2], token) == actual then
        redis.call('HDEL', KEYS[2], token)
      end
      if now >= deadline then
        give_up(reason)
        return reply('TIMEOUT', limit, in_use - 1, timeout, uid, 0, retry, reason)
      end
      wait_here()
      if ARGV[11] ~= '' then
        -- Copies under an earlier hand-off id stay stale while it waits (see below).
        local waiting = cjson.decode(redis.call('HGET', KEYS[11], token))
        waiting['returned'] = ARGV[11]
        redis.call('HSET', KEYS[11], token, cjson.encode(waiting))
      end
      return reply('RATE', limit, in_use - 1, timeout, uid, 0, retry, reason)
    end
    -- Claim the slot handed to this task; remember under which hand-off id, so that the same
    -- message delivered again is known from a stale copy.
    local info = cjson.decode(ARGV[7])
    info['since'] = now
    info['claimed'] = ARGV[11]
    redis.call('ZADD', KEYS[8], now + tonumber(ARGV[4]), token)
    redis.call('HSET', KEYS[9], token, cjson.encode(info))
    redis.call('HDEL', KEYS[15], token)
    -- Handed a slot as it was published, nobody waiting before it: it did not wait.
    redis.call('HINCRBY', KEYS[12], held['immediate'] and 'acquired_immediate' or 'acquired_waited', 1)
    redis.call('HINCRBY', KEYS[12], 'acquired:' .. instance, 1)
    observe('wait', now - first)
    return reply('OK', limit, in_use, timeout, uid, 0, 0, held['direct'] and 'granted' or 'handoff')
  end
  -- Claimed already: a copy under an earlier hand-off id is stale; the claimed message itself,
  -- delivered again (a worker died running it, acks_late), takes no second slot, as any
  -- redelivered message.
  if ARGV[11] ~= '' and ARGV[11] ~= held['claimed'] then
    return reply('STALE', limit, in_use, timeout, uid, 0, 0, '')
  end
  redis.call('ZADD', KEYS[8], now + tonumber(ARGV[4]), token)
  return reply('OK', limit, in_use, timeout, uid, 1, 0, '')
end
if redis.call('ZSCORE', KEYS[13], token) then
  return reply('STALE', limit, in_use, timeout, uid, 0, 0, '')
end
if ARGV[11] ~= '' then
  -- It gave back a slot handed to it under hand-off id "returned", or ("*") was sent back from
  -- the FIFO, its instance paused, and now waits by countdown (its own messages carry no id): a
  -- message under another id is a stale copy.
  local waiting = redis.call('HGET', KEYS[11], token)
  local returned = waiting and cjson.decode(waiting)['returned']
  if returned and (returned == '*' or returned ~= ARGV[11]) then
    return reply('STALE', limit, in_use, timeout, uid, 0, 0, '')
  end
end
local queued = mode == 'handoff' and redis.call('ZCARD', KEYS[13]) or 0

if in_use < limit and queued == 0 then
  local retry, reason = hold_back()
  if retry == 0 then
    local info = cjson.decode(ARGV[7])
    info['since'] = now
    redis.call('ZADD', KEYS[8], now + tonumber(ARGV[4]), token)
    redis.call('HSET', KEYS[9], token, cjson.encode(info))
    redis.call('HSET', KEYS[2], token, actual)
    redis.call('ZREM', KEYS[10], token)
    redis.call('HDEL', KEYS[11], token)
    redis.call('HINCRBY', KEYS[12], ARGV[5] == '' and 'acquired_immediate' or 'acquired_waited', 1)
    redis.call('HINCRBY', KEYS[12], 'acquired:' .. instance, 1)
    observe('wait', now - first)
    return reply('OK', limit, in_use + 1, timeout, uid, 0, 0, '')
  end
  if now >= deadline then
    give_up(reason)
    return reply('TIMEOUT', limit, in_use, timeout, uid, 0, retry, reason)
  end
  wait_here()
  return reply('RATE', limit, in_use, timeout, uid, 0, retry, reason)
end

if now >= deadline then
  give_up('pool')
  return reply('TIMEOUT', limit, in_use, timeout, uid, 0, 0, 'pool')
end
if mode == 'handoff' and not overflow then
  return reply('FULL', limit, in_use, timeout, uid, 0, 0, 'handoff')
end
wait_here()
return reply('FULL', limit, in_use, timeout, uid, 0, 0, 'countdown')
