-- delete.lua: delete a pool and every association to it. Running holders keep running (their
-- release becomes a no-op); waiters end with PoolDeletedError at their next attempt.
--
-- Parked tasks (hand-off mode) move to expired with reason "deleted": a worker's reaper publishes
-- them and they fail with PoolDeletedError. So do tasks handed a slot whose message may or may not
-- be on its way (the releasing worker may have died before publishing it): their hand-off id joins
-- stale, so that the message, if it was published, never runs, and the task fails once, whichever
-- way it went. A slot granted at publication has one message, published by the producer: its task
-- fails with PoolDeletedError when it starts (its pool is gone). Standbys end the same way as a
-- hand-off (lib/standby.lua), and a blocked one is woken to find its message stale.
--
-- Reply: {"DELETED", now, instances unassigned, holders, waiters}, or {"NOPOOL", now}.
--
-- Keys:
--   pools           {p}:pools                   SET  pool names
--   instances       {p}:instances               HASH instance -> pool name
--   held            {p}:held                    HASH task id -> pool name
--   config          {p}:pool:<name>             HASH definition
--   pool_instances  {p}:pool:<name>:instances   SET  instances
--   holders         {p}:pool:<name>:holders     ZSET holders
--   holder          {p}:pool:<name>:holder      HASH holder JSON
--   waiters         {p}:pool:<name>:waiters     ZSET waiters
--   waiter          {p}:pool:<name>:waiter      HASH waiter JSON
--   stats           {p}:pool:<name>:stats       HASH counters and histograms
--   queue           {p}:pool:<name>:queue       ZSET the hand-off FIFO
--   parked          {p}:pool:<name>:parked      HASH parked task id -> entry JSON
--   handoffs        {p}:pool:<name>:handoffs    HASH task id handed a slot -> entry
--   rate_parked     {p}:pool:<name>:rate_parked HASH instance -> its tasks parked
--   expired         {p}:expired                 LIST entries to publish to fail
--   stale           {p}:stale                   ZSET hand-off ids that never run
--   abandoned       {p}:pool:<name>:abandoned   ZSET abandoned slots
--   abandoned_holder  {p}:pool:<name>:abandoned_holder HASH their holder JSON
--   standby      {p}:pool:<name>:standby     ZSET standby task id -> place (us)
--   standby_entry  {p}:pool:<name>:standby_entry  HASH standby task id -> standby JSON
--   wake         {p}:pool:<name>:wake:       prefix of each standby's wake LIST
--
-- Arguments:
--   pool      the pool's name
--   stale_ms  how long an ended hand-off id stays in stale (ms)

-- include: lib/clock.lua
-- include: lib/ending.lua
-- include: lib/standby.lua

local pools, instances, held, config, pool_instances, holders, holder, waiters, waiter, stats,
  queue, parked, handoffs, rate_parked, expired, stale, abandoned, abandoned_holder, standby,
  standby_entry, wake = unpack(KEYS)
local pool, stale_ms = unpack(ARGV)

local now = redis_clock()
if redis.call('EXISTS', config) == 0 then
  return {'NOPOOL', now}
end
local members = redis.call('SMEMBERS', pool_instances)
for _, instance in ipairs(members) do
  if redis.call('HGET', instances, instance) == pool then
    redis.call('HDEL', instances, instance)
  end
end
local holding = redis.call('ZRANGE', holders, 0, -1)
for _, token in ipairs(holding) do
  if redis.call('HGET', held, token) == pool then
    redis.call('HDEL', held, token)
  end
end
local waiting = redis.call('ZCARD', waiters)
end_handoffs(handoffs, holder, stale, expired, 'deleted', pool, now, tonumber(stale_ms))
end_parked(queue, parked, expired, 'deleted', pool)
end_standbys({standby = standby, standby_entry = standby_entry, stale = stale, wake = wake, held = held},
  expired, 'deleted', pool, now, tonumber(stale_ms))
redis.call('DEL', config, pool_instances, holders, holder, waiters, waiter, stats, queue, parked,
  handoffs, rate_parked, abandoned, abandoned_holder)
redis.call('SREM', pools, pool)
return {'DELETED', now, #members, #holding, waiting}
