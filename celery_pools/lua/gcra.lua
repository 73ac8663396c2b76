--[[
gcra.lua: a piece included by acquire.lua and handoff.lua (scripts.py inlines it where a script
says "-- include: gcra.lua"), not a script of its own.

take_rate_token(key, spec, now): GCRA, the generic cell rate algorithm, on one connector
instance's rate limit. key is the instance's {p}:rate:<instance> STRING (theoretical arrival
time, ms); spec its encoded limit "<interval ms>/<tolerance ms>/<count>/<period ms>"; now the
Redis clock (ms). A call may start when the theoretical arrival time is at most <tolerance> ahead
of now; it then takes the token (the time moves <interval> on) and 0 is returned. Otherwise
nothing changes and the answer is how many ms until the call may start.
]]
local function take_rate_token(key, spec, now)
  local interval, tolerance = string.match(spec, '^([^/]+)/([^/]+)/')
  interval, tolerance = tonumber(interval), tonumber(tolerance)
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  if tat - now > tolerance then
    return math.ceil(tat - now - tolerance)
  end
  tat = tat + interval
  redis.call('SET', key, string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
  return 0
end
