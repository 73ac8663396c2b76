"""``python-redis-lock``: a lock (a limit of 1) that blocks in ``BLPOP`` on a signal key.

Its README (https://python-redis-lock.readthedocs.io/en/latest/readme.html#usage):
``with redis_lock.Lock(conn, name, expire=60, auto_renewal=True):`` blocks until the lock is
free; ``auto_renewal`` keeps it while held. ``expire`` is the lease every peer gets.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis
import redis_lock

from bench.peers.base import SlotPeer

__all__ = ["Mutex"]


class Mutex(SlotPeer):
    """A blocking lock; only a limit of 1."""

    @contextmanager
    def slot(self, client: redis.Redis, key: str, limit: int, lease: float) -> Iterator[None]:
        if limit != 1:
            raise ValueError(f"python-redis-lock is a lock: limit must be 1, not {limit}")
        expire = max(1, round(lease))
        lock = redis_lock.Lock(client, f"mutex:{key}", expire=expire, auto_renewal=True)
        with lock:
            yield
