--[[
ungrant.lua: take back a slot granted at publication (park.lua, answer -4) whose message could
not be published (the broker refused it, the call could not be serialized): the slot is free again
at once rather than when the grant's lease lapses. Only the grant itself is touched: nothing
happens once the task has claimed the slot, or when the id holds it otherwise.

KEYS[1]  {p}:held                   HASH task id -> pool name
KEYS[2]  {p}:pool:<name>:holders    ZSET task id -> lease expiry (ms)
KEYS[3]  {p}:pool:<name>:holder     HASH task id -> holder JSON (a grant: "direct", "handoff" id)
KEYS[4]  {p}:pool:<name>:stats      HASH counters: grants_withdrawn

ARGV[1]  token: the task id
ARGV[2]  the grant's hand-off id
ARGV[3]  pool name

Returns 1 when the grant was taken back, else 0. The caller runs handoff.lua right after
(pipelined), so the slot goes to the oldest parked task, if any.
]]

local token = ARGV[1]
local info = redis.call('HGET', KEYS[3], token)
if not info then
  return 0
end
local held = cjson.decode(info)
if not held['direct'] or held['handoff'] ~= ARGV[2] then
  return 0
end
redis.call('ZREM', KEYS[2], token)
redis.call('HDEL', KEYS[3], token)
if redis.call('HGET', KEYS[1], token) == ARGV[3] then
  redis.call('HDEL', KEYS[1], token)
end
redis.call('HINCRBY', KEYS[4], 'grants_withdrawn', 1)
return 1
