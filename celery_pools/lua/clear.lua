--[[
clear.lua: drop every pending request of a pool. Tasks waiting in it end with PoolClearedError at
their next attempt (they began to wait before the recorded clear time). Holders keep their slots
unless ARGV[2] is "1".

KEYS[1]  {p}:held                   HASH task id -> pool name
KEYS[2]  {p}:pool:<name>            HASH ... cleared (ms)
KEYS[3]  {p}:pool:<name>:holders    ZSET task id -> lease expiry (ms)
KEYS[4]  {p}:pool:<name>:holder     HASH task id -> holder JSON
KEYS[5]  {p}:pool:<name>:waiters    ZSET task id -> deadline (ms)
KEYS[6]  {p}:pool:<name>:waiter     HASH task id -> waiter JSON
KEYS[7]  {p}:pool:<name>:stats      HASH counters: clears, cleared_waiters, cleared_holders
KEYS[8]  {p}:pool:<name>:queue      ZSET parked task id -> place in line (us: first request)
KEYS[9]  {p}:pool:<name>:parked     HASH parked task id -> entry JSON
KEYS[10] {p}:expired                LIST entries whose task must be published to fail
KEYS[11] {p}:pool:<name>:handing    HASH task id handed a slot, not started -> entry JSON
KEYS[12] {p}:stale                  ZSET hand-off ids whose message must never run
KEYS[13] {p}:pool:<name>:rate_parked HASH rate-limited instance -> its tasks parked in the FIFO

Parked tasks (hand-off mode) move to {p}:expired with reason "cleared": a worker's reaper
publishes them and they fail with PoolClearedError. A task handed a slot, whose message may be
on its way, holds that slot and keeps it unless held slots are released too: then it goes the
same way as a parked task, and its hand-off id joins {p}:stale, so that the message, if it was
published, never runs (the task fails once, whichever way it went).

ARGV[1]  pool name
ARGV[2]  "1" to release held slots too
ARGV[3]  how long a hand-off id stays in {p}:stale (ms)

Returns {found, waiters dropped, holders released}; found is 0 when the pool does not exist.
]]

-- include: end_handoffs.lua

if redis.call('EXISTS', KEYS[2]) == 0 then
  return {0, 0, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], 'cleared', now)
local waiters = redis.call('ZCARD', KEYS[5])
redis.call('DEL', KEYS[5], KEYS[6])
for _, token in ipairs(redis.call('ZRANGE', KEYS[8], 0, -1)) do
  local entry = redis.call('HGET', KEYS[9], token)
  if entry then
    redis.call('RPUSH', KEYS[10], cjson.encode({reason = 'cleared', pool = ARGV[1], entry = entry}))
  end
end
redis.call('DEL', KEYS[8], KEYS[9], KEYS[13])
local released = 0
if ARGV[2] == '1' then
  end_handoffs(KEYS[11], KEYS[4], KEYS[12], KEYS[10], 'cleared', ARGV[1], now, tonumber(ARGV[3]))
  redis.call('DEL', KEYS[11])
  for _, holder in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    if redis.call('HGET', KEYS[1], holder) == ARGV[1] then
      redis.call('HDEL', KEYS[1], holder)
    end
    released = released + 1
  end
  redis.call('DEL', KEYS[3], KEYS[4])
end
redis.call('HINCRBY', KEYS[7], 'clears', 1)
redis.call('HINCRBY', KEYS[7], 'cleared_waiters', waiters)
redis.call('HINCRBY', KEYS[7], 'cleared_holders', released)
return {1, waiters, released}
