--[[
pause.lua: pause a connector instance for every worker (an API said "back off"). A pause only
ever grows: a shorter one than the pause in force changes nothing.

KEYS[1]  {p}:paused     HASH instance -> paused until (ms, Redis clock)

ARGV[1]  instance
ARGV[2]  seconds to pause, in ms; "0" lifts any pause

Returns the time (ms, Redis clock) the instance is paused until (0 when not paused).
]]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms = tonumber(ARGV[2])
if ms <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 0
end
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local until_ms = math.max(current, now + ms)
redis.call('HSET', KEYS[1], ARGV[1], until_ms)
return until_ms
