"""Which operating-system process is which: a pid, and when that process started.

A pid names a process only while it lives; a restarted container on the same hostname counts
its pids the same way again. A slot's holder record keeps, beside hostname and pid, when its
process started (the kernel's count, in clock ticks since the host booted), so that a worker
does not take a new process of the same pid for the dead one that took the slot.
"""

from __future__ import annotations

import os

__all__ = ["own_start", "process_start"]

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
