-- lib/clock.lua: a piece, inlined where a script says "-- include: lib/clock.lua".
--
-- redis_clock(): the Redis server's clock, the one clock every lease, deadline and rate decision is
-- taken on. Returns milliseconds and microseconds since the Unix epoch.
local function redis_clock()
  local t = redis.call('TIME')
  local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  return math.floor(us / 1000), us
end
