--[[
update.lua: change a pool's limit and/or timeout. The next acquisition everywhere obeys it; running
holders are never interrupted (a lower limit only stops new acquisitions).

KEYS[1]  {p}:pool:<name>    HASH limit, timeout (ms), wait, updated (ms)

ARGV[1]  new limit, or "" to keep it
ARGV[2]  new timeout (ms), or "" to keep it
ARGV[3]  new waiting mode ("countdown" or "handoff"), or "" to keep it

Returns 1 when updated, 0 when the pool does not exist.
]]

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] ~= '' then
  redis.call('HSET', KEYS[1], 'limit', ARGV[1])
end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'timeout', ARGV[2])
end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'wait', ARGV[3])
end
redis.call('HSET', KEYS[1], 'updated', now)
return 1
