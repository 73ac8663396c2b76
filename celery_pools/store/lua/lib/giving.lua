-- lib/giving.lua: a piece, inlined where a script says "-- include: lib/giving.lua".
--
-- give_back(k, token, pool): take `token`'s slot of `pool` away from it, with its waiter entry and
-- its hand-off entry (a task revoked after its hand-off, before its start). Only ever touches that
-- token's own entries. `k` holds the pool's keys: held, holders, holder, waiters, waiter,
-- handoffs. Returns the holder JSON ("" when none) and 1 when the token held a slot, else 0.
local function give_back(k, token, pool)
  local info = redis.call('HGET', k.holder, token) or ''
  local released = redis.call('ZREM', k.holders, token)
  redis.call('HDEL', k.holder, token)
  if redis.call('HGET', k.held, token) == pool then
    redis.call('HDEL', k.held, token)
  end
  redis.call('ZREM', k.waiters, token)
  redis.call('HDEL', k.waiter, token)
  redis.call('HDEL', k.handoffs, token)
  return info, released
end
