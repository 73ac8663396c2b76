-- release.lua: give back a task's slot (and drop its waiter entry, if any). Idempotent, and only
-- ever touches the caller's own token. A task revoked after its hand-off, before its start, leaves
-- an entry in handoffs: it goes too. An execution that names itself gives back only a slot its
-- token holds as that execution: if the slot is another execution's now (its lease lapsed while
-- the body ran, and a copy of the task, or the task handed a slot again, took it), it is left
-- alone, or the next call would start beside the one still in flight.
--
-- Stats fields touched (when a slot is given back): released, the hold-time histogram "hold:*" and
-- its moving average hold_avg_ms (handoff.lua sizes standbys by it).
--
-- Reply: {status, now, holder JSON or "", parked}: status "RELEASED" when a slot was given back,
-- "NOT_HELD" when the token held none, "ELSEWHERE" when it holds one as another execution than
-- the one named (nothing changed; the holder JSON is that execution's); parked is how many tasks
-- wait in the hand-off FIFO or as standbys (the caller then runs handoff.lua).
--
-- Keys:
--   held      {p}:held                    HASH task id -> pool name
--   holders   {p}:pool:<name>:holders     ZSET task id -> lease expiry (ms)
--   holder    {p}:pool:<name>:holder      HASH task id -> holder JSON
--   waiters   {p}:pool:<name>:waiters     ZSET task id -> deadline (ms)
--   waiter    {p}:pool:<name>:waiter      HASH task id -> waiter JSON
--   stats     {p}:pool:<name>:stats       HASH counters and histograms
--   queue     {p}:pool:<name>:queue       ZSET the hand-off FIFO
--   handoffs  {p}:pool:<name>:handoffs    HASH task id handed a slot -> entry
--   standby   {p}:pool:<name>:standby     ZSET standby task id -> place (us)
--
-- Arguments:
--   token      the task id
--   pool       the pool's name
--   bounds     histogram bucket upper bounds (ms, ascending, comma-separated)
--   execution  JSON {hostname, pid, started, thread} of the execution giving the slot back, as
--              its acquire named it (lib/execution.lua); "" gives it back whoever holds it

-- include: lib/clock.lua
-- include: lib/execution.lua
-- include: lib/histogram.lua
-- include: lib/giving.lua

local held, holders, holder, waiters, waiter, stats, queue, handoffs, standby = unpack(KEYS)
local token, pool, bounds, execution = unpack(ARGV)

local now = redis_clock()
local function parked()
  return redis.call('ZCARD', queue) + redis.call('ZCARD', standby)
end
local holding = redis.call('HGET', holder, token)
local record = holding and cjson.decode(holding)
if record and execution ~= '' and not same_execution(record, cjson.decode(execution)) then
  return {'ELSEWHERE', now, holding, parked()}
end
local info, released = give_back({
  held = held, holders = holders, holder = holder, waiters = waiters, waiter = waiter,
  handoffs = handoffs,
}, token, pool)
if released == 1 and record then
  local held_ms = now - (tonumber(record['since']) or now)
  observe(stats, 'hold', held_ms, bounds)
  average(stats, 'hold_avg_ms', held_ms)
  redis.call('HINCRBY', stats, 'released', 1)
end
return {released == 1 and 'RELEASED' or 'NOT_HELD', now, info, parked()}
