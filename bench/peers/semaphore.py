"""``redis-rate-limiters``' ``SyncSemaphore``: a list of N tokens, taken with ``BLPOP``.

Its README (https://github.com/otovo/redis-rate-limiters#semaphore):
``SyncSemaphore(name=..., capacity=N, max_sleep=30, expiry=30, connection=Redis(...))`` used as
``with semaphore:``; it blocks until a token is free and raises ``MaxSleepExceededError`` after
``max_sleep`` seconds (then the task retries). ``expiry`` is the lease every peer gets.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis
from limiters import MaxSleepExceededError, SyncSemaphore

from bench.peers.base import Busy, SlotPeer

__all__ = ["TokenSemaphore"]

#: The README's ``max_sleep``.
MAX_SLEEP = 30


class TokenSemaphore(SlotPeer):
    """Blocks in ``BLPOP`` for a token; a token is pushed back on exit."""

    @contextmanager
    def slot(self, client: redis.Redis, key: str, limit: int, lease: float) -> Iterator[None]:
        semaphore = SyncSemaphore(
            name=key,
            capacity=limit,
            max_sleep=MAX_SLEEP,
            expiry=max(1, round(lease)),
            connection=client,
        )
        try:
            semaphore.__enter__()
        except MaxSleepExceededError as exc:
            raise Busy(key) from exc
        try:
            yield
        finally:
            semaphore.__exit__(None, None, None)
