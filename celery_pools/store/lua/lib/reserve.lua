-- lib/reserve.lua: a piece, inlined where a script says "-- include: lib/reserve.lua".
--
-- Free slots a producer keeps for the calls it published as usual while its pool looked ample,
-- until they reach a worker (celery_pools.producer): neither a grant at publication nor a
-- hand-off gives them out meanwhile. The reservation is the pool's config field "reserve",
-- "<calls>|<arrived>|<until ms>": that many calls were on their way when the pool's count of calls
-- published as usual that reached a worker (stats field as_usual_arrived, acquire.lua) read
-- <arrived>; those counted since have arrived (another producer's arriving meanwhile count too,
-- which only keeps fewer slots). It lapses at <until ms>; a later reservation of any producer
-- replaces it.
--
-- keep(config, stats, on_way, arrived, until_ms): record a producer's reservation: `on_way` calls
--   as it counts them, `arrived` the count when it last read it ("" if never: none are taken off).
--   Returns how many slots it keeps now.
-- kept(config, stats, now): how many slots the pool's reservation keeps now (0 if none or lapsed).
-- arrivals(stats): the pool's count of calls published as usual that reached a worker.
local function arrivals(stats)
  return tonumber(redis.call('HGET', stats, 'as_usual_arrived') or '0')
end

-- `calls` on their way when the count of arrivals read `before` ("" or nil: none taken off), with
-- the count `now_arrived` now.
local function reservation_left(calls, before, now_arrived)
  local count = tonumber(calls) or 0
  before = tonumber(before)
  if count > 0 and before then
    count = count - math.max(0, now_arrived - before)
  end
  return math.max(0, count)
end

local function keep(config, stats, on_way, arrived, until_ms)
  local now_arrived = arrivals(stats)
  local count = reservation_left(on_way, arrived, now_arrived)
  if count > 0 then
    redis.call('HSET', config, 'reserve', count .. '|' .. now_arrived .. '|' .. until_ms)
  else
    redis.call('HDEL', config, 'reserve')
  end
  return count
end

local function kept(config, stats, now)
  local raw = redis.call('HGET', config, 'reserve')
  if not raw then
    return 0
  end
  local calls, before, until_ms = string.match(raw, '^(%d+)|(%d+)|(%d+)$')
  if not until_ms or tonumber(until_ms) <= now then
    redis.call('HDEL', config, 'reserve')
    return 0
  end
  return reservation_left(calls, before, arrivals(stats))
end
