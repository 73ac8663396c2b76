--[[
handoff.lua: give free slots straight to the oldest parked tasks, and keep the FIFO healthy.
Run after every release (pipelined with release.lua) and by every worker's reaper.

1. A hand-off not taken up before its lease lapsed (the releasing worker died before publishing,
   or the message was lost) goes back to the head of the FIFO, keeping its place, and its id
   joins {p}:stale, so that its message, should it still arrive, never runs; a slot granted
   at publication (nothing parked: the producer publishes the message itself) just comes back,
   and its message, if it arrives late, acquires as any other; other lapsed holders are
   reclaimed (their process died).
2. Parked tasks past their deadline leave the FIFO for {p}:expired, so that the caller publishes
   them to fail with PoolTimeoutError through Celery's normal failure path. (A task placed by a
   version that ordered the FIFO in milliseconds looks past its deadline by its place: its own
   first request says otherwise, and it is placed again, in microseconds.)
3. While a slot is free and a task is parked, the oldest gets the slot under a fresh hand-off id;
   its entry is returned for the caller to publish at once. A parked task whose instance is
   paused gets no slot: it leaves the FIFO for {p}:sent_back (at most 100 per call), to be
   published without a hand-off and wait by countdown like the instance's other tasks, and the
   slot goes on to the next task. It stays a waiter, marked so that a copy of its message under
   any hand-off id (one that lapsed before it was sent back) is known to be stale.
   A parked task whose instance has a rate limit gets the slot only with a rate token, taken
   here (its claim does not take another): while its instance's next token is not due it keeps
   its place and the slot goes on to the next task. So a rate-limited instance sharing a busy
   pool gets slots in FIFO order among the calls its rate allows; a slot left free meanwhile is
   handed out by the next call of this script (a release, a park, or a reaper round). Passing
   over stays cheap: only tasks parked under their instance's rate limit are passed over, and
   about 10 of each rate-limited instance are parked at a time (KEYS[16], acquire.lua and
   park.lua); an instance found not due is not looked at again in the same call, and at most 100
   tokens and 1,000 entries are looked at per call.

KEYS[1]  {p}:held                   HASH task id -> pool name
KEYS[2]  {p}:pool:<name>            HASH limit, timeout (ms), handoff_seq (the last hand-off id's number)
KEYS[3]  {p}:pool:<name>:holders    ZSET task id -> lease expiry (ms)
KEYS[4]  {p}:pool:<name>:holder     HASH task id -> holder JSON (a hand-off carries "handoff": id)
KEYS[5]  {p}:pool:<name>:waiters    ZSET task id -> deadline (ms)
KEYS[6]  {p}:pool:<name>:waiter     HASH task id -> waiter JSON
KEYS[7]  {p}:pool:<name>:stats      HASH counters: handoffs, handoffs_retried, grants_lapsed,
                                         reclaimed, timeouts, sent_back
KEYS[8]  {p}:pool:<name>:queue      ZSET parked task id -> place in line (us: first request)
KEYS[9]  {p}:pool:<name>:parked     HASH parked task id -> entry JSON
KEYS[10] {p}:pool:<name>:handing    HASH task id handed a slot, not started -> entry JSON
KEYS[11] {p}:expired                LIST entries whose task must be published to fail
KEYS[12] {p}:paused                 HASH instance -> paused until (ms)
KEYS[13] {p}:sent_back              LIST entries of paused instances, to publish to wait
KEYS[14] {p}:stale                  ZSET hand-off id whose message must never run -> forget at (ms)
KEYS[15] {p}:rates                  HASH instance -> "<interval ms>/<tolerance ms>/<count>/<period ms>"
KEYS[16] {p}:pool:<name>:rate_parked HASH rate-limited instance -> its tasks parked in the FIFO
         {p}:rate:<instance>        STRING GCRA state of a parked task's instance: not declared,
                                    as the instances are only known here; like every key it has
                                    the {p} hash tag, so it is in the same Redis Cluster slot

ARGV[1]  pool name
ARGV[2]  hand-off lease (ms): how long a handed-off task has to start and claim its slot
ARGV[3]  how long a lapsed hand-off id stays in {p}:stale (ms)
ARGV[4]  the prefix of the instances' rate state keys: "{p}:rate:"

Returns {{token, hand-off id, entry JSON, ...}, {token, holder JSON, ...}}: the hand-offs to
publish now, then the holders reclaimed from dead processes.
]]

-- include: gcra.lua

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cfg = redis.call('HMGET', KEYS[2], 'limit', 'timeout')
local handoffs, reclaimed = {}, {}
if not cfg[1] then
  return {handoffs, reclaimed}
end
local limit, timeout = tonumber(cfg[1]), tonumber(cfg[2])
redis.call('ZREMRANGEBYSCORE', KEYS[14], '-inf', now)

-- A parked task of a rate-limited instance is counted while it is in the FIFO (park.lua).
local function count_parked(parked, by)
  local of = parked and parked['rate_parked']
  if of and redis.call('HINCRBY', KEYS[16], of, by) <= 0 then
    redis.call('HDEL', KEYS[16], of)
  end
end

-- A parked task leaves the FIFO (handed a slot, sent back, or past its deadline).
local function leave_fifo(token, parked)
  redis.call('ZREM', KEYS[8], token)
  redis.call('HDEL', KEYS[9], token)
  redis.call('ZREM', KEYS[5], token)
  redis.call('HDEL', KEYS[6], token)
  count_parked(parked, -1)
end

for _, token in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 100)) do
  local info = redis.call('HGET', KEYS[4], token) or ''
  redis.call('ZREM', KEYS[3], token)
  redis.call('HDEL', KEYS[4], token)
  if redis.call('HGET', KEYS[1], token) == ARGV[1] then
    redis.call('HDEL', KEYS[1], token)
  end
  local entry = redis.call('HGET', KEYS[10], token)
  local parked = entry and cjson.decode(entry)
  if not parked and info ~= '' and cjson.decode(info)['direct'] then
    redis.call('HINCRBY', KEYS[7], 'grants_lapsed', 1)  -- granted at publication, never claimed
  elseif parked then
    redis.call('HDEL', KEYS[10], token)
    local lapsed = info ~= '' and cjson.decode(info)['handoff']
    if lapsed then
      redis.call('ZADD', KEYS[14], now + tonumber(ARGV[3]), lapsed)
    end
    local first = parked['first']
    redis.call('ZADD', KEYS[8], tonumber(parked['place'] or '') or first * 1000, token)
    if parked['immediate'] then
      parked['immediate'] = nil  -- it is waiting now
      entry = cjson.encode(parked)
    end
    redis.call('HSET', KEYS[9], token, entry)
    redis.call('ZADD', KEYS[5], first + timeout, token)
    count_parked(parked, 1)
    redis.call('HINCRBY', KEYS[7], 'handoffs_retried', 1)
  else
    redis.call('HINCRBY', KEYS[7], 'reclaimed', 1)
    reclaimed[#reclaimed + 1] = token
    reclaimed[#reclaimed + 1] = info
  end
end

for _, token in ipairs(redis.call('ZRANGEBYSCORE', KEYS[8], '-inf', (now - timeout) * 1000, 'LIMIT', 0, 100)) do
  local entry = redis.call('HGET', KEYS[9], token)
  local parked = entry and cjson.decode(entry)
  local first = parked and tonumber(parked['first'])
  if first and first + timeout > now then
    -- Placed by a version that ordered the FIFO in milliseconds, and not past its deadline:
    -- keep it, in its place in microseconds (before the hand-outs below).
    redis.call('ZADD', KEYS[8], first * 1000, token)
  else
    leave_fifo(token, parked)
    redis.call('HINCRBY', KEYS[7], 'timeouts', 1)
    if entry then
      redis.call('RPUSH', KEYS[11], cjson.encode({
        reason = 'timeout', pool = ARGV[1], limit = limit, timeout = timeout, at = now, entry = entry,
      }))
    end
  end
end

local free = limit - redis.call('ZCARD', KEYS[3])
local sent_back, passed_over, checked = 0, 0, 0
local not_due = {}  -- instances whose next rate token is not due: their tasks are passed over
while free > 0 and passed_over < 1000 and checked < 100 do
  -- The oldest parked task not passed over (for its rate limit) in this call.
  local head = redis.call('ZRANGE', KEYS[8], passed_over, passed_over)
  if #head == 0 then break end
  local token = head[1]
  local entry = redis.call('HGET', KEYS[9], token)
  local decoded = entry and cjson.decode(entry)
  local info = decoded and decoded['info'] or {}
  local instance = info['instance']
  local paused = instance and tonumber(redis.call('HGET', KEYS[12], instance) or '')
  -- Parked under its instance's rate limit (counted, so at most about 10 per instance): the
  -- hand-off takes its token. One parked before the limit was set claims as any other (it
  -- gives the slot back if its token is not due), so no backlog is ever passed over here.
  local spec = decoded and decoded['rate_parked'] and not (paused and paused > now)
    and redis.call('HGET', KEYS[15], instance)
  local due = true
  if spec then
    due = not not_due[instance] and take_rate_token(ARGV[4] .. instance, spec, now) == 0
    checked = checked + (not_due[instance] and 0 or 1)
  end
  if not due then
    not_due[instance] = true
    passed_over = passed_over + 1  -- keeps its place: its instance's next call is not due yet
  elseif decoded and paused and paused > now and sent_back < 100 then
    leave_fifo(token, decoded)
    redis.call('RPUSH', KEYS[13], cjson.encode({reason = 'paused', pool = ARGV[1], entry = entry}))
    local first = tonumber(decoded['first']) or now
    info['since'] = first
    info['returned'] = '*'  -- its message goes out without a hand-off id
    redis.call('ZADD', KEYS[5], first + timeout, token)
    redis.call('HSET', KEYS[6], token, cjson.encode(info))
    sent_back = sent_back + 1
    redis.call('HINCRBY', KEYS[7], 'sent_back', 1)
  elseif decoded then
    leave_fifo(token, decoded)
    -- Ids count on in the pool's definition, which a metrics reset leaves alone.
    local id = token .. '.' .. redis.call('HINCRBY', KEYS[2], 'handoff_seq', 1)
    redis.call('HINCRBY', KEYS[7], 'handoffs', 1)
    info['since'] = now
    info['handoff'] = id
    info['immediate'] = decoded['immediate']
    info['rated'] = spec and 1 or nil  -- its rate token is taken: its claim takes no other
    redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), token)
    redis.call('HSET', KEYS[4], token, cjson.encode(info))
    redis.call('HSET', KEYS[1], token, ARGV[1])
    redis.call('HSET', KEYS[10], token, entry)
    handoffs[#handoffs + 1] = token
    handoffs[#handoffs + 1] = id
    handoffs[#handoffs + 1] = entry
    free = free - 1
  else
    leave_fifo(token)  -- its entry is gone: nothing to publish
  end
end
if redis.call('EXISTS', KEYS[8]) == 0 then
  redis.call('DEL', KEYS[16])  -- nothing parked: no count can be off (say, after an upgrade)
end
return {handoffs, reclaimed}
