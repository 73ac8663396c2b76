"""A hand-written poller: Celery's cookbook lock generalised to N slots.

The cookbook's "Ensuring a task is only executed one at a time"
(https://docs.celeryq.dev/en/stable/tutorials/task-cookbook.html) takes a lock with an atomic
``add`` that expires (``LOCK_EXPIRE``) and deletes it when done, unless it has expired by then.
Generalised to a limit of N: slot keys ``<key>:0`` .. ``<key>:N-1``, each taken with
``SET NX EX`` (https://redis.io/docs/latest/commands/set/); a task tries them in turn and, when
none is free, retries by Celery countdown (``self.retry``), 0.2-0.5 s later.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from bench.peers.base import Busy, SlotPeer

__all__ = ["Poller"]


class Poller(SlotPeer):
    """N ``SET NX EX`` keys, tried in turn; no free key means retry."""

    @contextmanager
    def slot(self, client: redis.Redis, key: str, limit: int, lease: float) -> Iterator[None]:
        token = uuid.uuid4().hex
        expires = time.monotonic() + lease
        for index in range(limit):
            name = f"poller:{key}:{index}"
            if client.set(name, token, nx=True, ex=max(1, round(lease))):
                break
        else:
            raise Busy(key)
        try:
            yield
        finally:
            # As the cookbook: delete the lock only if it has not expired meanwhile.
            if time.monotonic() < expires:
                client.delete(name)
