-- lib/standby.lua: a piece, inlined where a script says "-- include: lib/standby.lua": standby
-- waiters. A standby is one of the oldest parked tasks of a hand-off pool whose message was
-- published ahead of need (handoff.lua promotes it), so that its broker trip overlaps running work:
-- its task starts in a worker, finds no free slot and blocks on its own wake LIST (BLPOP) until a
-- freed slot is handed to it, which wakes it in the same Redis event-loop pass.
--
-- `k` holds the pool's keys: held, holders, holder, waiters, waiter, stats, queue, parked,
-- handoffs, stale, standby, standby_entry, wake (the wake LISTs' prefix: wake .. task id).
-- A standby stays a waiter (waiters, waiter), and `held` names its pool (so that the worker that
-- sees its task end finds it, abandon.lua); its record in standby_entry is JSON:
--   {id, entry (its parked entry JSON), promoted (ms), ready (ms, when its task blocked),
--    until (ms, when its block ends), hostname, pid, started, thread (the execution that blocks)}
--
-- wake_standby(k, token, what): push "go" (a slot was handed to it) or "end" (its pool was cleared
--   or deleted) to the standby's wake LIST, which expires if nobody takes it.
-- to_handoff(k, token, pool, now, lease_ms): hand the standby a freed slot: it holds it as a task
--   handed a slot holds one (holder JSON with its standby id as hand-off id, its entry in
--   handoffs), claimed when its task asks again, requeued if it does not in time; a blocked one
--   is woken. Counts handoffs and standbys_woken.
-- to_fifo(k, token, now, stale_ms): send the standby back to its place in the FIFO (its block
--   ended, its process died, its message was lost); its id joins stale, so that its message, if
--   it still runs, never does. Counts standbys_returned.
-- drop_standby(k, token, now, stale_ms): the standby's task was revoked: it never runs (its id
--   joins stale, it is no longer a waiter).
-- end_standbys(k, expired, reason, pool, now, stale_ms): a clear or a delete ends every standby
--   the way it ends a hand-off (lib/ending.lua): its entry goes to expired, its id to stale, and a
--   blocked one is woken to find its message stale.
local function wake_standby(k, token, what)
  local list = k.wake .. token
  redis.call('LPUSH', list, what)
  redis.call('PEXPIRE', list, 60000)
end

local function forget_standby(k, token)
  redis.call('ZREM', k.standby, token)
  redis.call('HDEL', k.standby_entry, token)
  redis.call('HDEL', k.held, token)
end

local function to_handoff(k, token, pool, now, lease_ms)
  local record = cjson.decode(redis.call('HGET', k.standby_entry, token))
  forget_standby(k, token)
  local entry = cjson.decode(record['entry'])
  local info = entry['info'] or {}
  info['since'] = now
  info['handoff'] = record['id']
  redis.call('ZADD', k.holders, now + lease_ms, token)
  redis.call('HSET', k.holder, token, cjson.encode(info))
  redis.call('HSET', k.held, token, pool)
  redis.call('HSET', k.handoffs, token, record['entry'])
  redis.call('ZREM', k.waiters, token)
  redis.call('HDEL', k.waiter, token)
  redis.call('HINCRBY', k.stats, 'handoffs', 1)
  if record['ready'] then
    wake_standby(k, token, 'go')
    redis.call('HINCRBY', k.stats, 'standbys_woken', 1)
  end
end

local function to_fifo(k, token, now, stale_ms)
  local record = cjson.decode(redis.call('HGET', k.standby_entry, token))
  forget_standby(k, token)
  redis.call('DEL', k.wake .. token)
  redis.call('ZADD', k.stale, now + stale_ms, record['id'])
  local entry = cjson.decode(record['entry'])
  redis.call('ZADD', k.queue, tonumber(entry['place'] or '') or entry['first'] * 1000, token)
  redis.call('HSET', k.parked, token, record['entry'])
  redis.call('HINCRBY', k.stats, 'standbys_returned', 1)
end

local function drop_standby(k, token, now, stale_ms)
  local record = cjson.decode(redis.call('HGET', k.standby_entry, token))
  forget_standby(k, token)
  redis.call('DEL', k.wake .. token)
  redis.call('ZADD', k.stale, now + stale_ms, record['id'])
  redis.call('ZREM', k.waiters, token)
  redis.call('HDEL', k.waiter, token)
end

local function end_standbys(k, expired, reason, pool, now, stale_ms)
  for _, token in ipairs(redis.call('ZRANGE', k.standby, 0, -1)) do
    local record = cjson.decode(redis.call('HGET', k.standby_entry, token))
    redis.call('ZADD', k.stale, now + stale_ms, record['id'])
    redis.call('RPUSH', expired, cjson.encode({reason = reason, pool = pool, entry = record['entry']}))
    if record['ready'] then
      wake_standby(k, token, 'end')
    end
    redis.call('HDEL', k.held, token)
  end
  redis.call('DEL', k.standby, k.standby_entry)
end
