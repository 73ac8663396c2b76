--[[
park.lua: park a task in its pool's hand-off FIFO. Its message waits here, not in the broker:
handoff.lua later gives the oldest parked task a slot and returns its message to be published.

KEYS[1]  {p}:pool:<name>            HASH limit, timeout (ms)
KEYS[2]  {p}:pool:<name>:waiters    ZSET task id -> deadline (ms)
KEYS[3]  {p}:pool:<name>:waiter     HASH task id -> waiter JSON
KEYS[4]  {p}:pool:<name>:queue      ZSET parked task id -> first request (ms)
KEYS[5]  {p}:pool:<name>:parked     HASH parked task id -> entry JSON

ARGV[1]  token: the task id
ARGV[2]  when the task first asked for a slot (ms, Redis clock)
ARGV[3]  entry JSON: {"info": {task_name, instance, ...}, "msg": <the serialized message>}; "first"
         is added

Returns the task's position in the FIFO (1 = next), 0 if it was parked already, -1 if the pool no
longer exists (the caller then tries again from the start).
]]

if redis.call('ZSCORE', KEYS[4], ARGV[1]) then
  return 0
end
local timeout = tonumber(redis.call('HGET', KEYS[1], 'timeout') or '')
if not timeout then
  return -1
end
local first = tonumber(ARGV[2])
local entry = cjson.decode(ARGV[3])
entry['first'] = first
redis.call('ZADD', KEYS[4], first, ARGV[1])
redis.call('HSET', KEYS[5], ARGV[1], cjson.encode(entry))
redis.call('ZADD', KEYS[2], first + timeout, ARGV[1])
local info = entry['info']
info['since'] = first
redis.call('HSET', KEYS[3], ARGV[1], cjson.encode(info))
return redis.call('ZRANK', KEYS[4], ARGV[1]) + 1
