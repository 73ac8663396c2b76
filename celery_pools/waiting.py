"""How a task waits for a slot: its wait state (carried in a message header) and the backoff.

A task that finds its pool full is sent again with a countdown. What it needs to know on its next
attempt travels in the ``celery_pools`` header of the new message: when it first asked (Redis
clock), which pool it waited in, that pool's uid and timeout, how many attempts it made, the
ETA its first message had (a countdown's new message has another; the task runs with its own),
and when the new message is due on the Redis clock: Celery's ETA is the sending host's clock,
and the worker that receives it moves the ETA to its own (:func:`due_here`), so hosts whose
clocks disagree wait as long as the countdown says.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["HEADER", "WaitState", "due_here", "next_countdown"]

#: The message header carrying a waiting task's :class:`WaitState`.
HEADER = "celery_pools"


@dataclass(frozen=True)
class WaitState:
    """What a waiting task remembers between attempts. Times are Unix seconds, Redis clock."""

    first: float | None = None
    pool: str = ""
    uid: str = ""
    timeout: float | None = None
    attempts: int = 0
    handoff: str = ""
    fail: dict[str, Any] | None = None
    #: The ETA (ISO 8601) of the task's first message, "" for none: the ETA it runs with.
    eta: str = ""
    #: When this message is due (a countdown's end), on the Redis clock; None: not delayed.
    due: float | None = None
    #: When its producer published it as usual, the pool seen ample (Redis clock, as the
    #: producer reckoned it); None: not so published.
    published: float | None = None

    @classmethod
    def from_headers(cls, headers: Any) -> WaitState:
        """Read the state from a request's headers; missing or malformed means a fresh start."""
        raw = headers.get(HEADER) if isinstance(headers, dict) else None
        if not isinstance(raw, dict):
            return cls()
        try:
            first = raw.get("first")
            timeout = raw.get("timeout")
            fail = raw.get("fail")
            due = raw.get("due")
            published = raw.get("published")
            return cls(
                first=float(first) if first is not None else None,
                pool=str(raw.get("pool") or ""),
                uid=str(raw.get("uid") or ""),
                timeout=float(timeout) if timeout is not None else None,
                attempts=int(raw.get("attempts") or 0),
                handoff=str(raw.get("handoff") or ""),
                fail=dict(fail) if isinstance(fail, dict) else None,
                eta=str(raw.get("eta") or ""),
                due=float(due) if due is not None else None,
                published=float(published) if published is not None else None,
            )
        except (TypeError, ValueError):
            return cls()

    @property
    def waited(self) -> bool:
        """Whether the task waited before this execution (its message is not its first)."""
        return self.first is not None

    def to_header(self) -> dict[str, Any]:
        """The header value (JSON-, msgpack- and AMQP-table-safe)."""
        return {key: value for key, value in asdict(self).items() if value not in (None, "")}

    def next_attempt(self, **changes: Any) -> WaitState:
        """The state for the next attempt: one more attempt, with ``changes`` applied (and not
        due at any time until a countdown says so)."""
        return replace(self, attempts=self.attempts + 1, due=None, **changes)


def next_countdown(
    attempt: int,
    remaining: float,
    *,
    minimum: float,
    maximum: float,
    rng: random.Random | None = None,
) -> float:
    """Seconds until the next attempt: exponential backoff with jitter, never past the deadline.

    The cap doubles from ``minimum`` with each ``attempt`` up to ``maximum``; the countdown is drawn
    uniformly from the upper half of the cap ("equal jitter"), so waiters spread out without ever
    retrying in a tight loop. It never exceeds ``remaining`` (the time left before the deadline),
    so the last attempt lands on the deadline.
    """
    cap = min(maximum, minimum * (2 ** min(attempt, 32)))
    draw = (rng or random).uniform(cap / 2, cap)
    return max(0.0, min(draw, remaining))


def due_here(state: WaitState, redis_offset: float | None) -> float | None:
    """When ``state``'s message is due on this host's clock (Unix seconds), given the Redis
    clock's offset from it (``RedisClock.offset``); None when either is unknown."""
    if state.due is None or redis_offset is None:
        return None
    return state.due - redis_offset
