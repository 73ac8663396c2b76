-- lib/gcra.lua: a piece, inlined where a script says "-- include: lib/gcra.lua".
--
-- take_rate_token(state, instance, spec, now): GCRA, the generic cell rate algorithm, on one
-- connector instance's rate limit. `state` is the {p}:rate_state HASH (instance -> theoretical
-- arrival time, ms); `spec` the instance's encoded limit "<interval ms>/<tolerance ms>/<count>/
-- <period ms>"; `now` the Redis clock (ms). A call may start when the theoretical arrival time is
-- at most <tolerance> ahead of now: it then takes the token (the time moves <interval> on) and 0 is
-- returned. Otherwise nothing changes and the answer is how many ms until the call may start.
-- A time left behind by now counts as now, so an idle instance's entry needs no expiry.
local function take_rate_token(state, instance, spec, now)
  local interval, tolerance = string.match(spec, '^([^/]+)/([^/]+)/')
  interval, tolerance = tonumber(interval), tonumber(tolerance)
  local tat = tonumber(redis.call('HGET', state, instance) or '0')
  if tat < now then tat = now end
  if tat - now > tolerance then
    return math.ceil(tat - now - tolerance)
  end
  redis.call('HSET', state, instance, string.format('%.3f', tat + interval))
  return 0
end
