--[[
end_handoffs.lua: a piece included by clear.lua and delete.lua (scripts.py inlines it where a
script says "-- include: end_handoffs.lua"), not a script of its own.

end_handoffs(handing, holder, stale, expired, reason, pool, now, memory): end every task of a
pool that was handed a slot and has not started. Its message may be on its way, or may never be
(the releasing worker may have died before publishing it), so its entry goes to the expired LIST
with `reason` ("cleared", "deleted"), for a reaper to publish it to fail, and its hand-off id
(from its holder JSON) joins the stale ZSET until now + memory (ms), so that the message, if it
was published, never runs: the task fails once, whichever way it went. The handing HASH is left
for the caller to delete.
]]
local function end_handoffs(handing, holder, stale, expired, reason, pool, now, memory)
  local entries = redis.call('HGETALL', handing)
  for i = 1, #entries, 2 do
    local info = redis.call('HGET', holder, entries[i])
    local id = info and cjson.decode(info)['handoff']
    if id then
      redis.call('ZADD', stale, now + memory, id)
    end
    redis.call('RPUSH', expired, cjson.encode({reason = reason, pool = pool, entry = entries[i + 1]}))
  end
end
