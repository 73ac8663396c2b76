"""What the benchmark's tasks record, independently of the pool code, and how it is read back.

Every record is one Lua call on the benchmark's own Redis (never the pools' or the broker's
server), stamped with that server's ``TIME``, so events from every worker process share one
clock. Records of one run live under ``bench:<instance>:``, the run's connector instance:

- ``events``: ``s|<task id>|<sec>|<usec>|<running>`` when a body starts and ``e|...`` when it
  ends, ``running`` being the independent counter after the change;
- ``releases``: ``<task id>|<sec>|<usec>`` when the pool reports a slot released;
- ``acquired``: ``<task id>|<sec>|<usec>|<waited>|<first>|<granted>`` for a slot the pool
  reported taken, recorded with its release (``first``: when the task first asked, ``granted``:
  when the pool gave it the slot, as the pool's signal says; each empty if it does not say);
- ``done`` and ``last``: bodies finished, and when the last one finished;
- ``waits``: times the pool reported a task waiting; ``failed``: failed tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

__all__ = ["Acquired", "Event", "Recorder", "Release"]

_ENTER = """
local n = redis.call('INCR', KEYS[1])
local t = redis.call('TIME')
redis.call('RPUSH', KEYS[2], 's|' .. ARGV[1] .. '|' .. t[1] .. '|' .. t[2] .. '|' .. n)
return n
"""
_EXIT = """
local n = redis.call('DECR', KEYS[1])
local t = redis.call('TIME')
redis.call('RPUSH', KEYS[2], 'e|' .. ARGV[1] .. '|' .. t[1] .. '|' .. t[2] .. '|' .. n)
redis.call('INCR', KEYS[3])
redis.call('SET', KEYS[4], t[1] .. '|' .. t[2])
return n
"""
_STAMP = """
local t = redis.call('TIME')
redis.call('RPUSH', KEYS[1], ARGV[1] .. '|' .. t[1] .. '|' .. t[2] .. ARGV[2])
"""
_HELD = """
local t = redis.call('TIME')
local stamp = '|' .. t[1] .. '|' .. t[2]
redis.call('RPUSH', KEYS[1], ARGV[1] .. stamp)
redis.call('RPUSH', KEYS[2], ARGV[1] .. stamp .. ARGV[2])
"""
_DONE = """
redis.call('INCR', KEYS[1])
local t = redis.call('TIME')
redis.call('SET', KEYS[2], t[1] .. '|' .. t[2])
"""


def _seconds(sec: str, usec: str) -> float:
    return int(sec) + int(usec) / 1e6


@dataclass(frozen=True)
class Event:
    """A body started (``kind`` "s") or ended ("e"); ``running`` counts bodies running after."""

    kind: str
    task_id: str
    at: float
    running: int


@dataclass(frozen=True)
class Release:
    """The pool released ``task_id``'s slot at ``at`` (as its ``slot_released`` signal said)."""

    task_id: str
    at: float


@dataclass(frozen=True)
class Acquired:
    """The pool gave ``task_id`` a slot, ``waited`` seconds after it first asked
    (``first``, when the pool's signal says it) and granted at ``granted`` (the hand-off or
    wake-up of a slot handed to it, by the pools' Redis clock, when the signal says it); ``at``
    is when the record was stamped."""

    task_id: str
    at: float
    waited: float
    first: float | None = None
    granted: float | None = None

    @property
    def first_ask(self) -> float:
        """When the task first asked for a slot: as the pool recorded it (to the millisecond of
        the pools' Redis clock), else worked out from when this record was stamped, which holds
        for a record stamped as the slot was taken (this benchmark's are stamped at its release,
        and carry ``first``: celery-pools' signal always says it)."""
        return self.first if self.first is not None else self.at - self.waited


class Recorder:
    """Records of one run (one connector instance) on the benchmark's Redis."""

    def __init__(self, client: redis.Redis, instance: str) -> None:
        self.client = client
        self.instance = instance
        prefix = f"bench:{instance}"
        self.running_key = f"{prefix}:running"
        self.events_key = f"{prefix}:events"
        self.releases_key = f"{prefix}:releases"
        self.acquired_key = f"{prefix}:acquired"
        self.done_key = f"{prefix}:done"
        self.last_key = f"{prefix}:last"
        self.waits_key = f"{prefix}:waits"
        self.failed_key = f"{prefix}:failed"
        self._enter = client.register_script(_ENTER)
        self._exit = client.register_script(_EXIT)
        self._stamp = client.register_script(_STAMP)
        self._held = client.register_script(_HELD)
        self._done = client.register_script(_DONE)

    # -- written by the tasks ---------------------------------------------------------------

    def start(self, task_id: str) -> None:
        """A body starts."""
        self._enter(keys=[self.running_key, self.events_key], args=[task_id])

    def end(self, task_id: str) -> None:
        """A body ends."""
        keys = [self.running_key, self.events_key, self.done_key, self.last_key]
        self._exit(keys=keys, args=[task_id])

    def released(self, task_id: str) -> None:
        """The pool released this task's slot."""
        self._stamp(keys=[self.releases_key], args=[task_id, ""])

    def held(
        self, task_id: str, waited: float, first: float | None, granted: float | None = None
    ) -> None:
        """This task held a slot, which the pool granted it at ``granted`` and it took
        ``waited`` seconds after it first asked (at ``first``), and has now released: both
        records in one call, stamped now, once the slot is given back (so that recording the
        acquisition does not lie between a hand-off and the next body's start)."""
        keys = [self.releases_key, self.acquired_key]
        tail = "".join(f"|{'' if v is None else repr(v)}" for v in (waited, first, granted))
        self._held(keys=keys, args=[task_id, tail])

    def done(self) -> None:
        """A no-op body finished (no start/end events: they would weigh on a no-op)."""
        self._done(keys=[self.done_key, self.last_key])

    def waited(self) -> None:
        """The pool sent the task back to wait."""
        self.client.incr(self.waits_key)

    def failed(self) -> None:
        """The task failed."""
        self.client.incr(self.failed_key)

    # -- read by the driver -----------------------------------------------------------------

    def done_count(self) -> int:
        """Bodies finished so far."""
        return int(self.client.get(self.done_key) or 0)

    def failed_count(self) -> int:
        """Tasks failed so far."""
        return int(self.client.get(self.failed_key) or 0)

    def wait_count(self) -> int:
        """Times a task was sent back to wait."""
        return int(self.client.get(self.waits_key) or 0)

    def last_done(self) -> float | None:
        """When the last body finished (Redis clock), or None."""
        raw = self.client.get(self.last_key)
        if not raw:
            return None
        sec, usec = str(raw if isinstance(raw, str) else raw.decode()).split("|")
        return _seconds(sec, usec)

    def events(self) -> list[Event]:
        """Every start and end, in the order recorded."""
        rows = (line.split("|") for line in self._lines(self.events_key))
        return [Event(k, tid, _seconds(s, us), int(n)) for k, tid, s, us, n in rows]

    def releases(self) -> list[Release]:
        """Every release the pool reported, in the order recorded."""
        rows = (line.split("|") for line in self._lines(self.releases_key))
        return [Release(tid, _seconds(s, us)) for tid, s, us in rows]

    def acquisitions(self) -> list[Acquired]:
        """Every acquisition the pool reported, in the order recorded."""
        rows = (line.split("|") for line in self._lines(self.acquired_key))
        return [
            Acquired(tid, _seconds(s, us), float(w), *(float(v) if v else None for v in rest))
            for tid, s, us, w, *rest in rows
        ]

    def _lines(self, key: str) -> list[str]:
        return [v if isinstance(v, str) else v.decode() for v in self.client.lrange(key, 0, -1)]
