-- pause.lua: pause a connector instance for every worker (an API said "back off"). A pause only
-- ever grows: a shorter one than the pause in force changes nothing.
--
-- Reply: {"OK", now, until}: when (ms, Redis clock) the instance is paused until, 0 when not
-- paused.
--
-- Keys:
--   paused  {p}:paused                  HASH instance -> paused until (ms)
--
-- Arguments:
--   instance  the connector instance
--   pause_ms  how long to pause it (ms); "0" lifts any pause

-- include: lib/clock.lua

local paused = unpack(KEYS)
local instance, pause_ms = unpack(ARGV)

local now = redis_clock()
local ms = tonumber(pause_ms)
if ms <= 0 then
  redis.call('HDEL', paused, instance)
  return {'OK', now, 0}
end
local until_ms = math.max(tonumber(redis.call('HGET', paused, instance) or '0'), now + ms)
redis.call('HSET', paused, instance, until_ms)
return {'OK', now, until_ms}
