--[[
release.lua: give back a task's slot (and drop its waiter entry, if any). Idempotent, and only
ever touches the caller's own token.

KEYS[1]  {p}:held                   HASH task id -> pool name
KEYS[2]  {p}:pool:<name>:holders    ZSET task id -> lease expiry (ms)
KEYS[3]  {p}:pool:<name>:holder     HASH task id -> holder JSON
KEYS[4]  {p}:pool:<name>:waiters    ZSET task id -> deadline (ms)
KEYS[5]  {p}:pool:<name>:waiter     HASH task id -> waiter JSON

ARGV[1]  token: the task id
ARGV[2]  pool name

Returns {released, now, holder JSON or ""}: released is 1 when a slot was given back, else 0.
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
return {released, now, info}
