--[[
create.lua: create a pool unless one of that name exists.

KEYS[1]  {p}:pools          SET  pool names
KEYS[2]  {p}:pool:<name>    HASH limit, timeout (ms), uid, wait, created, updated (ms)

ARGV[1]  pool name
ARGV[2]  limit
ARGV[3]  timeout (ms)
ARGV[4]  uid: a fresh random id telling this pool apart from an earlier one of the same name
ARGV[5]  how its tasks wait for a slot: "countdown" or "handoff"

Returns 1 when created, 0 when a pool of that name already exists (nothing is changed).
]]

if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], 'limit', ARGV[2], 'timeout', ARGV[3], 'uid', ARGV[4],
  'wait', ARGV[5], 'created', now, 'updated', now)
redis.call('SADD', KEYS[1], ARGV[1])
return 1
