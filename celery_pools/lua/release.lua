--[[
release.lua: give back a task's slot (and drop its waiter entry, if any). Idempotent, and only
ever touches the caller's own token.

KEYS[1]  {p}:held                   HASH task id -> pool name
KEYS[2]  {p}:pool:<name>:holders    ZSET task id -> lease expiry (ms)
KEYS[3]  {p}:pool:<name>:holder     HASH task id -> holder JSON
KEYS[4]  {p}:pool:<name>:waiters    ZSET task id -> deadline (ms)
KEYS[5]  {p}:pool:<name>:waiter     HASH task id -> waiter JSON
KEYS[6]  {p}:pool:<name>:stats      HASH counters and histogram buckets
KEYS[7]  {p}:pool:<name>:queue      ZSET parked task id -> place in line (us): the hand-off FIFO
KEYS[8]  {p}:pool:<name>:handing    HASH task id handed a slot, not started -> entry JSON (a task
                                    revoked after its hand-off, before its start, leaves one)

ARGV[1]  token: the task id
ARGV[2]  pool name
ARGV[3]  histogram bucket upper bounds (ms, ascending, comma-separated)

Stats fields touched (when a slot is given back): the hold-time histogram "hold:<bucket index>"
(index #bounds is +Inf), "hold:sum" (ms), "hold:count"; "released".

Returns {released, now, holder JSON or "", parked}: released is 1 when a slot was given back,
else 0; parked is how many tasks wait in the hand-off FIFO (then run handoff.lua).
]]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local token = ARGV[1]

local info = redis.call('HGET', KEYS[3], token) or ''
local released = redis.call('ZREM', KEYS[2], token)
redis.call('HDEL', KEYS[3], token)
if redis.call('HGET', KEYS[1], token) == ARGV[2] then
  redis.call('HDEL', KEYS[1], token)
end
redis.call('ZREM', KEYS[4], token)
redis.call('HDEL', KEYS[5], token)
redis.call('HDEL', KEYS[8], token)
if released == 1 and info ~= '' then
  local ms = now - (tonumber(cjson.decode(info)['since']) or now)
  local index = 0
  for bound in string.gmatch(ARGV[3], '[^,]+') do
    if ms <= tonumber(bound) then break end
    index = index + 1
  end
  redis.call('HINCRBY', KEYS[6], 'hold:' .. index, 1)
  redis.call('HINCRBY', KEYS[6], 'hold:sum', ms)
  redis.call('HINCRBY', KEYS[6], 'hold:count', 1)
  redis.call('HINCRBY', KEYS[6], 'released', 1)
end
return {released, now, info, redis.call('ZCARD', KEYS[7])}
