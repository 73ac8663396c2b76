-- park.lua: park a task in its pool's hand-off FIFO. Its message waits here, not in the broker:
-- handoff.lua later gives the oldest parked task a slot and returns its message to be published.
--
-- Two callers park:
-- - a producer, at publication (PooledTask.apply_async), before the message ever reaches the
--   broker; `instance` names the connector instance. The task parks only when this pool serves the
--   instance, waits by hand-off and the instance is not paused. Otherwise the caller publishes as
--   usual and the task waits (if it must) when a worker runs it. A task of a rate-limited instance
--   parks only when the pool is full or tasks wait (handoff.lua then takes its rate token when it
--   hands it a slot), and while fewer than rate_parked_max of its instance's tasks are parked;
--   otherwise it is published as usual and takes the slot and the token, or waits by countdown,
--   when a worker runs it (acquire.lua applies the same bound).
-- - a worker, whose task found the pool full (acquire.lua answered FULL with reason "handoff").
-- Callers run handoff.lua right after (pipelined), so a free slot goes straight to the oldest task.
--
-- Stats fields touched: handoffs (a slot granted at publication). Read: as_usual_arrived.
--
-- Reply: {status, now, ...}, status one of
--   "PARKED"     {position, deadline (ms)}: parked at its place in the FIFO (1 = next) until then
--   "ALREADY"    parked, standing by, holding or handed a slot already (a redelivered or repeated
--                message)
--   "NOPOOL"     the pool no longer exists (a worker starts again from acquire.lua)
--   "MOVED"      {pool}: at publication, another pool serves the instance ("" for none)
--   "AS_USUAL"   {reason}: at publication, publish as usual: "countdown", "limited" (paused),
--                "rate" (rate-limited with a slot free and nobody waiting, or with enough of its
--                instance's tasks parked), "held"
--   "GRANTED"    {hand-off id, uid, timeout (ms), free, arrived}: at publication, no entry: a
--                slot is granted (a hand-off taken up by the task's claim, which lapses like any
--                other if the task does not start in time); free is how many slots are still
--                free, arrived the pool's count of calls published as usual that reached a worker
--                (as_usual_arrived, acquire.lua), by which a producer knows how many of the calls
--                it published as usual have arrived
--   "CONTENDED"  at publication, no entry: the pool is full (its free slots are all reserved for
--                calls on their way) or tasks wait; call again with the entry
--
-- Keys:
--   instances    {p}:instances               HASH instance -> pool name
--   held         {p}:held                    HASH task id -> pool name
--   rates        {p}:rates                   HASH instance -> encoded rate limit
--   paused       {p}:paused                  HASH instance -> paused until (ms)
--   config       {p}:pool:<name>             HASH limit, timeout (ms), uid, wait, handoff_seq, reserve
--   holders      {p}:pool:<name>:holders     ZSET task id -> lease expiry (ms)
--   holder       {p}:pool:<name>:holder      HASH task id -> holder JSON
--   waiters      {p}:pool:<name>:waiters     ZSET task id -> deadline (ms)
--   waiter       {p}:pool:<name>:waiter      HASH task id -> waiter JSON
--   stats        {p}:pool:<name>:stats       HASH counters
--   queue        {p}:pool:<name>:queue       ZSET parked task id -> place (us)
--   parked       {p}:pool:<name>:parked      HASH parked task id -> entry JSON
--   handoffs     {p}:pool:<name>:handoffs    HASH task id handed a slot -> entry
--   rate_parked  {p}:pool:<name>:rate_parked HASH instance -> its tasks parked
--   abandoned    {p}:pool:<name>:abandoned   ZSET task id -> end of its grace (ms)
--   standby      {p}:pool:<name>:standby     ZSET standby task id -> place (us)
--
-- Arguments:
--   token            the task id
--   first_ms         when the task first asked (ms, Redis clock); "" for now
--   entry_json       {"info": {task_name, instance, ...}, "msg": <the message>}; "first", "place"
--                    and "state" ({pool, uid, timeout}) are added, and "immediate" when it parks
--                    with a slot free and nobody waiting. At publication it may be "": grant a free
--                    slot if nobody waits
--   instance         at publication: the connector instance; "" when a worker parks
--   pool             the pool's name (at publication: the one believed to serve it)
--   wait             at publication: "countdown", "handoff", "" for the pool's mode
--   grant_lease_ms   at publication: the hand-off lease (ms) of a slot granted
--   grant_info       at publication: the holder JSON of a slot granted
--   rate_parked_max  at publication: tasks of one rate-limited instance parked at most
--   reserve          at publication: the calls this producer published as usual that may be on
--                    their way to a worker, for which free slots are kept (lib/reserve.lua: no
--                    grant or hand-off gives them out); 0 when none
--   reserve_arrived  the pool's count of calls published as usual that arrived, when the producer
--                    last read it ("" if never): those counted since have arrived
--   reserve_ms       how long at most the reservation holds (ms)
--   place_ms         when a worker parks: when its place in line is, if earlier than first_ms
--                    (ms; "" for first_ms): a call published as usual parks at its publication,
--                    its deadline still from when it first asked

-- include: lib/clock.lua
-- include: lib/reserve.lua

local instances, held, rates, paused, config, holders, holder, waiters, waiter, stats, queue,
  parked, handoffs, rate_parked, abandoned, standby = unpack(KEYS)
local token, first_ms, entry_json, instance, pool, wait, grant_lease_ms, grant_info,
  rate_parked_max, reserve, reserve_arrived, reserve_ms, place_ms = unpack(ARGV)

local now, now_us = redis_clock()
local publishing = instance ~= ''

if publishing then
  local actual = redis.call('HGET', instances, instance) or ''
  if actual ~= pool then
    return {'MOVED', now, actual}
  end
end
local cfg = redis.call('HMGET', config, 'limit', 'timeout', 'uid', 'wait')
local timeout = tonumber(cfg[2] or '')
if not timeout then
  if publishing then
    return {'MOVED', now, ''}
  end
  return {'NOPOOL', now}
end
local limit = tonumber(cfg[1])
local kept_now = 0
if publishing then
  local mode = wait ~= '' and wait or (cfg[4] or 'countdown')
  if mode ~= 'handoff' then
    return {'AS_USUAL', now, 'countdown'}
  end
  if redis.call('HEXISTS', paused, instance) == 1 then
    -- A paused instance waits by countdown (acquire.lua): its chance is timed.
    return {'AS_USUAL', now, 'limited'}
  end
  if redis.call('ZSCORE', holders, token) and redis.call('HEXISTS', handoffs, token) == 0 then
    -- Sent again with the id of a task that holds a slot (Task.replace, a retry without a
    -- countdown): a new run, which must wait for the slot to be given back like any other.
    return {'AS_USUAL', now, 'held'}
  end
  -- The free slots kept for calls published as usual on their way (lib/reserve.lua): this
  -- producer's, which replace any other's, or another's still holding.
  if (tonumber(reserve) or 0) > 0 then
    kept_now = keep(config, stats, reserve, reserve_arrived, now + tonumber(reserve_ms))
  else
    kept_now = kept(config, stats, now)
  end
end
if redis.call('ZSCORE', queue, token) or redis.call('ZSCORE', holders, token)
    or redis.call('ZSCORE', standby, token) then
  return {'ALREADY', now}
end
-- A slot kept for a call on its way is not free.
local nobody_waits = redis.call('ZCARD', queue) + redis.call('ZCARD', standby) == 0
  and redis.call('ZCARD', holders) + redis.call('ZCARD', abandoned) + kept_now < limit
if publishing and redis.call('HEXISTS', rates, instance) == 1 and (nobody_waits
    or tonumber(redis.call('HGET', rate_parked, instance) or '0') >= tonumber(rate_parked_max)) then
  -- Rate-limited, and a slot free with nobody waiting (no grant: it would need the rate token
  -- too), or enough of its instance's tasks parked already.
  return {'AS_USUAL', now, 'rate'}
end
if entry_json == '' then
  if not publishing or not nobody_waits then
    return {'CONTENDED', now}
  end
  -- Nobody waits and a slot is free: grant it now. Nothing is parked, so the grant needs no
  -- message and no hand-off entry: if it lapses (the task never started, or not in time) the
  -- slot simply comes back (lib/lapsed.lua), and a late message acquires as any other would. The
  -- same id sent again while the grant is unclaimed finds it held ("held" above) and is published
  -- as usual; whichever copy starts first claims the grant (acquire.lua).
  local id = token .. '.' .. redis.call('HINCRBY', config, 'handoff_seq', 1)  -- not reset with metrics
  redis.call('HINCRBY', stats, 'handoffs', 1)
  local granted = cjson.decode(grant_info)
  granted['since'], granted['handoff'], granted['immediate'], granted['direct'] = now, id, 1, 1
  redis.call('ZADD', holders, now + tonumber(grant_lease_ms), token)
  redis.call('HSET', holder, token, cjson.encode(granted))
  redis.call('HSET', held, token, pool)
  return {'GRANTED', now, id, cfg[3], timeout,
    limit - redis.call('ZCARD', holders) - redis.call('ZCARD', abandoned), arrivals(stats)}
end
local first = tonumber(first_ms) or now
-- Its place in line (us): when it first asked (or was published as usual, place_ms). A task
-- parked at publication asks now, so it goes last, strictly after everyone already in line (two
-- parks in one microsecond keep their order).
local place
if first_ms == '' then
  place = now_us
  local last = redis.call('ZRANGE', queue, -1, -1, 'WITHSCORES')
  if last[2] and tonumber(last[2]) >= place then
    place = tonumber(last[2]) + 1
  end
else
  place = math.min(first, tonumber(place_ms) or first) * 1000 + now_us % 1000
end
local entry = cjson.decode(entry_json)
local of = publishing and instance or (entry['info'] or {})['instance']
if of and redis.call('HEXISTS', rates, of) == 1 then
  -- Counted while it is parked (handoff.lua, clear.lua and delete.lua count it out).
  entry['rate_parked'] = of
  redis.call('HINCRBY', rate_parked, of, 1)
end
entry['first'] = first
entry['place'] = string.format('%d', place)  -- a string: cjson keeps only 14 digits
entry['state'] = {pool = pool, uid = cfg[3], timeout = timeout / 1000}
if publishing and nobody_waits then
  entry['immediate'] = 1  -- nobody waits and a slot is free: handoff.lua gives it one now
end
redis.call('ZADD', queue, place, token)
redis.call('HSET', parked, token, cjson.encode(entry))
redis.call('ZADD', waiters, first + timeout, token)
local waiting = entry['info']
waiting['since'] = first
redis.call('HSET', waiter, token, cjson.encode(waiting))
return {'PARKED', now, redis.call('ZRANK', queue, token) + 1, first + timeout}
