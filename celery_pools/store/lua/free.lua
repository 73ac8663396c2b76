-- free.lua: an operator frees an abandoned slot before its grace ends (abandon.lua): the call its
-- task made is known to be over. Only ever touches that token's abandoned slot: a slot the same
-- task id holds now (a copy of it, running) is left alone.
--
-- Stats fields touched: abandoned_released.
--
-- Reply: {status, now, holder JSON or "", parked}: status "FREED" when the abandoned slot was
-- freed, "NOT_ABANDONED" when the token has none in this pool; parked is how many tasks wait in
-- the hand-off FIFO (the caller then runs handoff.lua).
--
-- Keys:
--   abandoned         {p}:pool:<name>:abandoned          ZSET task id -> end of its grace (ms)
--   abandoned_holder  {p}:pool:<name>:abandoned_holder   HASH task id -> holder JSON
--   stats             {p}:pool:<name>:stats              HASH counters and histograms
--   queue             {p}:pool:<name>:queue              ZSET the hand-off FIFO
--   standby           {p}:pool:<name>:standby            ZSET standby task id -> place (us)
--
-- Arguments:
--   token  the task id

-- include: lib/clock.lua

local abandoned, abandoned_holder, stats, queue, standby = unpack(KEYS)
local token = unpack(ARGV)

local now = redis_clock()
local info = redis.call('HGET', abandoned_holder, token) or ''
local freed = redis.call('ZREM', abandoned, token)
redis.call('HDEL', abandoned_holder, token)
if freed == 0 then
  return {'NOT_ABANDONED', now, '', redis.call('ZCARD', queue) + redis.call('ZCARD', standby)}
end
redis.call('HINCRBY', stats, 'abandoned_released', 1)
return {'FREED', now, info, redis.call('ZCARD', queue) + redis.call('ZCARD', standby)}
