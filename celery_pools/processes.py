"""Which operating-system process is which: a pid, when that process started, and whether it is
being ended.

A pid names a process only while it lives; a restarted container on the same hostname counts
its pids the same way again. A slot's holder record keeps, beside hostname and pid, when its
process started (the kernel's count, in clock ticks since the host booted), so that a worker
does not take a new process of the same pid for the dead one that took the slot.
"""

from __future__ import annotations

import os

from billiard import common as billiard_common

__all__ = ["being_terminated", "own_start", "process_start"]

# This process's start, read once per process (a forked child reads its own).
_own: tuple[int, int | None] | None = None


def process_start(pid: int) -> int | None:
    """When process ``pid`` of this host started (``/proc/<pid>/stat``, field 22: clock ticks
    since boot); None where that cannot be read (no such process, no ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # The command name (field 2) is in parentheses and may hold any byte: count from
            # after its closing one, which is field 3.
            fields = stat.read().rsplit(b")", 1)[1].split()
        return int(fields[22 - 3])
    except (OSError, IndexError, ValueError):
        return None


def own_start() -> int | None:
    """When this process started (as :func:`process_start`), read once per process."""
    global _own  # noqa: PLW0603  (one value per process)
    pid = os.getpid()
    if _own is None or _own[0] != pid:
        _own = (pid, process_start(pid))
    return _own[1]


def being_terminated() -> bool:
    """Whether this process is being ended by a terminate signal: billiard's handler in a pool
    process (the SIGTERM of a hard time limit, a terminate, a cold shutdown) has fired and
    raised ``SystemExit`` so that ``finally`` blocks run before the process exits (a SIGKILL
    follows). False for a ``SystemExit`` that task code raised itself."""
    fired = getattr(billiard_common, "terminate_handler_fired", None)
    if fired is not None:
        return bool(fired())
    return bool(billiard_common._should_have_exited[0])  # billiard before 4.3
