"""The pools of ``pools_declare``: created when missing, their instances assigned when they have
no pool yet. Existing pools and associations are never changed.

Every worker declares them as it is built, before its pool processes fork
(:class:`celery_pools.worker.PoolsWorkerStep`), so its processes know them declared. A worker
built while the pools' Redis is unreachable declares them as soon as it can: its main process
tries again every second (:class:`DeclareUntilDone`), and each of its processes declares them
before a task of a declared instance would run without a pool (its first ``UNASSIGNED`` answer,
:meth:`Declared.ask_again`), then asks again. So no task runs unthrottled because Redis was down
when its worker started. Whether they are declared is one byte of memory shared with every
process forked from the worker's main process, before or after: once any of them declared, none
does again, and a declared pool deleted at run time stays deleted until a worker starts (only a
worker still waiting for Redis to come back at that moment would create it again). A Redis that
comes back empty after the worker declared is not declared again.
"""

from __future__ import annotations

import logging
import mmap
from collections.abc import Callable, Mapping

from .background import Periodic
from .models import PoolSpec
from .store import AcquireStatus, Acquisition, RedisPoolStore

__all__ = ["DeclareUntilDone", "Declared"]

logger = logging.getLogger(__name__)


class Declared:
    """Whether this process has declared its app's ``pools_declare``, and the declaring."""

    def __init__(self) -> None:
        # One byte in an anonymous shared mapping: processes forked from this one see it set,
        # whichever of them sets it, and whenever. No lock: declaring twice changes nothing.
        self._flag = mmap.mmap(-1, 1)

    @property
    def done(self) -> bool:
        """Whether this process, the process it was forked from, or another process forked from
        that one declared them."""
        return self._flag[0] == 1

    def declare(self, store: RedisPoolStore, specs: Mapping[str, PoolSpec]) -> list[str]:
        """Create the pools of ``specs`` that do not exist and assign their unassigned instances;
        return the pools created. Raises :class:`~celery_pools.errors.PoolBackendError` when
        Redis cannot be reached (and is not done then: each write is atomic and asked again)."""
        created = []
        for name, spec in specs.items():
            if store.create_pool(spec.pool(name)):
                created.append(name)
                logger.info("celery-pools: created declared pool %r (limit %d)", name, spec.limit)
            for instance in spec.instances:
                store.assign(instance, name, if_unassigned=True)
        self._flag[0] = 1
        return created

    def ask_again(
        self,
        answer: Acquisition,
        instance: str,
        store: RedisPoolStore,
        specs: Mapping[str, PoolSpec],
    ) -> bool:
        """Whether a task of ``instance`` must ask for its slot again because ``answer`` found the
        instance with no pool, ``specs`` declare it, and this process had not declared them: it
        declares them now (raising ``PoolBackendError`` if Redis is gone again)."""
        if self.done or answer.status is not AcquireStatus.UNASSIGNED:
            return False
        if not any(instance in spec.instances for spec in specs.values()):
            return False
        self.declare(store, specs)
        return True


class DeclareUntilDone(Periodic):
    """Declares ``pools_declare`` every second until it is done, then stops (a worker's main
    process, when Redis was unreachable as the worker was built)."""

    activity = "declaring the pools of pools_declare"
    unreachable_level = logging.DEBUG  # the start-up warning and the lease keeper say it

    def __init__(self, declare: Callable[[], list[str]]) -> None:
        super().__init__("celery-pools-declare", 1.0)
        self._declare = declare

    def tick(self) -> list[str]:
        """One attempt; the thread stops after the first that succeeds."""
        created = self._declare()
        logger.warning(
            "celery-pools: Redis for pool state is back: the pools of pools_declare are declared "
            "(created: %s)",
            ", ".join(created) or "none",
        )
        self.stop()
        return created
