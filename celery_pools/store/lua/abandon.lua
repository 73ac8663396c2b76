-- abandon.lua: a task's execution ended without its own code releasing its slot (its process was
-- killed, a hard time limit, revoke(terminate=True)): its call to the external system may still be
-- in flight, so its slot stays taken for a grace. The slot moves from the holders to the abandoned
-- slots until now + grace, when the next acquire or hand-off frees it (lib/lapsed.lua); until then
-- it counts as in use. A copy of the task (a redelivered message) is a new request: it waits for,
-- or takes, another slot. A task handed a slot that it never claimed made no call: its slot is
-- given back at once, as release.lua does, and so is every slot when grace_ms is 0. Given a pid,
-- it only acts on a slot held by that process (the caller saw that process's execution end; the
-- same task id may hold a slot elsewhere now, as a copy).
--
-- Stats fields touched: abandoned, released and the hold-time histogram "hold:*".
--
-- Reply: {status, now, holder JSON or "", parked, until}: status "ABANDONED" when the slot is kept
-- until `until` (ms), "RELEASED" when it was given back, "NOT_HELD" when the token held none;
-- parked is how many tasks wait in the hand-off FIFO (the caller then runs handoff.lua).
--
-- Keys:
--   held              {p}:held                           HASH task id -> pool name
--   holders           {p}:pool:<name>:holders            ZSET task id -> lease expiry (ms)
--   holder            {p}:pool:<name>:holder             HASH task id -> holder JSON
--   waiters           {p}:pool:<name>:waiters            ZSET task id -> deadline (ms)
--   waiter            {p}:pool:<name>:waiter             HASH task id -> waiter JSON
--   stats             {p}:pool:<name>:stats              HASH counters and histograms
--   queue             {p}:pool:<name>:queue              ZSET the hand-off FIFO
--   handoffs          {p}:pool:<name>:handoffs           HASH task id handed a slot -> entry
--   abandoned         {p}:pool:<name>:abandoned          ZSET task id -> end of its grace (ms)
--   abandoned_holder  {p}:pool:<name>:abandoned_holder   HASH task id -> holder JSON
--
-- Arguments:
--   token     the task id
--   pool      the pool's name
--   grace_ms  how long the slot stays taken (ms); 0 gives it back at once
--   why       how the execution ended ("WorkerLostError", "TimeLimitExceeded", ...)
--   pid       the process whose execution ended ("" for whichever holds the slot)
--   bounds    histogram bucket upper bounds (ms, ascending, comma-separated)

-- include: lib/clock.lua
-- include: lib/histogram.lua
-- include: lib/giving.lua

local held, holders, holder, waiters, waiter, stats, queue, handoffs, abandoned,
  abandoned_holder = unpack(KEYS)
local token, pool, grace_ms, why, pid, bounds = unpack(ARGV)

local now = redis_clock()
local info = redis.call('HGET', holder, token) or ''
if pid ~= '' and (info == '' or tostring(cjson.decode(info)['pid']) ~= pid) then
  return {'NOT_HELD', now, '', redis.call('ZCARD', queue), 0}
end
local claimed = redis.call('HEXISTS', handoffs, token) == 0
local grace = tonumber(grace_ms)
local released
info, released = give_back({
  held = held, holders = holders, holder = holder, waiters = waiters, waiter = waiter,
  handoffs = handoffs,
}, token, pool)
local parked = redis.call('ZCARD', queue)
if released == 0 then
  return {'NOT_HELD', now, '', parked, 0}
end
local since = info ~= '' and tonumber(cjson.decode(info)['since']) or now
observe(stats, 'hold', now - since, bounds)
if not claimed or grace <= 0 then
  redis.call('HINCRBY', stats, 'released', 1)
  return {'RELEASED', now, info, parked, 0}
end
local kept = info ~= '' and cjson.decode(info) or {}
kept['abandoned'], kept['until'], kept['why'] = now, now + grace, why
info = cjson.encode(kept)
redis.call('ZADD', abandoned, now + grace, token)
redis.call('HSET', abandoned_holder, token, info)
redis.call('HINCRBY', stats, 'abandoned', 1)
return {'ABANDONED', now, info, parked, now + grace}
