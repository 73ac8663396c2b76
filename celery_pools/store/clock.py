"""The Redis server's clock as this process last saw it."""

from __future__ import annotations

import threading
import time

__all__ = ["RedisClock"]


class RedisClock:
    """The last known offset between the Redis server's clock and this process's clock.

    Every script reply carries the server's clock; the store observes it, so that a caller that
    cannot reach Redis can still estimate how long it has waited on that clock.
    """

    def __init__(self) -> None:
        self.offset: float | None = None
        self._lock = threading.Lock()

    def observe(self, redis_now: float) -> None:
        """Record that the Redis clock read ``redis_now`` (Unix seconds) just now."""
        with self._lock:
            self.offset = redis_now - time.time()

    def estimate(self) -> float:
        """The Redis clock now, estimated from the last observation (local time if none)."""
        return time.time() + (self.offset or 0.0)

    def after_fork(self) -> None:
        """In a forked child: a lock of its own (the parent's may be held by a lost thread)."""
        self._lock = threading.Lock()
