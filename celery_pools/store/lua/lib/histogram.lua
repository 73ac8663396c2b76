-- lib/histogram.lua: a piece, inlined where a script says "-- include: lib/histogram.lua".
--
-- observe(stats, name, ms, bounds): count one duration of `ms` milliseconds in histogram `name` of
-- the stats HASH `stats`: field "<name>:<bucket index>" (index #bounds is +Inf), "<name>:sum" (ms)
-- and "<name>:count". `bounds` are the buckets' upper bounds (ms, ascending, comma-separated).
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
