-- unassign.lua: remove a connector instance's association with its pool.
--
-- Reply: {"OK", now, pool} when removed; {"NONE", now} when the instance had no pool;
-- {"MOVED", now, pool} when the caller's belief about its pool was wrong (call again with that
-- pool).
--
-- Keys:
--   instances           {p}:instances               HASH instance -> pool name
--   old_pool_instances  {p}:pool:<old>:instances    SET  the old pool's instances
--
-- Arguments:
--   instance  the connector instance
--   believed  the pool the caller believes it has ("" for none): <old>

-- include: lib/clock.lua

local instances, old_pool_instances = unpack(KEYS)
local instance, believed = unpack(ARGV)

local now = redis_clock()
local actual = redis.call('HGET', instances, instance) or ''
if actual ~= believed then
  return {'MOVED', now, actual}
end
if actual == '' then
  return {'NONE', now}
end
redis.call('HDEL', instances, instance)
redis.call('SREM', old_pool_instances, instance)
return {'OK', now, actual}
