-- create.lua: create a pool unless one of that name exists.
--
-- Reply: {"CREATED", now}, or {"EXISTS", now} when a pool of that name exists (nothing changes).
--
-- Keys:
--   pools   {p}:pools                   SET  pool names
--   config  {p}:pool:<name>             HASH limit, timeout (ms), uid, wait, created, updated
--
-- Arguments:
--   pool        the pool's name
--   limit       its limit (slots)
--   timeout_ms  its timeout (ms)
--   uid         a fresh random id telling this pool from an earlier one of its name
--   wait        how its tasks wait for a slot: "countdown" or "handoff"

-- include: lib/clock.lua

local pools, config = unpack(KEYS)
local pool, limit, timeout_ms, uid, wait = unpack(ARGV)

local now = redis_clock()
if redis.call('EXISTS', config) == 1 then
  return {'EXISTS', now}
end
redis.call('HSET', config, 'limit', limit, 'timeout', timeout_ms, 'uid', uid, 'wait', wait,
  'created', now, 'updated', now)
redis.call('SADD', pools, pool)
return {'CREATED', now}
