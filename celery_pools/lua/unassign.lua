--[[
unassign.lua: remove a connector instance's association with its pool.

KEYS[1]  {p}:instances                  HASH instance -> pool name
KEYS[2]  {p}:pool:<old>:instances       SET  the old pool's instances

ARGV[1]  instance
ARGV[2]  pool the caller believes the instance has ("" for none); KEYS[2] belongs to it

Returns {"OK", pool} when removed | {"NONE"} when the instance had no pool |
{"MOVED", pool} when the caller's belief was wrong.
]]

local actual = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if actual ~= ARGV[2] then
  return {'MOVED', actual}
end
if actual == '' then
  return {'NONE'}
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[1])
return {'OK', actual}
