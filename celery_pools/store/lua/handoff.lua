-- handoff.lua: give free slots straight to the oldest parked tasks, and keep the FIFO healthy.
-- Run after every release that finds tasks parked (pipelined with release.lua when likely), after
-- every park, and by every worker's reaper.
--
-- 1. A hand-off not taken up before its lease lapsed (the releasing worker died before publishing,
--    or the message was lost) goes back to the head of the FIFO, keeping its place, and its id
--    joins stale, so that its message, should it still arrive, never runs; a slot granted at
--    publication (nothing parked: the producer publishes the message itself) just comes back, and
--    its message, if it arrives late, acquires as any other; other lapsed holders are reclaimed
--    (their process died); abandoned slots whose grace ended are freed. See lib/lapsed.lua.
-- 2. Parked tasks past their deadline leave the FIFO for expired, so that the caller publishes
--    them to fail with PoolTimeoutError through Celery's normal failure path.
-- 3. While a slot is free and a task is parked, the oldest gets the slot under a fresh hand-off id;
--    its entry is returned for the caller to publish at once. A parked task whose instance is
--    paused gets no slot: it leaves the FIFO for sent_back (at most 100 a call), to be published
--    without a hand-off and wait by countdown like the instance's other tasks, and the slot goes on
--    to the next task. It stays a waiter, marked so that a copy of its message under any hand-off
--    id (one that lapsed before it was sent back) is known to be stale.
--    A parked task whose instance has a rate limit gets the slot only with a rate token, taken
--    here (its claim does not take another): while its instance's next token is not due it keeps
--    its place and the slot goes on to the next task. So a rate-limited instance sharing a busy
--    pool gets slots in FIFO order among the calls its rate allows; a slot left free meanwhile is
--    handed out by the next call of this script (a release, a park, or a reaper round). Passing
--    over stays cheap: only tasks parked under their instance's rate limit are passed over, and
--    about 10 of each rate-limited instance are parked at a time (rate_parked, acquire.lua and
--    park.lua); an instance found not due is not looked at again in the same call, and at most 100
--    tokens and 1,000 entries are looked at a call.
--    Free slots go to standbys first (they are the oldest waiters, lib/standby.lua): a blocked one
--    is woken, one whose message is on its way holds the slot as a hand-off.
-- 4. While the pool is full, the oldest parked tasks are promoted to standby, up to the target:
--    min(standby_max, limit, 1 + ceil(2 * limit * latency / hold), floor(block * limit / (2 * hold)))
--    with hold the pool's mean hold time and latency its mean promotion-to-block time (moving
--    averages in stats; while no hold was measured, how long the oldest holder has held its slot so
--    far stands for hold, 5 ms for latency, and the target is at least 1): enough standbys that a
--    freed slot finds one blocked, no more than are likely woken within half their block.
--    Standbys are always the head of the line: promotion stops at a task parked under a rate limit,
--    or of a paused instance (its hand-off decides its turn), and a freed slot goes to whichever
--    of the oldest standby and the oldest parked task came first. A standby not blocked within
--    the hand-off lease (its message lost), or blocked 2 s past its block (its process died), goes
--    back to its place in the FIFO.
--
-- Stats fields touched: handoffs, handoffs_retried, grants_lapsed, reclaimed, timeouts, sent_back,
-- abandoned_expired, standbys_promoted, standbys_woken, standbys_returned. Read: as_usual_arrived.
-- Free slots kept for calls published as usual on their way (the config's "reserve",
-- lib/reserve.lua) are not handed out.
--
-- Reply: {"OK", now, {task id, hand-off id, entry JSON, ...}, {task id, holder JSON, ...},
-- {task id, standby id, entry JSON, ...}}: the hand-offs to publish now, the holders reclaimed
-- from dead processes, then the standbys promoted, to publish now too;
-- {"NOPOOL", now, {}, {}, {}} when the pool does not exist.
--
-- Keys:
--   held         {p}:held                    HASH task id -> pool name
--   rates        {p}:rates                   HASH instance -> encoded rate limit
--   rate_state   {p}:rate_state              HASH instance -> GCRA arrival time (ms)
--   paused       {p}:paused                  HASH instance -> paused until (ms)
--   expired      {p}:expired                 LIST entries to publish to fail
--   sent_back    {p}:sent_back               LIST entries to publish to wait
--   stale        {p}:stale                   ZSET hand-off id -> forget at (ms)
--   config       {p}:pool:<name>             HASH limit, timeout (ms), handoff_seq, reserve
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
--   abandoned_holder  {p}:pool:<name>:abandoned_holder HASH task id -> holder JSON
--   standby      {p}:pool:<name>:standby     ZSET standby task id -> place (us)
--   standby_entry  {p}:pool:<name>:standby_entry  HASH standby task id -> standby JSON
--   wake         {p}:pool:<name>:wake:       prefix of each standby's wake LIST
--
-- Arguments:
--   pool              the pool's name
--   handoff_lease_ms  how long a handed-off task has to start and claim its slot
--   stale_ms          how long a lapsed hand-off id stays in stale (ms)
--   standby_max       at most this many standbys (0: none)
--   standby_block_ms  how long a standby blocks at most (ms)

-- include: lib/clock.lua
-- include: lib/gcra.lua
-- include: lib/lapsed.lua
-- include: lib/standby.lua
-- include: lib/reserve.lua

local held, rates, rate_state, paused, expired, sent_back, stale, config, holders, holder, waiters,
  waiter, stats, queue, parked, handoffs, rate_parked, abandoned, abandoned_holder, standby,
  standby_entry, wake = unpack(KEYS)
local pool, handoff_lease_ms, stale_ms, standby_max, standby_block_ms = unpack(ARGV)

local now = redis_clock()
local cfg = redis.call('HMGET', config, 'limit', 'timeout')
local handed, reclaimed, promoted = {}, {}, {}
if not cfg[1] then
  return {'NOPOOL', now, handed, reclaimed, promoted}
end
local k = {
  held = held, holders = holders, holder = holder, waiters = waiters, waiter = waiter,
  stats = stats, queue = queue, parked = parked, handoffs = handoffs, stale = stale,
  standby = standby, standby_entry = standby_entry, wake = wake,
}
local limit, timeout = tonumber(cfg[1]), tonumber(cfg[2])
redis.call('ZREMRANGEBYSCORE', stale, '-inf', now)

-- A parked task of a rate-limited instance is counted while it is in the FIFO (park.lua).
local function count_parked(entry, by)
  local of = entry and entry['rate_parked']
  if of and redis.call('HINCRBY', rate_parked, of, by) <= 0 then
    redis.call('HDEL', rate_parked, of)
  end
end

-- A parked task leaves the FIFO (handed a slot, sent back, or past its deadline).
local function leave_fifo(token, entry)
  redis.call('ZREM', queue, token)
  redis.call('HDEL', parked, token)
  redis.call('ZREM', waiters, token)
  redis.call('HDEL', waiter, token)
  count_parked(entry, -1)
end

-- A lapsed hand-off goes back to its place in line; its id becomes stale.
local function requeue(token, info, entry_json)
  local entry = cjson.decode(entry_json)
  local lapsed = info ~= '' and cjson.decode(info)['handoff']
  if lapsed then
    redis.call('ZADD', stale, now + tonumber(stale_ms), lapsed)
  end
  local first = entry['first']
  redis.call('ZADD', queue, tonumber(entry['place'] or '') or first * 1000, token)
  if entry['immediate'] then
    entry['immediate'] = nil  -- it is waiting now
    entry_json = cjson.encode(entry)
  end
  redis.call('HSET', parked, token, entry_json)
  redis.call('ZADD', waiters, first + timeout, token)
  count_parked(entry, 1)
  redis.call('HINCRBY', stats, 'handoffs_retried', 1)
end

reclaimed = sweep_lapsed(
  {held = held, holders = holders, holder = holder, handoffs = handoffs, stats = stats},
  pool, now, requeue)
sweep_abandoned({abandoned = abandoned, abandoned_holder = abandoned_holder, stats = stats}, now)
for _, token in ipairs(redis.call('ZRANGE', standby, 0, -1)) do
  local record = cjson.decode(redis.call('HGET', standby_entry, token))
  local ready = tonumber(record['ready'])
  if (ready and tonumber(record['until']) + 2000 < now)
      or (not ready and tonumber(record['promoted']) + tonumber(handoff_lease_ms) < now) then
    to_fifo(k, token, now, tonumber(stale_ms))
  end
end

for _, token in ipairs(redis.call('ZRANGEBYSCORE', queue, '-inf', (now - timeout) * 1000, 'LIMIT', 0, 100)) do
  local entry_json = redis.call('HGET', parked, token)
  leave_fifo(token, entry_json and cjson.decode(entry_json))
  redis.call('HINCRBY', stats, 'timeouts', 1)
  if entry_json then
    redis.call('RPUSH', expired, cjson.encode({
      reason = 'timeout', pool = pool, limit = limit, timeout = timeout, at = now, entry = entry_json,
    }))
  end
end

local free = limit - redis.call('ZCARD', holders) - redis.call('ZCARD', abandoned)
  - kept(config, stats, now)  -- slots kept for calls on their way (lib/reserve.lua)
local sent, passed_over, checked = 0, 0, 0
local not_due = {}  -- instances whose next rate token is not due: their tasks are passed over
while free > 0 and passed_over < 1000 and checked < 100 do
  -- The oldest parked task not passed over (for its rate limit) in this call, and the oldest
  -- standby: whichever came first gets the slot.
  local head = redis.call('ZRANGE', queue, passed_over, passed_over, 'WITHSCORES')
  local oldest = redis.call('ZRANGE', standby, 0, 0, 'WITHSCORES')
  if #oldest > 0 and (#head == 0 or tonumber(oldest[2]) <= tonumber(head[2])) then
    to_handoff(k, oldest[1], pool, now, tonumber(handoff_lease_ms))
    free = free - 1
  elseif #head == 0 then
    break
  else
    local token = head[1]
    local entry_json = redis.call('HGET', parked, token)
    local entry = entry_json and cjson.decode(entry_json)
    local info = entry and entry['info'] or {}
    local instance = info['instance']
    local until_ms = instance and tonumber(redis.call('HGET', paused, instance) or '')
    local is_paused = until_ms and until_ms > now
    -- Parked under its instance's rate limit (counted, so at most about 10 per instance): the
    -- hand-off takes its token. One parked before the limit was set claims as any other (it
    -- gives the slot back if its token is not due), so no backlog is ever passed over here.
    local spec = entry and entry['rate_parked'] and not is_paused
      and redis.call('HGET', rates, instance)
    local due = true
    if spec then
      due = not not_due[instance] and take_rate_token(rate_state, instance, spec, now) == 0
      checked = checked + (not_due[instance] and 0 or 1)
    end
    if not due then
      not_due[instance] = true
      passed_over = passed_over + 1  -- keeps its place: its instance's next call is not due yet
    elseif entry and is_paused and sent < 100 then
      leave_fifo(token, entry)
      redis.call('RPUSH', sent_back, cjson.encode({reason = 'paused', pool = pool, entry = entry_json}))
      local first = tonumber(entry['first']) or now
      info['since'] = first
      info['returned'] = '*'  -- its message goes out without a hand-off id
      redis.call('ZADD', waiters, first + timeout, token)
      redis.call('HSET', waiter, token, cjson.encode(info))
      sent = sent + 1
      redis.call('HINCRBY', stats, 'sent_back', 1)
    elseif entry then
      leave_fifo(token, entry)
      -- Ids count on in the pool's definition, which a metrics reset leaves alone.
      local id = token .. '.' .. redis.call('HINCRBY', config, 'handoff_seq', 1)
      redis.call('HINCRBY', stats, 'handoffs', 1)
      info['since'] = now
      info['handoff'] = id
      info['immediate'] = entry['immediate']
      info['rated'] = spec and 1 or nil  -- its rate token is taken: its claim takes no other
      redis.call('ZADD', holders, now + tonumber(handoff_lease_ms), token)
      redis.call('HSET', holder, token, cjson.encode(info))
      redis.call('HSET', held, token, pool)
      redis.call('HSET', handoffs, token, entry_json)
      handed[#handed + 1] = token
      handed[#handed + 1] = id
      handed[#handed + 1] = entry_json
      free = free - 1
    else
      leave_fifo(token)  -- its entry is gone: nothing to publish
    end
  end
end

-- How many standbys this pool keeps while it is full (see 4. above).
local function standby_target()
  local cap = math.min(tonumber(standby_max), limit)
  if cap <= 0 then
    return 0
  end
  local hold = tonumber(redis.call('HGET', stats, 'hold_avg_ms') or '')
  local least = 0
  if not hold or hold <= 0 then
    -- No hold measured yet (a new pool, its first calls running): the holder whose lease ends
    -- first (as a rule the oldest) has held its slot this long so far, and no hold is shorter
    -- while it runs. At least one standby.
    local oldest = redis.call('ZRANGE', holders, 0, 0)[1]
    local info = oldest and redis.call('HGET', holder, oldest)
    local since = info and tonumber(cjson.decode(info)['since'])
    hold, least = math.max(1, now - (since or now)), 1
  end
  local latency = tonumber(redis.call('HGET', stats, 'standby_latency_avg_ms') or '') or 5
  local by_latency = 1 + math.ceil(2 * limit * latency / hold)
  local by_block = math.floor(tonumber(standby_block_ms) * limit / (2 * hold))
  return math.max(least, math.min(cap, by_latency, by_block))
end
if free <= 0 and redis.call('EXISTS', queue) == 1 then
  local missing = standby_target() - redis.call('ZCARD', standby)
  local looked = 0
  while missing > 0 and looked < 20 do
    local head = redis.call('ZRANGE', queue, looked, looked, 'WITHSCORES')
    if #head == 0 then break end
    local token = head[1]
    local entry_json = redis.call('HGET', parked, token)
    local entry = entry_json and cjson.decode(entry_json)
    local instance = entry and (entry['info'] or {})['instance']
    local until_ms = instance and tonumber(redis.call('HGET', paused, instance) or '')
    if not entry then
      looked = looked + 1  -- its entry is gone: handoff.lua's next hand-off drops it
    elseif entry['rate_parked'] or (until_ms and until_ms > now) then
      break  -- standbys are the head of the line: its turn comes by hand-off
    else
      redis.call('ZREM', queue, token)
      redis.call('HDEL', parked, token)
      local id = token .. '.' .. redis.call('HINCRBY', config, 'handoff_seq', 1)
      redis.call('ZADD', standby, head[2], token)
      redis.call('HSET', held, token, pool)
      redis.call('HSET', standby_entry, token, cjson.encode({id = id, entry = entry_json, promoted = now}))
      redis.call('HINCRBY', stats, 'standbys_promoted', 1)
      promoted[#promoted + 1] = token
      promoted[#promoted + 1] = id
      promoted[#promoted + 1] = entry_json
      missing = missing - 1
    end
  end
end
if redis.call('EXISTS', queue) == 0 then
  redis.call('DEL', rate_parked)  -- nothing parked: no count can be off
end
return {'OK', now, handed, reclaimed, promoted}
