"""``concurrency-limit``: a hash of holders, polled every ``limit_interval`` inside the task.

Its README (https://github.com/anexia/python-concurrency-limit#usage):
``with concurrency_limit.limit(RedisConfiguration(...), LimitConfiguration(key=..., limit=N,
limit_timeout=10))``; it sleeps ``limit_interval`` (0.1 s by default) between attempts and
raises ``ConcurrencyLimitExceededException`` after ``limit_timeout`` (then the task retries).
``limit_expire`` is the lease every peer gets.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import concurrency_limit
import redis

from bench.peers.base import Busy, SlotPeer

__all__ = ["HolderCounter"]

#: The README's ``limit_timeout``.
LIMIT_TIMEOUT = 10


class HolderCounter(SlotPeer):
    """Counts holders with ``HLEN`` and polls until it is below N."""

    @contextmanager
    def slot(self, client: redis.Redis, key: str, limit: int, lease: float) -> Iterator[None]:
        redis_configuration = concurrency_limit.RedisConfiguration(
            connection_pool=client.connection_pool
        )
        limit_configuration = concurrency_limit.LimitConfiguration(
            key=f"concurrency-limit:{key}",
            limit=limit,
            limit_timeout=LIMIT_TIMEOUT,
            limit_expire=max(1, round(lease)),
        )
        try:
            with concurrency_limit.limit(redis_configuration, limit_configuration):
                yield
        except concurrency_limit.ConcurrencyLimitExceededException as exc:
            raise Busy(key) from exc
