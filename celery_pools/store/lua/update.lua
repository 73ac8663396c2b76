-- update.lua: change a pool's limit, timeout and/or waiting mode. The next acquisition everywhere
-- obeys it; running holders are never interrupted (a lower limit only stops new acquisitions).
--
-- Reply: {"UPDATED", now}, or {"NOPOOL", now} when the pool does not exist.
--
-- Keys:
--   config  {p}:pool:<name>             HASH limit, timeout (ms), wait, updated (ms)
--
-- Arguments:
--   limit       the new limit, or "" to keep it
--   timeout_ms  the new timeout (ms), or "" to keep it
--   wait        the new waiting mode ("countdown", "handoff"), or "" to keep it

-- include: lib/clock.lua

local config = unpack(KEYS)
local limit, timeout_ms, wait = unpack(ARGV)

local now = redis_clock()
if redis.call('EXISTS', config) == 0 then
  return {'NOPOOL', now}
end
if limit ~= '' then
  redis.call('HSET', config, 'limit', limit)
end
if timeout_ms ~= '' then
  redis.call('HSET', config, 'timeout', timeout_ms)
end
if wait ~= '' then
  redis.call('HSET', config, 'wait', wait)
end
redis.call('HSET', config, 'updated', now)
return {'UPDATED', now}
