-- lib/lapsed.lua: a piece, inlined where a script says "-- include: lib/lapsed.lua".
--
-- sweep_lapsed(k, pool, now, requeue): take back the slots of `pool` whose lease lapsed by `now`
-- (ms), at most 100 a call (every call continues the sweep). `k` holds the pool's keys: held,
-- holders, holder, handoffs, stats.
-- - A slot granted at publication that its task never claimed just comes back (grants_lapsed).
-- - A hand-off not taken up in time (its task id is in `handoffs`) goes to
--   `requeue(token, holder JSON, entry JSON)`, which puts it back in line; without `requeue` it is
--   left where it is, for handoff.lua.
-- - Any other holder's process died or stopped renewing: its slot is reclaimed (reclaimed).
-- Returns the reclaimed holders as a flat list {task id, holder JSON, ...}.
--
-- sweep_abandoned(k, now), below: the abandoned slots whose grace ended.
local function sweep_lapsed(k, pool, now, requeue)
  local reclaimed, count = {}, 0
  for _, token in ipairs(redis.call('ZRANGEBYSCORE', k.holders, '-inf', now, 'LIMIT', 0, 100)) do
    local entry = redis.call('HGET', k.handoffs, token)
    if requeue or not entry then
      local info = redis.call('HGET', k.holder, token) or ''
      redis.call('ZREM', k.holders, token)
      redis.call('HDEL', k.holder, token)
      if redis.call('HGET', k.held, token) == pool then
        redis.call('HDEL', k.held, token)
      end
      if entry then
        redis.call('HDEL', k.handoffs, token)
        requeue(token, info, entry)
      elseif info ~= '' and cjson.decode(info)['direct'] then
        redis.call('HINCRBY', k.stats, 'grants_lapsed', 1)
      else
        reclaimed[#reclaimed + 1] = token
        reclaimed[#reclaimed + 1] = info
        count = count + 1
      end
    end
  end
  if count > 0 then
    redis.call('HINCRBY', k.stats, 'reclaimed', count)
  end
  return reclaimed
end

-- sweep_abandoned(k, now): free the abandoned slots whose grace ended by `now` (ms), at most 100 a
-- call (abandon.lua keeps them; `k` holds abandoned, abandoned_holder and stats). Counts
-- abandoned_expired; returns how many it freed.
local function sweep_abandoned(k, now)
  local ended = redis.call('ZRANGEBYSCORE', k.abandoned, '-inf', now, 'LIMIT', 0, 100)
  for _, token in ipairs(ended) do
    redis.call('ZREM', k.abandoned, token)
    redis.call('HDEL', k.abandoned_holder, token)
  end
  if #ended > 0 then
    redis.call('HINCRBY', k.stats, 'abandoned_expired', #ended)
  end
  return #ended
end
