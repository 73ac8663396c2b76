--[[
park.lua: park a task in its pool's hand-off FIFO. Its message waits here, not in the broker:
handoff.lua later gives the oldest parked task a slot and returns its message to be published.

Two callers park:
- a producer, at publication (PooledTask.apply_async), before the message ever reaches the
  broker. ARGV[4] names the connector instance; the task parks only when this pool serves the
  instance, waits by hand-off and the instance is not paused. Otherwise the caller publishes as
  usual and the task waits (if it must) when a worker runs it. A task of a rate-limited instance
  parks only when the pool is full or tasks wait (handoff.lua then takes its rate token when it
  hands it a slot), and while fewer than ARGV[9] of its instance's tasks are parked; otherwise
  it is published as usual and takes the slot and the token, or waits by countdown, when a
  worker runs it (acquire.lua applies the same bound).
- a worker, whose task found the pool full (acquire.lua answered FULL with reason "handoff").
Callers run handoff.lua right after (pipelined), so a free slot goes straight to the oldest task.

KEYS[1]  {p}:pool:<name>            HASH limit, timeout (ms), uid, wait, handoff_seq
KEYS[2]  {p}:pool:<name>:waiters    ZSET task id -> deadline (ms)
KEYS[3]  {p}:pool:<name>:waiter     HASH task id -> waiter JSON
KEYS[4]  {p}:pool:<name>:queue      ZSET parked task id -> place in line (us: first request)
KEYS[5]  {p}:pool:<name>:parked     HASH parked task id -> entry JSON
KEYS[6]  {p}:pool:<name>:holders    ZSET task id -> lease expiry (ms)
KEYS[7]  {p}:pool:<name>:handing    HASH task id handed a slot, not started -> entry JSON
KEYS[8]  {p}:instances              HASH instance -> pool name
KEYS[9]  {p}:rates                  HASH instance -> rate limit
KEYS[10] {p}:paused                 HASH instance -> paused until (ms)
KEYS[11] {p}:pool:<name>:holder     HASH task id -> holder JSON (a hand-off carries "handoff": id)
KEYS[12] {p}:held                   HASH task id -> pool name
KEYS[13] {p}:pool:<name>:stats      HASH counters: handoffs
KEYS[14] {p}:pool:<name>:rate_parked HASH rate-limited instance -> its tasks parked in the FIFO

ARGV[1]  token: the task id
ARGV[2]  when the task first asked for a slot (ms, Redis clock); "" for now
ARGV[3]  entry JSON: {"info": {task_name, instance, ...}, "msg": <the serialized message>};
         "first", "place" and "state" ({pool, uid, timeout}: the task's wait state) are added, and
         "immediate" when a producer parks it with a slot free and nobody waiting.
         At publication it may be "": grant a free slot at once if nobody waits (the message is
         then published as usual, with the grant in its header), else answer -5 and park nothing
ARGV[4]  at publication: the connector instance; "" when a worker parks
ARGV[5]  the pool's name (at publication: the pool the caller believes serves the instance)
ARGV[6]  at publication: how the task waits ("countdown", "handoff", "" for the pool's mode)
ARGV[7]  at publication: the hand-off lease (ms) of a slot granted at once
ARGV[8]  at publication: the holder JSON of a slot granted at once ({task_name, instance})
ARGV[9]  at publication: how many tasks of one rate-limited instance may be parked at a time

Returns {position, now, detail}; position is
  >= 1  parked: its place in the FIFO (1 = next); detail is its deadline (ms)
   0    parked, holding or handed a slot already (a redelivered or repeated message)
  -1    the pool no longer exists (a worker starts again from acquire.lua)
  -2    at publication: another pool serves the instance; detail is its name ("" for none)
  -3    at publication: publish as usual; detail says why ("countdown", "limited": paused,
        "rate": rate-limited with a slot free and nobody waiting, or with enough of its
        instance's tasks parked, "held")
  -4    at publication, no entry: a slot is granted (a hand-off taken up by the task's claim,
        which lapses like any other if the task does not start in time); detail is the hand-off
        id, and the reply goes on with the pool's uid and timeout (ms): {-4, now, id, uid, timeout}
  -5    at publication, no entry: the pool is full or tasks wait; call again with the entry
]]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local token, instance = ARGV[1], ARGV[4]

if instance ~= '' then
  local actual = redis.call('HGET', KEYS[8], instance) or ''
  if actual ~= ARGV[5] then
    return {-2, now, actual}
  end
end
local cfg = redis.call('HMGET', KEYS[1], 'limit', 'timeout', 'uid', 'wait')
local timeout = tonumber(cfg[2] or '')
if not timeout then
  return {instance ~= '' and -2 or -1, now, ''}
end
if instance ~= '' then
  local mode = ARGV[6] ~= '' and ARGV[6] or (cfg[4] or 'countdown')
  if mode ~= 'handoff' then
    return {-3, now, 'countdown'}
  end
  if redis.call('HEXISTS', KEYS[10], instance) == 1 then
    -- A paused instance waits by countdown (acquire.lua): its chance is timed.
    return {-3, now, 'limited'}
  end
  if redis.call('ZSCORE', KEYS[6], token) and redis.call('HEXISTS', KEYS[7], token) == 0 then
    -- Sent again with the id of a task that holds a slot (Task.replace, a retry without a
    -- countdown): a new run, which must wait for the slot to be given back like any other.
    return {-3, now, 'held'}
  end
end
if redis.call('ZSCORE', KEYS[4], token) or redis.call('ZSCORE', KEYS[6], token) then
  return {0, now, ''}
end
if instance ~= '' and redis.call('HEXISTS', KEYS[9], instance) == 1 and (
    (redis.call('ZCARD', KEYS[4]) == 0 and redis.call('ZCARD', KEYS[6]) < tonumber(cfg[1]))
    or tonumber(redis.call('HGET', KEYS[14], instance) or '0') >= tonumber(ARGV[9])) then
  -- Rate-limited, and a slot free with nobody waiting (no grant: it would need the rate token
  -- too), or enough of its instance's tasks parked already.
  return {-3, now, 'rate'}
end
if ARGV[3] == '' then
  if instance == '' or redis.call('ZCARD', KEYS[4]) > 0
      or redis.call('ZCARD', KEYS[6]) >= tonumber(cfg[1]) then
    return {-5, now, ''}
  end
  -- Nobody waits and a slot is free: grant it now. Nothing is parked, so the grant needs no
  -- message and no hand-off entry: if it lapses (the task never started, or not in time) the
  -- slot simply comes back (handoff.lua, acquire.lua), and a late message acquires as any other
  -- would. The same id sent again while the grant is unclaimed finds it held ("held" above) and
  -- is published as usual; whichever copy starts first claims the grant (acquire.lua).
  local id = token .. '.' .. redis.call('HINCRBY', KEYS[1], 'handoff_seq', 1)  -- not reset with metrics
  redis.call('HINCRBY', KEYS[13], 'handoffs', 1)
  local info = cjson.decode(ARGV[8])
  info['since'], info['handoff'], info['immediate'], info['direct'] = now, id, 1, 1
  redis.call('ZADD', KEYS[6], now + tonumber(ARGV[7]), token)
  redis.call('HSET', KEYS[11], token, cjson.encode(info))
  redis.call('HSET', KEYS[12], token, ARGV[5])
  return {-4, now, id, cfg[3], timeout}
end
local first = tonumber(ARGV[2]) or now
-- Its place in line (us): when it first asked. A task parked at publication asks now, so it goes
-- last, strictly after everyone already in line (two parks in one microsecond keep their order).
local place
if ARGV[2] == '' then
  place = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
  if last[2] and tonumber(last[2]) >= place then
    place = tonumber(last[2]) + 1
  end
else
  place = first * 1000 + tonumber(t[2]) % 1000
end
local entry = cjson.decode(ARGV[3])
local of = instance ~= '' and instance or (entry['info'] or {})['instance']
if of and redis.call('HEXISTS', KEYS[9], of) == 1 then
  -- Counted while it is parked (handoff.lua, clear.lua and delete.lua count it out).
  entry['rate_parked'] = of
  redis.call('HINCRBY', KEYS[14], of, 1)
end
entry['first'] = first
entry['place'] = string.format('%d', place)  -- a string: cjson keeps only 14 digits
entry['state'] = {pool = ARGV[5], uid = cfg[3], timeout = timeout / 1000}
if instance ~= '' and redis.call('ZCARD', KEYS[4]) == 0
    and redis.call('ZCARD', KEYS[6]) < tonumber(cfg[1]) then
  entry['immediate'] = 1  -- nobody waits and a slot is free: handoff.lua gives it one now
end
redis.call('ZADD', KEYS[4], place, token)
redis.call('HSET', KEYS[5], token, cjson.encode(entry))
redis.call('ZADD', KEYS[2], first + timeout, token)
local info = entry['info']
info['since'] = first
redis.call('HSET', KEYS[3], token, cjson.encode(info))
return {redis.call('ZRANK', KEYS[4], token) + 1, now, first + timeout}
