"""Dramatiq's ``ConcurrentRateLimiter`` called inside a Celery task.

Dramatiq's cookbook ("Rate Limiting", https://dramatiq.io/cookbook.html#rate-limiting) and its
reference (https://dramatiq.io/reference.html#dramatiq.rate_limits.ConcurrentRateLimiter):
``ConcurrentRateLimiter(backend, key, limit=N, ttl=...)`` and
``with limiter.acquire(raise_on_failure=False) as acquired``; not acquired means retry later
(Dramatiq retries the message with backoff; here Celery's ``self.retry`` does). The counter's
``ttl`` is the lease every peer gets.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis
from dramatiq.rate_limits import ConcurrentRateLimiter
from dramatiq.rate_limits.backends import RedisBackend

from bench.peers.base import Busy, SlotPeer

__all__ = ["DramatiqLimiter"]


class DramatiqLimiter(SlotPeer):
    """A counter that refuses past N; refused means retry."""

    @contextmanager
    def slot(self, client: redis.Redis, key: str, limit: int, lease: float) -> Iterator[None]:
        limiter = ConcurrentRateLimiter(
            RedisBackend(client=client), f"dramatiq:{key}", limit=limit, ttl=int(lease * 1000)
        )
        with limiter.acquire(raise_on_failure=False) as acquired:
            if not acquired:
                raise Busy(key)
            yield
