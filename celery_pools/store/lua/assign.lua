-- assign.lua: associate a connector instance with a pool (an instance has at most one pool).
--
-- Reply: {"OK", now}; {"NOPOOL", now} when the new pool does not exist; {"KEPT", now, pool} when
-- only an unassigned instance may be assigned and the instance has a pool; {"MOVED", now, pool}
-- when the caller's belief about the instance's pool was wrong (call again with that pool).
--
-- Keys:
--   instances           {p}:instances               HASH instance -> pool name
--   config              {p}:pool:<name>             HASH the new pool's definition
--   pool_instances      {p}:pool:<name>:instances   SET  the new pool's instances
--   old_pool_instances  {p}:pool:<old>:instances    SET  the old pool's instances
--
-- Arguments:
--   instance       the connector instance
--   pool           the new pool's name
--   believed       the pool the caller believes it has ("" for none): <old>
--   if_unassigned  "1": assign only an instance that has no pool yet

-- include: lib/clock.lua

local instances, config, pool_instances, old_pool_instances = unpack(KEYS)
local instance, pool, believed, if_unassigned = unpack(ARGV)

local now = redis_clock()
local actual = redis.call('HGET', instances, instance) or ''
if actual ~= believed then
  return {'MOVED', now, actual}
end
if redis.call('EXISTS', config) == 0 then
  return {'NOPOOL', now}
end
if if_unassigned == '1' and actual ~= '' then
  return {'KEPT', now, actual}
end
if actual ~= '' then
  redis.call('SREM', old_pool_instances, instance)
end
redis.call('HSET', instances, instance, pool)
redis.call('SADD', pool_instances, instance)
return {'OK', now}
