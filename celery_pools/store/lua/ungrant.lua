-- ungrant.lua: take back a slot granted at publication (park.lua, "GRANTED") whose message could
-- not be published (the broker refused it, the call could not be serialized): the slot is free
-- again at once rather than when the grant's lease lapses. Only the grant itself is touched:
-- nothing happens once the task has claimed the slot, or when the id holds it otherwise. The caller
-- runs handoff.lua right after (pipelined), so the slot goes to the oldest parked task, if any.
--
-- Stats fields touched: grants_withdrawn.
--
-- Reply: {"WITHDRAWN", now} when the grant was taken back, else {"KEPT", now}.
--
-- Keys:
--   held     {p}:held                    HASH task id -> pool name
--   holders  {p}:pool:<name>:holders     ZSET task id -> lease expiry (ms)
--   holder   {p}:pool:<name>:holder      HASH task id -> holder JSON
--   stats    {p}:pool:<name>:stats       HASH counters
--
-- Arguments:
--   token       the task id
--   handoff_id  the grant's hand-off id
--   pool        the pool's name

-- include: lib/clock.lua

local held, holders, holder, stats = unpack(KEYS)
local token, handoff_id, pool = unpack(ARGV)

local now = redis_clock()
local info = redis.call('HGET', holder, token)
local holding = info and cjson.decode(info)
if not holding or not holding['direct'] or holding['handoff'] ~= handoff_id then
  return {'KEPT', now}
end
redis.call('ZREM', holders, token)
redis.call('HDEL', holder, token)
if redis.call('HGET', held, token) == pool then
  redis.call('HDEL', held, token)
end
redis.call('HINCRBY', stats, 'grants_withdrawn', 1)
return {'WITHDRAWN', now}
