--[[
renew.lua: extend the leases of slots that are still held. A slot that was already released or
reclaimed is not brought back.

KEYS[1..n]  {p}:pool:<name>:holders   ZSET task id -> lease expiry (ms), one per token
ARGV[1]     lease (ms)
ARGV[2..n+1] tokens (task ids), in the order of KEYS

Returns the number of leases extended.
]]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + tonumber(ARGV[1])
local renewed = 0
for i, key in ipairs(KEYS) do
  renewed = renewed + redis.call('ZADD', key, 'XX', 'CH', expiry, ARGV[i + 1])
end
return renewed
