"""What celery-pools runs in a worker's main process, and in its pool processes as they start.

- :class:`PoolsWorkerStep`, a bootstep: refuses to start a worker with no Redis for pool state,
  warns when Redis may evict pool keys, declares the pools of ``pools_declare`` before the
  pool processes fork (:mod:`.declared`: as soon as Redis is back, if it is unreachable then),
  and starts the worker's lease keeper and hand-off reaper (:mod:`.keepers`) and the
  thread that settles the slots of tasks ending in the main process (:mod:`.endings`: a hard
  time limit, ``revoke(terminate=True)``, a child process killed, a revoke before the start).
  In a warm shutdown the lease keeper and that thread go on until the worker has waited for its
  running tasks: their slots stay theirs while they finish.
- Each new prefork child connects to the pools' Redis and to the broker as it starts
  (:func:`connect_ahead`), not in its first pooled task or its first hand-off.
- Before the prefork pool forks its first child, the main process's objects are frozen out of
  the garbage collector (``pools_freeze_gc``), so that the children's collections do not copy
  the memory they share with it.
"""

from __future__ import annotations

import gc
import logging
import threading
from datetime import datetime, timezone
from typing import Any

from celery import bootsteps
from celery.signals import (
    task_received,
    worker_before_create_process,
    worker_process_init,
    worker_shutdown,
)

from .context import PoolsExtension, get_extension, is_pooled
from .declared import DeclareUntilDone
from .endings import EndingsThread
from .errors import PoolBackendError
from .keepers import HandoffReaper, LeaseKeeper
from .waiting import WaitState, due_here

__all__ = [
    "PoolsWorkerStep",
    "declare_pools",
    "freeze_before_fork",
]

logger = logging.getLogger(__name__)

# How long a stopping worker waits for the endings reported while it drained to be settled.
_SETTLE_AT_EXIT = 5.0


class PoolsWorkerStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """The worker bootstep celery-pools adds to every worker of an app that uses it."""

    label = "celery-pools"
    # Started after the pool, so stopped before it: the pool's stop is where a warm shutdown
    # waits for the running tasks, and stop() keeps their leases renewed until they end.
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        # Raises PoolConfigError, naming the setting to set, when no Redis is configured: the
        # worker must not start and run pooled tasks unthrottled.
        ext = get_extension(worker.app)
        self.app = worker.app
        self.redis_url = ext.redis_url
        # Steps are built before any starts: before the pool forks its first child.
        if ext.settings.freeze_gc:
            _ForkFreeze.armed = True
            worker_before_create_process.connect(
                _before_fork, weak=False, dispatch_uid="celery_pools.before_fork"
            )
        # Redis checked and the declared pools declared before the pool processes fork, so that
        # they are born knowing it done (or, if Redis is unreachable, declare on their own).
        self._check_redis(ext)
        self.declarer: DeclareUntilDone | None = None
        self.keeper: LeaseKeeper | None = None
        self.reaper: HandoffReaper | None = None
        self.endings: EndingsThread | None = None
        # Weak: a worker that fails before it starts never stops its steps; this one then goes
        # with it rather than on pinging from every child forked later in the process.
        worker_process_init.connect(
            self._process_started, weak=True, dispatch_uid=f"celery_pools.child.{id(self)}"
        )

    def _process_started(self, **_: Any) -> None:
        # In each new pool process (prefork): connect to the pools' Redis and the broker now,
        # off the thread that must report the process up in time, so that its first pooled
        # task and its first hand-off do not.
        threading.Thread(
            target=connect_ahead, args=(self.app,), name="celery-pools-connect", daemon=True
        ).start()

    @staticmethod
    def _check_redis(ext: PoolsExtension) -> None:
        try:
            ext.store.ping()  # the Redis clock's offset, before any countdown arrives
            policy = ext.store.maxmemory_policy()
            if policy and policy.startswith("allkeys"):
                logger.warning(
                    "celery-pools: Redis at %s has maxmemory-policy %r and may evict pool state "
                    "(slots, associations); use 'noeviction' or a volatile-* policy",
                    ext.store.url,
                    policy,
                )
            ext.declare_pools()
        except PoolBackendError as exc:
            logger.warning(
                "celery-pools: Redis for pool state is unreachable at start-up (%s); pooled "
                "tasks wait until it is back, and the pools of pools_declare are declared then",
                exc,
            )

    def start(self, worker: Any) -> None:
        """Start declaring the declared pools if that is still to do, renewing leases, settling
        endings and reaping hand-offs."""
        ext = get_extension(worker.app)
        if not ext.declared.done:
            self.declarer = DeclareUntilDone(ext.declare_pools)
            self.declarer.start()
        self.keeper = LeaseKeeper(worker.app)
        task_received.connect(self._received, weak=False, dispatch_uid=f"celery_pools.{id(self)}")
        self.keeper.start()
        self.endings = EndingsThread(worker.app, self.keeper, worker.hostname)
        self.endings.start()
        self.reaper = HandoffReaper(worker.app, ext.settings.reaper_interval)
        self.reaper.start()

    def _received(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        task = getattr(request, "task", None)
        if self.keeper is not None and getattr(task, "app", None) is self.app and is_pooled(task):
            self.keeper.watch(request)
            _countdown_on_this_clock(request, get_extension(self.app).store.clock.offset)

    def stop(self, worker: Any) -> None:
        """A warm shutdown: stop reaping hand-offs now; renew leases and settle endings until
        the worker has waited for its running tasks (Celery's pool stops after this step, and
        waits for them), then stop (``worker_shutdown``) and let the queued endings settle."""
        self._disconnect()
        if self.reaper is not None:
            self.reaper.stop()

        def after_the_pool(sender: Any = None, **_: Any) -> None:
            if sender is worker:
                worker_shutdown.disconnect(dispatch_uid=f"celery_pools.shutdown.{id(self)}")
                self._stop_threads(settle_for=_SETTLE_AT_EXIT)

        worker_shutdown.connect(
            after_the_pool, weak=False, dispatch_uid=f"celery_pools.shutdown.{id(self)}"
        )

    def terminate(self, worker: Any) -> None:
        """A cold shutdown (its pool's processes are ended under their tasks): stop now."""
        self._disconnect()
        worker_shutdown.disconnect(dispatch_uid=f"celery_pools.shutdown.{id(self)}")
        self._stop_threads(settle_for=0.0)

    shutdown = stop

    def _disconnect(self) -> None:
        task_received.disconnect(dispatch_uid=f"celery_pools.{id(self)}")
        worker_process_init.disconnect(dispatch_uid=f"celery_pools.child.{id(self)}")

    def _stop_threads(self, *, settle_for: float) -> None:
        for thread in (self.declarer, self.reaper, self.keeper, self.endings):
            if thread is not None:
                thread.stop()
        if self.endings is not None and self.endings.is_alive() and settle_for:
            self.endings.join(settle_for)


def connect_ahead(app: Any) -> None:
    """Open this process's connections before a task needs them: to the pools' Redis (learning
    its clock) and, for the hand-offs it publishes, to the broker.

    A prefork child inherits no connection: without this, its first pooled task pays for
    connecting to the pools' Redis (several round trips) while it holds up a slot or a hand-off,
    and its first release pays for what Celery does before its first publication (a producer
    connection and channel, the task sender, declaring the queue) while the slot it hands on
    stays idle. The broker side declares the queues this worker consumes, as the first
    publication to one of them would. Nothing here is an error: a task that finds Redis or the
    broker unreachable waits or retries as it always does.
    """
    try:
        get_extension(app).store.ping()
    except PoolBackendError as exc:
        logger.debug("celery-pools: could not connect ahead to the pools' Redis: %s", exc)
    try:
        app.amqp.send_task_message  # noqa: B018  (built on first use: Celery's task sender)
        with app.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=1)
            for queue in app.amqp.queues.consume_from.values():
                producer.maybe_declare(queue)
    except Exception as exc:  # any broker's errors: the first publication retries
        logger.debug("celery-pools: could not connect ahead to the broker: %s", exc)


def _countdown_on_this_clock(request: Any, redis_offset: float | None) -> None:
    """Move the ETA of a pooled task's countdown to this host's clock.

    Celery wrote the ETA on the clock of the host that sent the message and compares it with
    this host's: hosts whose clocks disagree by minutes would wait minutes too long or not at
    all. The message also says when it is due on the Redis clock (``WaitState.due``); this
    handler runs on ``task_received``, before the consumer schedules the ETA, and sets it from
    that. A message without it (or a worker that has not seen the Redis clock yet) keeps
    Celery's ETA.
    """
    if getattr(request, "eta", None) is None or not hasattr(request, "_eta"):
        return
    local = due_here(WaitState.from_headers(request.request_dict), redis_offset)
    if local is not None:
        request._eta = datetime.fromtimestamp(local, tz=timezone.utc)


def declare_pools(app: Any) -> list[str]:
    """Create the pools of ``app``'s ``pools_declare`` that do not exist and assign their
    unassigned instances. Existing pools and associations are never changed. Returns the pools
    created."""
    return get_extension(app).declare_pools()


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
