-- clear.lua: drop every pending request of a pool. Tasks waiting in it end with PoolClearedError at
-- their next attempt (they began to wait before the recorded clear time). Holders keep their slots
-- unless release_held is "1", which frees abandoned slots too (abandon.lua).
--
-- Parked tasks (hand-off mode) move to expired with reason "cleared": a worker's reaper publishes
-- them and they fail with PoolClearedError. A task handed a slot, whose message may be on its way,
-- holds that slot and keeps it unless held slots are released too: then it goes the same way as a
-- parked task, and its hand-off id joins stale, so that the message, if it was published, never
-- runs (the task fails once, whichever way it went). Standbys end that way in any case (they hold
-- no slot; lib/standby.lua), and a blocked one is woken to find its message stale.
--
-- Stats fields touched: clears, cleared_waiters, cleared_holders.
--
-- Reply: {"CLEARED", now, waiters dropped, holders released}, or {"NOPOOL", now}.
--
-- Keys:
--   held         {p}:held                    HASH task id -> pool name
--   config       {p}:pool:<name>             HASH ... cleared (ms)
--   holders      {p}:pool:<name>:holders     ZSET task id -> lease expiry (ms)
--   holder       {p}:pool:<name>:holder      HASH task id -> holder JSON
--   waiters      {p}:pool:<name>:waiters     ZSET task id -> deadline (ms)
--   waiter       {p}:pool:<name>:waiter      HASH task id -> waiter JSON
--   stats        {p}:pool:<name>:stats       HASH counters
--   queue        {p}:pool:<name>:queue       ZSET the hand-off FIFO
--   parked       {p}:pool:<name>:parked      HASH parked task id -> entry JSON
--   handoffs     {p}:pool:<name>:handoffs    HASH task id handed a slot -> entry
--   rate_parked  {p}:pool:<name>:rate_parked HASH instance -> its tasks parked
--   expired      {p}:expired                 LIST entries to publish to fail
--   stale        {p}:stale                   ZSET hand-off ids that never run
--   abandoned    {p}:pool:<name>:abandoned   ZSET task id -> end of its grace (ms)
--   abandoned_holder  {p}:pool:<name>:abandoned_holder HASH task id -> holder JSON
--   standby      {p}:pool:<name>:standby     ZSET standby task id -> place (us)
--   standby_entry  {p}:pool:<name>:standby_entry  HASH standby task id -> standby JSON
--   wake         {p}:pool:<name>:wake:       prefix of each standby's wake LIST
--
-- Arguments:
--   pool          the pool's name
--   release_held  "1" to release held slots too
--   stale_ms      how long an ended hand-off id stays in stale (ms)

-- include: lib/clock.lua
-- include: lib/ending.lua
-- include: lib/standby.lua

local held, config, holders, holder, waiters, waiter, stats, queue, parked, handoffs, rate_parked,
  expired, stale, abandoned, abandoned_holder, standby, standby_entry, wake =
  unpack(KEYS)
local pool, release_held, stale_ms = unpack(ARGV)

local now = redis_clock()
if redis.call('EXISTS', config) == 0 then
  return {'NOPOOL', now}
end
redis.call('HSET', config, 'cleared', now)
local dropped = redis.call('ZCARD', waiters)
redis.call('DEL', waiters, waiter)
end_parked(queue, parked, expired, 'cleared', pool)
end_standbys({standby = standby, standby_entry = standby_entry, stale = stale, wake = wake, held = held},
  expired, 'cleared', pool, now, tonumber(stale_ms))
redis.call('DEL', queue, parked, rate_parked)
local released = 0
if release_held == '1' then
  end_handoffs(handoffs, holder, stale, expired, 'cleared', pool, now, tonumber(stale_ms))
  redis.call('DEL', handoffs)
  for _, token in ipairs(redis.call('ZRANGE', holders, 0, -1)) do
    if redis.call('HGET', held, token) == pool then
      redis.call('HDEL', held, token)
    end
    released = released + 1
  end
  redis.call('DEL', holders, holder)
  released = released + redis.call('ZCARD', abandoned)
  redis.call('DEL', abandoned, abandoned_holder)
end
redis.call('HINCRBY', stats, 'clears', 1)
redis.call('HINCRBY', stats, 'cleared_waiters', dropped)
redis.call('HINCRBY', stats, 'cleared_holders', released)
return {'CLEARED', now, dropped, released}
