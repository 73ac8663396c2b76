-- abandon.lua: a task's execution ended without its own code releasing its slot (its process was
-- killed, a hard time limit, revoke(terminate=True)): its call to the external system may still be
-- in flight, so its slot stays taken for a grace. The slot moves from the holders to the abandoned
-- slots until now + grace, when the next acquire or hand-off frees it (lib/lapsed.lua); until then
-- it counts as in use. A copy of the task (a redelivered message) is a new request: it waits for,
-- or takes, another slot. Every slot is given back at once when grace_ms is 0. What no
-- execution has taken up yet (a hand-off or a grant not claimed, a standby whose task has not
-- blocked) made no call; only a revoke of the message that carried its hand-off id gives it back
-- at once (unclaimed), and marks that id stale, so no other copy of the message runs:
-- any other ending leaves it alone, since the execution that ended may have sent its message on
-- (a retry while Redis was unreachable carries the same hand-off id) or be the one that parked
-- the task; a hand-off not taken up lapses and is handed out again (handoff.lua). Given a pid
-- and/or a hostname, it acts on a slot taken up only where that process and/or that worker
-- holds it (the caller saw that process's execution end; the same task id may hold a slot
-- elsewhere now, as a copy). With unclaimed (a task revoked before it started) it acts on
-- nothing taken up (pid and hostname are not used).
--
-- Stats fields touched: abandoned, released and the hold-time histogram "hold:*".
--
-- Reply: {status, now, holder JSON or "", parked, until}: status "ABANDONED" when the slot is kept
-- until `until` (ms), "RELEASED" when it was given back, "NOT_HELD" when the token held none,
-- "ELSEWHERE" when it holds one (or stands by) as an execution this ending does not name;
-- for a standby (lib/standby.lua), which holds no slot, "DROPPED" (revoked: it never runs) or
-- "REQUEUED" (back at its place in the FIFO); parked is how many tasks wait in the hand-off FIFO
-- or stand by (the caller then runs handoff.lua).
--
-- Keys:
--   held              {p}:held                           HASH task id -> pool name
--   holders           {p}:pool:<name>:holders            ZSET task id -> lease expiry (ms)
--   holder            {p}:pool:<name>:holder             HASH task id -> holder JSON
--   waiters           {p}:pool:<name>:waiters            ZSET task id -> deadline (ms)
--   waiter            {p}:pool:<name>:waiter             HASH task id -> waiter JSON
--   stats             {p}:pool:<name>:stats              HASH counters and histograms
--   queue             {p}:pool:<name>:queue              ZSET the hand-off FIFO
--   handoffs          {p}:pool:<name>:handoffs           HASH task id handed a slot -> entry
--   abandoned         {p}:pool:<name>:abandoned          ZSET task id -> end of its grace (ms)
--   abandoned_holder  {p}:pool:<name>:abandoned_holder   HASH task id -> holder JSON
--   standby           {p}:pool:<name>:standby            ZSET standby task id -> place (us)
--   standby_entry     {p}:pool:<name>:standby_entry      HASH standby task id -> standby JSON
--   wake              {p}:pool:<name>:wake:              prefix of each standby's wake LIST
--   parked            {p}:pool:<name>:parked             HASH parked task id -> entry JSON
--   stale             {p}:stale                          ZSET hand-off ids that never run
--
-- Arguments:
--   token     the task id
--   pool      the pool's name
--   grace_ms  how long the slot stays taken (ms); 0 gives it back at once
--   why       how the execution ended ("WorkerLostError", "TimeLimitExceeded", ...)
--   pid        the process whose execution ended ("" for any)
--   hostname   the worker it ran in ("" for any)
--   handoff    the hand-off id the revoked message carried ("" for none; only with unclaimed)
--   unclaimed  "1": only a slot or standby that no execution has taken up yet; "" for any
--   bounds    histogram bucket upper bounds (ms, ascending, comma-separated)
--   stale_ms  how long the id of a standby that ended or of a revoked hand-off stays stale (ms)

-- include: lib/clock.lua
-- include: lib/histogram.lua
-- include: lib/giving.lua
-- include: lib/standby.lua

local held, holders, holder, waiters, waiter, stats, queue, handoffs, abandoned,
  abandoned_holder, standby, standby_entry, wake, parked, stale = unpack(KEYS)
local token, pool, grace_ms, why, pid, hostname, handoff, unclaimed, bounds, stale_ms =
  unpack(ARGV)

-- Whether a record was handed over and not taken up by any execution yet: a hand-off or a grant
-- not claimed, a standby whose task has not blocked. No call runs under it.
local function untaken(record)
  return record['ready'] == nil and record['claimed'] == nil
    and (record['handoff'] ~= nil or record['id'] ~= nil)
end

local any_process = pid == '' and hostname == '' and unclaimed ~= '1'

-- Whether a holder or standby record is one this ending may act on: any, for an ending that
-- names no execution; one not taken up yet, if the message revoked carried its hand-off id;
-- else, unless unclaimed, the process whose execution ended, on its worker.
local function that_process(record)
  if any_process then
    return true
  elseif untaken(record) then
    return unclaimed == '1' and handoff ~= '' and (record['handoff'] or record['id']) == handoff
  end
  return unclaimed ~= '1' and (pid == '' or tostring(record['pid']) == pid)
    and (hostname == '' or record['hostname'] == hostname)
end

local now = redis_clock()
if redis.call('ZSCORE', standby, token) then
  -- A standby holds no slot and its body never ran: revoked, it never runs; its execution
  -- ended otherwise (its process died), it goes back to its place in the FIFO, to run once.
  local record = cjson.decode(redis.call('HGET', standby_entry, token))
  if not that_process(record) then
    return {'ELSEWHERE', now, '', 0, 0}
  end
  local k = {
    held = held, waiters = waiters, waiter = waiter, stats = stats, queue = queue,
    parked = parked, stale = stale, standby = standby, standby_entry = standby_entry, wake = wake,
  }
  if string.sub(why, 1, 6) == 'revoke' then
    drop_standby(k, token, now, tonumber(stale_ms))
    return {'DROPPED', now, '', 0, 0}
  end
  to_fifo(k, token, now, tonumber(stale_ms))
  return {'REQUEUED', now, '', redis.call('ZCARD', queue) + redis.call('ZCARD', standby), 0}
end
local info = redis.call('HGET', holder, token) or ''
if info == '' and not any_process and unclaimed ~= '1' then
  return {'NOT_HELD', now, '', 0, 0}  -- given back since; a waiter entry may be a copy's
end
if info ~= '' and not that_process(cjson.decode(info)) then
  return {'ELSEWHERE', now, '', 0, 0}
end
local claimed = redis.call('HEXISTS', handoffs, token) == 0
local grace = tonumber(grace_ms)
local released
info, released = give_back({
  held = held, holders = holders, holder = holder, waiters = waiters, waiter = waiter,
  handoffs = handoffs,
}, token, pool)
local waiting = redis.call('ZCARD', queue) + redis.call('ZCARD', standby)
if released == 0 then
  return {'NOT_HELD', now, '', waiting, 0}
end
local since = info ~= '' and tonumber(cjson.decode(info)['since']) or now
observe(stats, 'hold', now - since, bounds)
if not claimed or grace <= 0 then
  if unclaimed == '1' and handoff ~= '' then
    redis.call('ZADD', stale, now + tonumber(stale_ms), handoff)
  end
  redis.call('HINCRBY', stats, 'released', 1)
  return {'RELEASED', now, info, waiting, 0}
end
local kept = info ~= '' and cjson.decode(info) or {}
kept['abandoned'], kept['until'], kept['why'] = now, now + grace, why
info = cjson.encode(kept)
redis.call('ZADD', abandoned, now + grace, token)
redis.call('HSET', abandoned_holder, token, info)
redis.call('HINCRBY', stats, 'abandoned', 1)
return {'ABANDONED', now, info, waiting, now + grace}
