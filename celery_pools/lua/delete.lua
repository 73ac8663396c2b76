--[[
delete.lua: delete a pool and every association to it. Running holders keep running (their
release becomes a no-op); waiters end with PoolDeletedError at their next attempt.

KEYS[1]  {p}:pools                      SET  pool names
KEYS[2]  {p}:instances                  HASH instance -> pool name
KEYS[3]  {p}:held                       HASH task id -> pool name
KEYS[4]  {p}:pool:<name>                HASH definition
KEYS[5]  {p}:pool:<name>:instances      SET  instances
KEYS[6]  {p}:pool:<name>:holders        ZSET holders
KEYS[7]  {p}:pool:<name>:holder         HASH holder JSON
KEYS[8]  {p}:pool:<name>:waiters        ZSET waiters
KEYS[9]  {p}:pool:<name>:waiter         HASH waiter JSON
KEYS[10] {p}:pool:<name>:stats          HASH counters and histograms
KEYS[11] {p}:pool:<name>:queue          ZSET parked task id -> place in line (us: first request)
KEYS[12] {p}:pool:<name>:parked         HASH parked task id -> entry JSON
KEYS[13] {p}:pool:<name>:handing        HASH handed-off task id -> entry JSON
KEYS[14] {p}:pool:<name>:rate_parked    HASH rate-limited instance -> its tasks parked
KEYS[15] {p}:expired                    LIST entries whose task must be published to fail
KEYS[16] {p}:stale                      ZSET hand-off ids whose message must never run

Parked tasks (hand-off mode) move to {p}:expired with reason "deleted": a worker's reaper
publishes them and they fail with PoolDeletedError. So do tasks handed a slot whose message may
or may not be on its way (the releasing worker may have died before publishing it): their
hand-off id joins {p}:stale, so that the message, if it was published, never runs, and the task
fails once, whichever way it went. A slot granted at publication has one message, published by
the producer: its task fails with PoolDeletedError when it starts (its pool is gone).

ARGV[1]  pool name
ARGV[2]  how long a hand-off id stays in {p}:stale (ms)

Returns {found, instances unassigned, holders, waiters}; found is 0 when there was no such pool.
]]

-- include: end_handoffs.lua

if redis.call('EXISTS', KEYS[4]) == 0 then
  return {0, 0, 0, 0}
end
local instances = redis.call('SMEMBERS', KEYS[5])
for _, instance in ipairs(instances) do
  if redis.call('HGET', KEYS[2], instance) == ARGV[1] then
    redis.call('HDEL', KEYS[2], instance)
  end
end
local holders = redis.call('ZRANGE', KEYS[6], 0, -1)
for _, holder in ipairs(holders) do
  if redis.call('HGET', KEYS[3], holder) == ARGV[1] then
    redis.call('HDEL', KEYS[3], holder)
  end
end
local waiters = redis.call('ZCARD', KEYS[8])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end_handoffs(KEYS[13], KEYS[7], KEYS[16], KEYS[15], 'deleted', ARGV[1], now, tonumber(ARGV[2]))
for _, token in ipairs(redis.call('ZRANGE', KEYS[11], 0, -1)) do
  local entry = redis.call('HGET', KEYS[12], token)
  if entry then
    redis.call('RPUSH', KEYS[15], cjson.encode({reason = 'deleted', pool = ARGV[1], entry = entry}))
  end
end
redis.call('DEL', KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11],
  KEYS[12], KEYS[13], KEYS[14])
redis.call('SREM', KEYS[1], ARGV[1])
return {1, #instances, #holders, waiters}
