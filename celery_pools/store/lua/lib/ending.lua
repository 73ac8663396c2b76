-- lib/ending.lua: a piece, inlined where a script says "-- include: lib/ending.lua": ending the
-- tasks that wait in a pool that is cleared or deleted. Each ended task's entry goes to the
-- `expired` LIST with `reason` ("cleared", "deleted"), for a reaper to publish it so that it fails
-- through Celery's failure path.
--
-- end_parked(queue, parked, expired, reason, pool): every task parked in the FIFO (`queue`, with
-- its entries in `parked`). The FIFO is left for the caller to delete.
--
-- end_handoffs(handoffs, holder, stale, expired, reason, pool, now, memory): every task that was
-- handed a slot and has not started (`handoffs`, with its holder JSON in `holder`). Its message may be on its way, or may never be (the releasing worker may have died
-- before publishing it), so its entry is published to fail too, and its hand-off id (from its
-- holder JSON) joins the stale ZSET until now + memory (ms), so that the message, if it was
-- published, never runs: the task fails once, whichever way it went. The handoffs HASH is left for
-- the caller to delete.
local function end_parked(queue, parked, expired, reason, pool)
  for _, token in ipairs(redis.call('ZRANGE', queue, 0, -1)) do
    local entry = redis.call('HGET', parked, token)
    if entry then
      redis.call('RPUSH', expired, cjson.encode({reason = reason, pool = pool, entry = entry}))
    end
  end
end

local function end_handoffs(handoffs, holder, stale, expired, reason, pool, now, memory)
  local entries = redis.call('HGETALL', handoffs)
  for i = 1, #entries, 2 do
    local info = redis.call('HGET', holder, entries[i])
    local id = info and cjson.decode(info)['handoff']
    if id then
      redis.call('ZADD', stale, now + memory, id)
    end
    local ended = {reason = reason, pool = pool, entry = entries[i + 1]}
    redis.call('RPUSH', expired, cjson.encode(ended))
  end
end
