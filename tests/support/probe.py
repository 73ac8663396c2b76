"""An independent concurrency counter for tasks, kept in plain Redis keys.

It shares no code with ``celery_pools``: tasks call :meth:`ConcurrencyProbe.enter`
and :meth:`ConcurrencyProbe.exit` (or use :meth:`ConcurrencyProbe.track`), and
tests read back the highest number of tasks that were running at once and when
each one started, all timed by the Redis server's clock (``TIME``) so that
samples from several worker processes compare directly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import redis

__all__ = ["ConcurrencyProbe"]

# One atomic step per enter/exit so that the counter, its sample and the event
# list always agree, even if the caller is SIGKILLed right after. TIME's seconds
# and microseconds are stored as the strings Redis returns: Lua's cjson prints
# numbers with 14 significant digits, which would drop the microseconds.
_ENTER = """
local n = redis.call('INCR', KEYS[1])
local t = redis.call('TIME')
redis.call('RPUSH', KEYS[2], n)
redis.call('RPUSH', KEYS[3], cjson.encode({ARGV[1], t[1], t[2]}))
redis.call('RPUSH', KEYS[4], cjson.encode({'start', ARGV[1], t[1], t[2], n}))
return n
"""
_EXIT = """
local n = redis.call('DECR', KEYS[1])
local t = redis.call('TIME')
redis.call('RPUSH', KEYS[2], cjson.encode({'end', ARGV[1], t[1], t[2], n}))
return n
"""


def _seconds(sec: str, usec: str) -> float:
    """Combine Redis ``TIME`` parts into float seconds."""
    return int(sec) + int(usec) / 1e6


class ConcurrencyProbe:
    """Count how many holders are inside a section at once, across processes."""

    def __init__(self, client: redis.Redis, name: str) -> None:
        """Use ``client`` and the keys ``probe:{name}:*``."""
        self.client = client
        self.name = name
        prefix = f"probe:{name}"
        self.running_key = f"{prefix}:running"
        self.samples_key = f"{prefix}:samples"
        self.starts_key = f"{prefix}:starts"
        self.events_key = f"{prefix}:events"
        self._enter = client.register_script(_ENTER)
        self._exit = client.register_script(_EXIT)

    def enter(self, label: str) -> int:
        """Record a start of ``label``; return how many are now running."""
        keys = [self.running_key, self.samples_key, self.starts_key, self.events_key]
        return int(self._enter(keys=keys, args=[label]))

    def exit(self, label: str) -> int:
        """Record an end of ``label``; return how many are still running."""
        return int(self._exit(keys=[self.running_key, self.events_key], args=[label]))

    @contextmanager
    def track(self, label: str) -> Iterator[int]:
        """``enter(label)`` for the duration of a ``with`` block; yields the count."""
        count = self.enter(label)
        try:
            yield count
        finally:
            self.exit(label)

    def max_concurrency(self) -> int:
        """Highest number of holders seen at once (0 if none ever entered)."""
        return max((int(v) for v in self.client.lrange(self.samples_key, 0, -1)), default=0)

    def starts(self) -> list[tuple[str, float]]:
        """``(label, start time in seconds)`` for each enter, in order."""
        rows = [json.loads(raw) for raw in self.client.lrange(self.starts_key, 0, -1)]
        return [(str(label), _seconds(sec, usec)) for label, sec, usec in rows]

    def events(self) -> list[tuple[str, str, float, int]]:
        """``(kind, label, seconds, running after)`` in order; kind is start/end."""
        rows = [json.loads(raw) for raw in self.client.lrange(self.events_key, 0, -1)]
        return [
            (str(kind), str(label), _seconds(sec, usec), int(n))
            for kind, label, sec, usec, n in rows
        ]

    def count(self) -> int:
        """Number of enters recorded."""
        return int(self.client.llen(self.starts_key))

    def current(self) -> int:
        """Number of holders inside right now (per the counter)."""
        return int(self.client.get(self.running_key) or 0)

    def reset(self) -> None:
        """Delete this probe's keys."""
        self.client.delete(self.running_key, self.samples_key, self.starts_key, self.events_key)
