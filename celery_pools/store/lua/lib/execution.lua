-- lib/execution.lua: a piece, inlined where a script says "-- include: lib/execution.lua": which
-- execution of a task a record names. A task id may run more than once at a time (its message
-- delivered again past the broker's visibility timeout, or by a worker that died running it), so
-- a holder or standby record names the execution that wrote it: the worker's hostname, the
-- process's pid and start time (a pid used again by a later process is another execution), and
-- the thread or greenlet that asks.
--
-- same_execution(a, b): whether the decoded records `a` and `b` name the same execution.
-- name_execution(record, by): copy `by`'s execution fields into `record`.
local function same_execution(a, b)
  return a['hostname'] == b['hostname'] and a['pid'] == b['pid']
    and a['started'] == b['started'] and a['thread'] == b['thread']
end

local function name_execution(record, by)
  record['hostname'], record['pid'], record['started'], record['thread'] =
    by['hostname'], by['pid'], by['started'], by['thread']
end
