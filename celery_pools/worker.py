"""What celery-pools runs in a worker's main process.

- :class:`PoolsWorkerStep`, a bootstep: refuses to start a worker with no Redis for pool state,
  warns when Redis may evict pool keys, creates the pools declared in ``pools_declare`` that are
  missing, and renews the leases of the slots held by the worker's running tasks.
- :class:`HandoffReaper`, which keeps hand-off pools moving: it hands out again a hand-off not
  taken up in time (the stale copy, if it ever arrives, is recognised by its hand-off id and
  never runs), and publishes parked tasks whose deadline passed, or whose pool was cleared or
  deleted, so that they fail through Celery's normal failure path.
- Signal handlers that release the slot of a task that ended where its own process could not
  release it: a hard time limit, ``revoke(terminate=True)``, a child process killed.
- Before the prefork pool forks its first child, the main process's objects are frozen out of
  the garbage collector (``pools_freeze_gc``), so that the children's collections do not copy
  the memory they share with it.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

from celery import bootsteps
from celery.exceptions import TimeLimitExceeded, WorkerLostError
from celery.signals import task_failure, task_revoked, worker_before_create_process
from celery.worker import state as worker_state

from .background import Periodic
from .context import get_extension, is_pooled
from .errors import PoolBackendError

__all__ = [
    "HandoffReaper",
    "LeaseKeeper",
    "PoolsWorkerStep",
    "connect_worker_signals",
    "declare_pools",
    "freeze_before_fork",
]

logger = logging.getLogger(__name__)

# Slots of tasks that end in the main process, without their own code running to the end.
_MAIN_PROCESS_ENDINGS = (TimeLimitExceeded, WorkerLostError)


class LeaseKeeper(Periodic):
    """Renews, every third of the lease, the leases of slots held by this worker's running tasks."""

    activity = "lease renewal"

    def __init__(self, app: Any) -> None:
        super().__init__("celery-pools-leases", get_extension(app).settings.lease_seconds / 3)
        self.app = app
        self._reported: set[str] = set()

    def tick(self) -> int:
        """Renew the leases of the running pooled tasks now; return how many were renewed.

        Also reports, once per task, a holder running longer than ``pools_suspicious_hold_seconds``
        (a likely hang or leak); it keeps its slot.
        """
        ext = get_extension(self.app)
        requests = {
            req.id: req for req in list(worker_state.active_requests) if is_pooled(req.task)
        }
        held = ext.store.held_pools(list(requests))
        renewed = ext.store.renew(held, lease=ext.settings.lease_seconds)
        self._report_suspicious(requests, held, ext.settings.suspicious_hold_seconds)
        return renewed

    def _report_suspicious(
        self, requests: dict[str, Any], held: dict[str, str], limit: float
    ) -> None:
        now = time.time()
        for task_id, pool in held.items():
            started = getattr(requests[task_id], "time_start", None)
            if task_id in self._reported or not started or now - started <= limit:
                continue
            self._reported.add(task_id)
            logger.warning(
                "celery-pools: suspicious holder: task %s[%s] has held a slot of pool %r for "
                "%.0f s (over pools_suspicious_hold_seconds = %g); it keeps the slot",
                requests[task_id].task_name,
                task_id,
                pool,
                now - started,
                limit,
            )
        self._reported &= set(requests)


class HandoffReaper(Periodic):
    """Keeps hand-off pools moving: every ``interval`` seconds it runs each one's hand-off
    (free slots to parked tasks, lapsed hand-offs again, parked tasks past their deadline out)
    and publishes what that hands out, and publishes parked tasks that must fail."""

    activity = "hand-off reaping"
    unreachable_level = logging.DEBUG  # the lease keeper already warns about it

    def __init__(self, app: Any, interval: float) -> None:
        super().__init__("celery-pools-handoff", interval)
        self.app = app
        self._pools: list[str] = []
        self._pools_read = 0.0

    def tick(self) -> int:
        """One round: returns how many messages it published."""
        dispatcher = get_extension(self.app).dispatcher
        if time.monotonic() - self._pools_read > 5:
            self._pools = dispatcher.store.handoff_pools()
            self._pools_read = time.monotonic()
        published = dispatcher.publish_expired()
        for pool in self._pools:
            published += dispatcher.hand_off(pool)
        return published


class PoolsWorkerStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """The worker bootstep celery-pools adds to every worker of an app that uses it."""

    label = "celery-pools"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        # Raises PoolConfigError, naming the setting to set, when no Redis is configured: the
        # worker must not start and run pooled tasks unthrottled.
        ext = get_extension(worker.app)
        self.redis_url = ext.redis_url
        # Steps are built before any starts: before the pool forks its first child.
        if ext.settings.freeze_gc:
            _ForkFreeze.armed = True
        self.keeper: LeaseKeeper | None = None
        self.reaper: HandoffReaper | None = None

    def start(self, worker: Any) -> None:
        """Check Redis, create declared pools, start renewing leases."""
        ext = get_extension(worker.app)
        try:
            policy = ext.store.maxmemory_policy()
            if policy and policy.startswith("allkeys"):
                logger.warning(
                    "celery-pools: Redis at %s has maxmemory-policy %r and may evict pool state "
                    "(slots, associations); use 'noeviction' or a volatile-* policy",
                    ext.store.url,
                    policy,
                )
            declare_pools(worker.app)
        except PoolBackendError as exc:
            logger.warning(
                "celery-pools: Redis for pool state is unreachable at start-up (%s); pooled "
                "tasks wait until it is back",
                exc,
            )
        self.keeper = LeaseKeeper(worker.app)
        self.keeper.start()
        self.reaper = HandoffReaper(worker.app, ext.settings.reaper_interval)
        self.reaper.start()

    def stop(self, worker: Any) -> None:
        """Stop renewing leases and reaping hand-offs."""
        for thread in (self.keeper, self.reaper):
            if thread is not None:
                thread.stop()

    shutdown = stop


def declare_pools(app: Any) -> list[str]:
    """Create the pools of ``pools_declare`` that do not exist and assign their unassigned
    instances. Existing pools and associations are never changed. Returns the pools created."""
    ext = get_extension(app)
    store = ext.store
    created = []
    for name, spec in ext.settings.declare.items():
        if store.create_pool(spec.pool(name)):
            created.append(name)
            logger.info("celery-pools: created declared pool %r (limit %d)", name, spec.limit)
        for instance in spec.instances:
            store.assign(instance, name, if_unassigned=True)
    return created


def connect_worker_signals(app: Any) -> None:
    """Release slots of pooled tasks of ``app`` that end in the worker's main process, and
    freeze the main process's objects before its first fork (``pools_freeze_gc``)."""

    def release(task_id: str | None, task: Any, why: str) -> None:
        if not task_id or getattr(task, "app", None) is not app or not is_pooled(task):
            return
        dispatcher = get_extension(app).dispatcher
        try:
            released = dispatcher.store.release_token(task_id)
        except PoolBackendError as exc:
            logger.warning(
                "celery-pools: could not release the slot of %s[%s] after %s (%s); it is "
                "reclaimed when its lease lapses",
                task.name,
                task_id,
                why,
                exc,
            )
            return
        if released is None:
            return
        dispatcher.settle(released.effects)
        if released.released:
            logger.info(
                "celery-pools: released the slot of %s[%s] in pool %r after %s",
                task.name,
                task_id,
                released.pool,
                why,
            )

    def on_failure(
        sender: Any = None, task_id: str | None = None, exception: Any = None, **_: Any
    ) -> None:
        if isinstance(exception, _MAIN_PROCESS_ENDINGS):
            release(task_id, sender, type(exception).__name__)

    def on_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
        release(getattr(request, "id", None), sender, "revoke")

    task_failure.connect(on_failure, weak=False, dispatch_uid=f"celery_pools.failure.{id(app)}")
    task_revoked.connect(on_revoked, weak=False, dispatch_uid=f"celery_pools.revoked.{id(app)}")
    worker_before_create_process.connect(
        _before_fork, weak=False, dispatch_uid="celery_pools.before_fork"
    )


class _ForkFreeze:
    """Whether this process builds a worker that freezes before forking, and has frozen."""

    armed = False
    done = False


def _before_fork(**_: Any) -> None:
    # Celery sends worker_before_create_process before every fork; only a worker built with a
    # PoolsWorkerStep whose app keeps pools_freeze_gc on is armed, and it freezes once.
    if _ForkFreeze.armed and not _ForkFreeze.done:
        freeze_before_fork()
        _ForkFreeze.done = True


def freeze_before_fork() -> None:
    """Collect the main process's garbage, then freeze what is left (:func:`gc.freeze`).

    A forked child shares the main process's memory until it writes to it, and a full garbage
    collection in the child writes to every object it tracks: each child then ends up with its
    own copy of the main process's memory. Countdown waiting makes every wait a ``RETRY`` and its
    exception info, which brings those collections on (docs/benchmarks.md measures it). Frozen
    objects are left out of collections, for good; collecting first keeps today's garbage from
    being frozen with them. The worker does this once, before its first child: children forked
    later (``max_tasks_per_child``, autoscaling) share what was frozen then, and freezing again
    would also freeze the objects of work in flight, whose cycles would then never be collected.
    """
    gc.collect()
    gc.freeze()
