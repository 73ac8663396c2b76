-- lib/histogram.lua: a piece, inlined where a script says "-- include: lib/histogram.lua".
--
-- observe(stats, name, ms, bounds): count one duration of `ms` milliseconds in histogram `name` of
-- the stats HASH `stats`: field "<name>:<bucket index>" (index #bounds is +Inf), "<name>:sum" (ms)
-- and "<name>:count". `bounds` are the buckets' upper bounds (ms, ascending, comma-separated).
--
-- average(stats, field, ms): fold one duration into the moving average in field `field` (ms; each
-- new duration weighs 1/5), which follows what a pool does now rather than since it was created.
local function observe(stats, name, ms, bounds)
  local index = 0
  for bound in string.gmatch(bounds, '[^,]+') do
    if ms <= tonumber(bound) then break end
    index = index + 1
  end
  redis.call('HINCRBY', stats, name .. ':' .. index, 1)
  redis.call('HINCRBY', stats, name .. ':sum', ms)
  redis.call('HINCRBY', stats, name .. ':count', 1)
end

local function average(stats, field, ms)
  local old = tonumber(redis.call('HGET', stats, field) or '')
  redis.call('HSET', stats, field, string.format('%.3f', old and old * 0.8 + ms * 0.2 or ms))
end
