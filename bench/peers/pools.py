"""celery-pools itself, in one of its waiting modes: ``PooledTask`` with a pool per run.

This repository's README ("30-second example", "Waiting by hand-off", "Standby waiters"): a pool
created with ``PoolManager.create(name, limit=N, wait=...)``, the task's connector instance
assigned to it, and ``@app.task(base=PooledTask, connector_instance=...)``; the body only makes
the call.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.modes import create_pool
from bench.peers.base import Peer
from celery_pools import PoolManager

__all__ = ["POOLED_TASK", "CeleryPools"]

#: The peers app's pooled task (:mod:`bench.peers.app`).
POOLED_TASK = "peers.pooled_call"


@dataclass(frozen=True)
class CeleryPools(Peer):
    """A celery-pools pool waiting in benchmark mode ``mode`` (see :mod:`bench.modes`)."""

    mode: str = "countdown"

    def prepare(self, manager: PoolManager, key: str, limit: int) -> None:
        """A pool named ``key`` of ``limit`` slots in this mode, with instance ``key`` assigned."""
        create_pool(manager, key, limit=limit, timeout=300.0, mode=self.mode)
        manager.assign(key, key)
