-- acquire.lua: take a slot of the pool serving a connector instance (and a rate token, when the
-- instance has a rate limit), or register as a waiter. A task gets both or neither: no slot is held
-- while it waits for a token, and no token is spent while no slot is free.
--
-- The Redis server's clock decides every lease, deadline and rate decision. Holders whose lease has
-- lapsed are reclaimed first, and abandoned slots whose grace ended are freed (lib/lapsed.lua);
-- until then an abandoned slot counts as in use. One execution per slot: the execution that holds
-- a slot keeps it when it asks again (no second slot, no second rate token), and another
-- execution of the same task id (its message delivered again while the first still runs) waits
-- until the first gives the slot back. Rate limits use GCRA (lib/gcra.lua).
--
-- Stats fields read: hold_avg_ms (release.lua). Stats fields touched: acquired_immediate, acquired_waited, "acquired:<instance>", timeouts,
-- rate_timeouts, reclaimed, grants_lapsed, handoffs_returned, abandoned_expired, the wait-time
-- histogram "wait:*", as_usual_arrived (a call published as usual arrived: lib/reserve.lua);
-- "started" is set (ms) on the first event.
--
-- Reply: {"MOVED", now, pool} when another pool serves the instance ("" for none): call again with
-- that pool's keys. Otherwise
--   {status, now, first, limit, in_use, timeout, uid, reentrant, retry_ms, reason, {reclaimed}, granted}
-- with {reclaimed} the holders whose slots were taken back, {task id, holder JSON, ...}, and
-- granted when the slot was given to the task (ms): for a slot handed or granted to it, when the
-- hand-off, the standby's wake-up or the grant at publication gave it; else when it took it (a
-- repeat call of the execution that holds it answers what its first call did):
--   "OK"          the slot (and token) are taken; reentrant = 1 when the token already held it;
--                 reason "handoff" when it claimed a slot handed to it after waiting, "granted"
--                 when the slot was granted to it as it was published
--   "STALE"       a stale copy of a handed-off message: its hand-off lapsed (the task was handed
--                 its slot again, or ended by its deadline, a clear or a delete), or the task
--                 holds, or waits for, its slot under another hand-off id; this copy must not run
--   "UNASSIGNED"  the instance has no pool (its rate token, if it has a rate limit, is taken)
--   "FULL"        no free slot; with reason "countdown" the task is registered as a waiter until
--                 first + timeout, and retry_ms is when its turn is likely (its place among the
--                 waiters times the pool's mean hold time over its limit; 0 while unknown); with reason "handoff" it must park (park.lua). In hand-off mode
--                 a task also parks while older tasks are parked or stand by (FIFO). With reason
--                 "copy" another execution of the same task id holds its slot: this one waits by
--                 countdown, registered as a waiter whose wait starts now (first is now). With
--                 reason "standby" the task is a standby (lib/standby.lua): it blocks on its wake
--                 LIST for retry_ms at most, then asks again; with reason "requeued" its block
--                 ended and it went back to its place in the FIFO (its run ends, parked)
--   "RATE"        a slot is free but the rate limit or a pause says wait retry_ms; reason is "rate"
--                 or "paused"; nothing was taken. A task handed or granted a slot whose instance
--                 was paused or rate-limited since gives the slot back (the caller hands it on) and
--                 gets this answer (TIMEOUT past its deadline)
--   "TIMEOUT"     first + timeout has passed; reason is "pool", "rate" or "paused"
--   "CLEARED"     the pool was cleared after this task began to wait in it
--
-- Keys:
--   instances    {p}:instances               HASH instance -> pool name
--   held         {p}:held                    HASH task id -> pool name
--   rates        {p}:rates                   HASH instance -> encoded rate limit
--   rate_state   {p}:rate_state              HASH instance -> GCRA arrival time (ms)
--   paused       {p}:paused                  HASH instance -> paused until (ms)
--   config       {p}:pool:<name>             HASH limit, timeout (ms), uid, cleared, wait, reserve
--   holders      {p}:pool:<name>:holders     ZSET task id -> lease expiry (ms)
--   holder       {p}:pool:<name>:holder      HASH task id -> holder JSON
--   waiters      {p}:pool:<name>:waiters     ZSET task id -> deadline (ms)
--   waiter       {p}:pool:<name>:waiter      HASH task id -> waiter JSON
--   stats        {p}:pool:<name>:stats       HASH counters and histograms
--   queue        {p}:pool:<name>:queue       ZSET the hand-off FIFO
--   handoffs     {p}:pool:<name>:handoffs    HASH task id handed a slot -> entry
--   rate_parked  {p}:pool:<name>:rate_parked HASH instance -> its tasks parked
--   stale        {p}:stale                   ZSET hand-off ids that never run
--   abandoned         {p}:pool:<name>:abandoned          ZSET task id -> end of its grace (ms)
--   abandoned_holder  {p}:pool:<name>:abandoned_holder   HASH task id -> holder JSON
--   standby      {p}:pool:<name>:standby     ZSET standby task id -> place (us)
--   standby_entry  {p}:pool:<name>:standby_entry  HASH standby task id -> standby JSON
--   wake         {p}:pool:<name>:wake:       prefix of each standby's wake LIST
--   parked       {p}:pool:<name>:parked      HASH parked task id -> entry JSON
--
-- Arguments:
--   instance               the connector instance
--   believed               the pool the caller believes serves it ("" for none): its keys
--   token                  the task id
--   lease_ms               the holder's lease (ms)
--   first_ms               when the task first asked (ms, Redis clock); "" the first time
--   waited_uid             uid of the pool the task last waited in; "" if it has not
--   info                   holder JSON (task_name, instance, hostname, pid, started, thread:
--                          the execution asking; started tells a pid from a reused one);
--                          "since" added
--   bounds                 histogram bucket upper bounds (ms, ascending, comma-separated)
--   unassigned_timeout_ms  wait bound (ms) of an instance with no pool held back by its rate limit
--                          or a pause
--   wait                   how this task waits: "countdown", "handoff", "" (pool's mode)
--   handoff_id             the hand-off id its message carries ("" when none)
--   rate_parked_max        how many tasks of one rate-limited instance may be parked at a time:
--                          past that, a task that would park waits by countdown
--   standby_ms             how long this execution may block as a standby (ms)
--   stale_ms               how long the id of a standby sent back to the FIFO stays stale (ms)
--   handoff_lease_ms       the hand-off lease (ms) of a slot a standby takes
--   published_ms           when its producer published it as usual, kept a slot free for it
--                          (ms, Redis clock, as the producer reckons it); "" when not

-- include: lib/clock.lua
-- include: lib/execution.lua
-- include: lib/gcra.lua
-- include: lib/histogram.lua
-- include: lib/lapsed.lua
-- include: lib/standby.lua
-- include: lib/reserve.lua

local instances, held, rates, rate_state, paused, config, holders, holder, waiters, waiter, stats,
  queue, handoffs, rate_parked, stale, abandoned, abandoned_holder, standby, standby_entry,
  wake, parked = unpack(KEYS)
local instance, believed, token, lease_ms, first_ms, waited_uid, info, bounds,
  unassigned_timeout_ms, wait, handoff_id, rate_parked_max, standby_ms, stale_ms,
  handoff_lease_ms, published_ms = unpack(ARGV)

local now = redis_clock()
local actual = redis.call('HGET', instances, instance) or ''
if actual ~= believed then
  return {'MOVED', now, actual}
end
local first = tonumber(first_ms) or now
local lease = tonumber(lease_ms)

-- How long the rate limit or a pause holds this call back (0: it may go). Takes the token,
-- unless `rated` says the call has it already (a hand-off took it).
local function hold_back(rated)
  local until_ms = tonumber(redis.call('HGET', paused, instance) or '')
  if until_ms then
    if until_ms > now then
      return math.ceil(until_ms - now), 'paused'
    end
    redis.call('HDEL', paused, instance)
  end
  local spec = not rated and redis.call('HGET', rates, instance)
  if not spec then
    return 0, ''
  end
  local retry = take_rate_token(rate_state, instance, spec, now)
  return retry, retry > 0 and 'rate' or ''
end

local reclaimed = {}
local granted = now
local function reply(status, limit, in_use, timeout, uid, reentrant, retry, reason)
  return {status, now, first, limit, in_use, timeout, uid, reentrant, retry, reason, reclaimed, granted}
end

-- A copy of a message whose hand-off lapsed never runs, whenever it arrives and wherever the
-- instance's pool is now: the task was handed its slot again, or ended, under another message.
-- (Unless the task holds its slot under that very id: hand-off ids start over in a pool deleted
-- and created again.)
if handoff_id ~= '' and redis.call('ZSCORE', stale, handoff_id) then
  local mine = actual ~= '' and redis.call('HGET', holder, token)
  local holding = mine and cjson.decode(mine) or {}
  if holding['handoff'] ~= handoff_id and holding['claimed'] ~= handoff_id then
    return reply('STALE', 0, 0, 0, '', 0, 0, '')
  end
end

if actual == '' then
  local timeout = tonumber(unassigned_timeout_ms)
  local retry, reason = hold_back()
  if retry == 0 then
    return reply('UNASSIGNED', 0, 0, timeout, '', 0, 0, '')
  end
  if now >= first + timeout then
    return reply('TIMEOUT', 0, 0, timeout, '', 0, retry, reason)
  end
  return reply('RATE', 0, 0, timeout, '', 0, retry, reason)
end

local cfg = redis.call('HMGET', config, 'limit', 'timeout', 'uid', 'cleared', 'wait')
if not cfg[1] then
  return {'MOVED', now, ''}
end
local limit = tonumber(cfg[1])
local timeout = tonumber(cfg[2])
local uid = cfg[3]
local cleared = tonumber(cfg[4] or '')
local mode = wait ~= '' and wait or (cfg[5] or 'countdown')
if mode == 'handoff' and redis.call('HEXISTS', paused, instance) == 1 then
  -- A paused instance waits by countdown: its next chance is known in time. (A rate-limited
  -- one parks: a hand-off takes its rate token, in FIFO order among the tokens that are due.)
  mode = 'countdown'
end
-- Enough tasks of this rate-limited instance are parked already (they keep the pool's FIFO short
-- to scan, handoff.lua): this one keeps to the FIFO but waits by countdown if it must wait.
local overflow = mode == 'handoff' and redis.call('HEXISTS', rates, instance) == 1
  and tonumber(redis.call('HGET', rate_parked, instance) or '0') >= tonumber(rate_parked_max)

-- A task that holds a slot (handed or granted to it, or its own from an earlier delivery) is no
-- longer waiting: a clear keeps it, as it keeps every holder unless asked to release them.
-- (A standby now was promoted after the clear: a hand-off the clear kept, requeued since.)
if cleared and waited_uid == uid and first <= cleared
    and not redis.call('ZSCORE', holders, token) and not redis.call('ZSCORE', standby, token) then
  redis.call('ZREM', waiters, token)
  redis.call('HDEL', waiter, token)
  return reply('CLEARED', limit, 0, timeout, uid, 0, 0, '')
end

redis.call('HSETNX', stats, 'started', now)
reclaimed = sweep_lapsed(
  {held = held, holders = holders, holder = holder, handoffs = handoffs, stats = stats},
  actual, now)
sweep_abandoned({abandoned = abandoned, abandoned_holder = abandoned_holder, stats = stats}, now)
-- Forget waiters a minute past their deadline: their task is gone (revoked, purged, lost).
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', waiters, '-inf', now - 60000, 'LIMIT', 0, 100)) do
  redis.call('ZREM', waiters, gone)
  redis.call('HDEL', waiter, gone)
end

local deadline = first + timeout
local function give_up(reason)
  redis.call('ZREM', waiters, token)
  redis.call('HDEL', waiter, token)
  redis.call('HINCRBY', stats, 'timeouts', 1)
  if reason ~= 'pool' then
    redis.call('HINCRBY', stats, 'rate_timeouts', 1)
  end
end
local function wait_here()
  redis.call('ZADD', waiters, deadline, token)
  if redis.call('HEXISTS', waiter, token) == 0 then
    local waiting = cjson.decode(info)
    waiting['since'] = first
    redis.call('HSET', waiter, token, cjson.encode(waiting))
  end
end
-- The holder JSON of a slot taken now.
local function holding_now()
  local taking = cjson.decode(info)
  taking['since'] = now
  return taking
end

local in_use = redis.call('ZCARD', holders) + redis.call('ZCARD', abandoned)
if handoff_id ~= '' and redis.call('ZSCORE', standby, token) then
  -- A standby's message (lib/standby.lua): it takes a free slot, or blocks until one is handed
  -- to it; asking again when its block ended (nothing handed), it goes back to the FIFO.
  local record = cjson.decode(redis.call('HGET', standby_entry, token))
  if record['id'] ~= handoff_id then
    return reply('STALE', limit, in_use, timeout, uid, 0, 0, '')
  end
  local k = {
    held = held, holders = holders, holder = holder, waiters = waiters, waiter = waiter,
    stats = stats, queue = queue, parked = parked, handoffs = handoffs, stale = stale,
    standby = standby, standby_entry = standby_entry, wake = wake,
  }
  local asking = cjson.decode(info)
  local blocked_here = record['ready'] and same_execution(record, asking)
  if now >= deadline then
    forget_standby(k, token)
    redis.call('DEL', wake .. token)
    redis.call('ZADD', stale, now + tonumber(stale_ms), handoff_id)  -- no other copy runs
    give_up('pool')
    return reply('TIMEOUT', limit, in_use, timeout, uid, 0, 0, 'pool')
  end
  -- A free slot (the pool grew, a slot came free without a hand-off yet) goes to the oldest in
  -- line: this standby takes it only if nobody came before it, and not one kept for a call
  -- published as usual on its way (lib/reserve.lua).
  local head = redis.call('ZRANGE', queue, 0, 0, 'WITHSCORES')
  local place = redis.call('ZSCORE', standby, token)
  local oldest = redis.call('ZRANGE', standby, 0, 0)[1] == token
    and (#head == 0 or tonumber(head[2]) >= tonumber(place))
  if in_use + kept(config, stats, now) < limit and oldest then
    to_handoff(k, token, actual, now, tonumber(handoff_lease_ms))  -- claimed just below
    redis.call('DEL', wake .. token)
  elseif blocked_here then  -- it asks again after its block, nothing handed to it
    to_fifo(k, token, now, tonumber(stale_ms))
    return reply('FULL', limit, in_use, timeout, uid, 0, 0, 'requeued')
  elseif record['ready'] and now <= tonumber(record['until']) then
    -- Another execution of this message blocks for it now: this copy never runs (the sweep
    -- sends the standby back to the FIFO if that execution died).
    return reply('STALE', limit, in_use, timeout, uid, 0, 0, '')
  else
    if not record['ready'] then
      average(stats, 'standby_latency_avg_ms', now - tonumber(record['promoted']))
    end
    -- Blocked here now (a copy of its message delivered after the first one's block ended
    -- takes over: the first one, if it still runs, finds the slot claimed, or its message
    -- stale, and never runs its body). A wake-up left from an earlier block is dropped.
    redis.call('DEL', wake .. token)
    record['ready'], record['until'] = now, now + tonumber(standby_ms)
    name_execution(record, asking)
    redis.call('HSET', standby_entry, token, cjson.encode(record))
    return reply('FULL', limit, in_use, timeout, uid, 0, tonumber(standby_ms), 'standby')
  end
end
if redis.call('ZSCORE', holders, token) then
  local holding = cjson.decode(redis.call('HGET', holder, token) or '{}')
  if holding['handoff'] then
    -- A slot granted at publication has one message, which claims it even without the grant's
    -- id (the producer lost Redis's answer and published it as usual); a parked task's copies
    -- other than the one published with its hand-off are stale.
    if holding['handoff'] ~= handoff_id and not holding['direct'] then
      return reply('STALE', limit, in_use, timeout, uid, 0, 0, '')
    end
    -- Paused, or rate-limited, since it was parked or granted (a hand-off that took its rate
    -- token says so): it gives the slot back (the caller hands it to the next parked task) and
    -- waits by countdown until the pause ends or its token is due, then asks again.
    local retry, reason = hold_back(holding['rated'])
    if retry > 0 then
      redis.call('ZREM', holders, token)
      redis.call('HDEL', holder, token)
      redis.call('HDEL', handoffs, token)
      redis.call('HINCRBY', stats, 'handoffs_returned', 1)
      if redis.call('HGET', held, token) == actual then
        redis.call('HDEL', held, token)
      end
      if now >= deadline then
        give_up(reason)
        return reply('TIMEOUT', limit, in_use - 1, timeout, uid, 0, retry, reason)
      end
      wait_here()
      if handoff_id ~= '' then
        -- Copies under an earlier hand-off id stay stale while it waits (see below).
        local waiting = cjson.decode(redis.call('HGET', waiter, token))
        waiting['returned'] = handoff_id
        redis.call('HSET', waiter, token, cjson.encode(waiting))
      end
      return reply('RATE', limit, in_use - 1, timeout, uid, 0, retry, reason)
    end
    -- Claim the slot handed to this task; remember under which hand-off id, so that the same
    -- message delivered again is known from a stale copy.
    granted = tonumber(holding['since']) or now
    local claimed = holding_now()
    claimed['claimed'] = handoff_id
    claimed['granted'] = granted
    redis.call('DEL', wake .. token)  -- a standby woken just after its block ended
    redis.call('ZADD', holders, now + lease, token)
    redis.call('HSET', holder, token, cjson.encode(claimed))
    redis.call('HDEL', handoffs, token)
    -- Handed a slot as it was published, nobody waiting before it: it did not wait.
    redis.call('HINCRBY', stats, holding['immediate'] and 'acquired_immediate' or 'acquired_waited', 1)
    redis.call('HINCRBY', stats, 'acquired:' .. instance, 1)
    observe(stats, 'wait', now - first, bounds)
    return reply('OK', limit, in_use, timeout, uid, 0, 0, holding['direct'] and 'granted' or 'handoff')
  end
  -- Claimed already: a copy under an earlier hand-off id is stale; the claimed message itself,
  -- delivered again (a worker died running it, acks_late), takes no second slot, as any
  -- redelivered message.
  if handoff_id ~= '' and handoff_id ~= holding['claimed'] then
    return reply('STALE', limit, in_use, timeout, uid, 0, 0, '')
  end
  -- One execution per slot. The execution that holds it asking again (Celery runs an eager
  -- task's retry inside the first run) keeps it. Any other execution of this task id (its
  -- message delivered again past the broker's visibility timeout, or by a worker that died
  -- running it) is a copy: it waits by countdown, as a new request, until the slot is given
  -- back, its lease lapses or it is abandoned (abandon.lua), then asks under the usual rules.
  if not same_execution(holding, cjson.decode(info)) then
    first, deadline = now, now + timeout
    wait_here()
    return reply('FULL', limit, in_use, timeout, uid, 0, 0, 'copy')
  end
  redis.call('ZADD', holders, now + lease, token)
  granted = tonumber(holding['granted'] or holding['since']) or now
  return reply('OK', limit, in_use, timeout, uid, 1, 0, '')
end
if redis.call('ZSCORE', queue, token) or redis.call('ZSCORE', standby, token) then
  return reply('STALE', limit, in_use, timeout, uid, 0, 0, '')
end
if handoff_id ~= '' then
  -- It gave back a slot handed to it under hand-off id "returned", or ("*") was sent back from
  -- the FIFO, its instance paused, and now waits by countdown (its own messages carry no id): a
  -- message under another id is a stale copy.
  local waiting = redis.call('HGET', waiter, token)
  local returned = waiting and cjson.decode(waiting)['returned']
  if returned and (returned == '*' or returned ~= handoff_id) then
    return reply('STALE', limit, in_use, timeout, uid, 0, 0, '')
  end
end
local queued = mode == 'handoff' and redis.call('ZCARD', queue) + redis.call('ZCARD', standby) or 0
if first_ms == '' and published_ms ~= '' then
  -- A call published as usual has arrived: its producer keeps a slot for it no more.
  redis.call('HINCRBY', stats, 'as_usual_arrived', 1)
  if queued > 0 then
    -- Published before anyone now in line asked: it is older than all of them, so a free slot
    -- (kept for it by park.lua's reserve) is its own.
    local place = tonumber(published_ms) * 1000
    local head = redis.call('ZRANGE', queue, 0, 0, 'WITHSCORES')
    local oldest = redis.call('ZRANGE', standby, 0, 0, 'WITHSCORES')
    if (#head == 0 or place < tonumber(head[2])) and (#oldest == 0 or place < tonumber(oldest[2])) then
      queued = 0
    end
  end
end

if in_use < limit and queued == 0 then
  local retry, reason = hold_back()
  if retry == 0 then
    redis.call('ZADD', holders, now + lease, token)
    redis.call('HSET', holder, token, cjson.encode(holding_now()))
    redis.call('HSET', held, token, actual)
    redis.call('ZREM', waiters, token)
    redis.call('HDEL', waiter, token)
    redis.call('HINCRBY', stats, first_ms == '' and 'acquired_immediate' or 'acquired_waited', 1)
    redis.call('HINCRBY', stats, 'acquired:' .. instance, 1)
    observe(stats, 'wait', now - first, bounds)
    return reply('OK', limit, in_use + 1, timeout, uid, 0, 0, '')
  end
  if now >= deadline then
    give_up(reason)
    return reply('TIMEOUT', limit, in_use, timeout, uid, 0, retry, reason)
  end
  wait_here()
  return reply('RATE', limit, in_use, timeout, uid, 0, retry, reason)
end

if now >= deadline then
  give_up('pool')
  return reply('TIMEOUT', limit, in_use, timeout, uid, 0, 0, 'pool')
end
if mode == 'handoff' and not overflow then
  return reply('FULL', limit, in_use, timeout, uid, 0, 0, 'handoff')
end
wait_here()
-- When this waiter's turn is likely, in ms from now: a slot frees about every hold / limit ms
-- (the pool's moving-average hold time), and `rank` waiters are ahead of it. 0 (unknown) while
-- no hold was measured: the caller backs off.
local turn = 0
local hold = tonumber(redis.call('HGET', stats, 'hold_avg_ms') or '')
if hold then
  turn = math.floor(hold * (redis.call('ZRANK', waiters, token) + 1) / math.max(limit, 1))
end
return reply('FULL', limit, in_use, timeout, uid, 0, turn, 'countdown')
