--[[
assign.lua: associate a connector instance with a pool (an instance has at most one pool).

KEYS[1]  {p}:instances                  HASH instance -> pool name
KEYS[2]  {p}:pool:<new>                 HASH the new pool's definition
KEYS[3]  {p}:pool:<new>:instances       SET  the new pool's instances
KEYS[4]  {p}:pool:<old>:instances       SET  the old pool's instances (any key when ARGV[3] is "")

ARGV[1]  instance
ARGV[2]  new pool name
ARGV[3]  pool the caller believes the instance has now ("" for none); KEYS[4] belongs to it
ARGV[4]  "1": only assign when the instance has no pool yet

Returns {"OK"} | {"NOPOOL"} when the new pool does not exist | {"KEPT", pool} when ARGV[4] is
"1" and the instance already has a pool | {"MOVED", pool} when the caller's belief was wrong.
]]

local actual = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if actual ~= ARGV[3] then
  return {'MOVED', actual}
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  return {'NOPOOL'}
end
if ARGV[4] == '1' and actual ~= '' then
  return {'KEPT', actual}
end
if actual ~= '' then
  redis.call('SREM', KEYS[4], ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[1])
return {'OK'}
