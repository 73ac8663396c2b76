-- renew.lua: extend the leases of slots that are still held. A slot that was already released or
-- reclaimed is not brought back.
--
-- Reply: {"OK", now, renewed}: how many leases were extended.
--
-- Keys:
--   holders  {p}:pool:<name>:holders     ZSET task id -> lease expiry (ms), one per token
--
-- Arguments:
--   lease_ms  the holders' lease (ms)
--   ...       the tokens (task ids), in the order of the keys

-- include: lib/clock.lua

local holders = KEYS
local lease_ms = ARGV[1]

local now = redis_clock()
local expiry = now + tonumber(lease_ms)
local renewed = 0
for i, key in ipairs(holders) do
  renewed = renewed + redis.call('ZADD', key, 'XX', 'CH', expiry, ARGV[i + 1])  -- its token
end
return {'OK', now, renewed}
