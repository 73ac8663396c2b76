"""The slots of pooled tasks that end in a worker's main process, without their own code running
to the end: a hard time limit, a lost child process, ``revoke(terminate=True)``, or a revoke that
stops a task before it starts.

- A task that started may still have its call to the external system in flight (a server keeps
  serving a request whose client died), so its slot is abandoned, not released: it stays taken
  for ``pools_abandoned_grace_seconds``. Only a slot held by the process the execution ran in,
  on this worker, is touched (the lease keeper knows which process that was): the same task id
  may hold a slot elsewhere by then, as a copy of its message delivered again, and its call must
  keep counting. A hand-off it had not claimed yet is left to lapse and be handed out again.
- A task revoked before it started made no call: what its message was handed and nobody took up
  (the hand-off, grant or standby whose id the message carries) is released at once. A slot its
  id holds as a running execution elsewhere is left alone.

Celery reports these endings on the worker's event loop (or a pool's own threads), where a call
to a pools' Redis that is down must not stall it (the consumer would hold the messages it has
taken from the broker). They are queued to one thread, which settles them in the order they
came.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, NamedTuple

from celery.exceptions import TimeLimitExceeded, WorkerLostError
from celery.signals import task_failure, task_revoked

from .context import get_extension, is_pooled
from .errors import PoolBackendError
from .keepers import LeaseKeeper, report_abandoned
from .waiting import WaitState

__all__ = ["EndingsThread"]

logger = logging.getLogger(__name__)

# How tasks end in the main process, without their own code running to the end.
_MAIN_PROCESS_ENDINGS = (TimeLimitExceeded, WorkerLostError)


class _Ending(NamedTuple):
    """A pooled task's execution that ended in the main process, as a signal reported it."""

    task_id: str
    task_name: str
    why: str  # how it ended: an exception's name, "revoke" or "revoke(terminate=True)"
    started: bool  # its body may have run (so may its call)
    # Where it ran, as (pid, worker hostname): found by the lease keeper as the signal came.
    processes: tuple[tuple[int, str], ...]
    handoff: str  # the hand-off id its message carried ("" for none)


class EndingsThread(threading.Thread):
    """Abandons (or releases) the slots of the pooled tasks of ``app`` that Celery reports
    ended in this worker's main process (``task_failure`` with a hard time limit or a lost
    worker, ``task_revoked``), one at a time, in order.

    ``hostname`` is this worker's: a started execution whose process the lease keeper no longer
    knows is taken to have held its slot somewhere on this worker.
    """

    def __init__(self, app: Any, keeper: LeaseKeeper, hostname: str) -> None:
        super().__init__(name="celery-pools-endings", daemon=True)
        self.app = app
        self.keeper = keeper
        self.hostname = hostname
        self._endings: queue.SimpleQueue[_Ending | None] = queue.SimpleQueue()
        self._uid = f"celery_pools.endings.{id(self)}"

    def start(self) -> None:
        """Start the thread and listen to Celery's ending signals."""
        super().start()
        task_failure.connect(self._failed, weak=False, dispatch_uid=self._uid)
        task_revoked.connect(self._revoked, weak=False, dispatch_uid=self._uid)

    def stop(self) -> None:
        """Stop listening; the endings already reported are settled, then the thread ends."""
        task_failure.disconnect(dispatch_uid=self._uid)
        task_revoked.disconnect(dispatch_uid=self._uid)
        self._endings.put(None)

    def _failed(
        self, sender: Any = None, task_id: str | None = None, exception: Any = None, **_: Any
    ) -> None:
        if isinstance(exception, _MAIN_PROCESS_ENDINGS):
            self._report(task_id, sender, type(exception).__name__, started=True)

    def _revoked(
        self, sender: Any = None, request: Any = None, terminated: bool = False, **_: Any
    ) -> None:
        why = "revoke(terminate=True)" if terminated else "revoke"
        # The request is a Context of the message's headers, as attributes. Only a revoke
        # before the start gives back what its message was handed (abandon's `unclaimed`).
        headers = None if terminated else getattr(request, "__dict__", None)
        handoff = WaitState.from_headers(headers).handoff
        self._report(
            getattr(request, "id", None), sender, why, started=bool(terminated), handoff=handoff
        )

    def _report(
        self, task_id: str | None, task: Any, why: str, *, started: bool, handoff: str = ""
    ) -> None:
        # On the event loop: ask the keeper where the execution ran now, before it lets go.
        if not task_id or getattr(task, "app", None) is not self.app or not is_pooled(task):
            return
        processes = self.keeper.ended_processes(task_id) if started else []
        self._endings.put(_Ending(task_id, task.name, why, started, tuple(processes), handoff))

    def run(self) -> None:
        while (ending := self._endings.get()) is not None:
            try:
                self._settle(ending)
            except Exception:
                logger.exception("celery-pools: could not settle the slot of %s", ending.task_id)

    def _settle(self, ending: _Ending) -> None:
        ext = get_extension(self.app)
        grace = ext.settings.abandoned_grace if ending.started else 0.0
        # A started execution: the slot its process held (any process of this worker when the
        # keeper does not know it); one that never started: only what nobody has taken up.
        where: list[tuple[int | None, str]] = [*ending.processes] or [
            (None, self.hostname if ending.started else "")
        ]
        pool = ""
        for pid, hostname in where:
            try:
                ended = ext.store.abandon(
                    ending.task_id,
                    grace=grace,
                    why=ending.why,
                    pid=pid,
                    hostname=hostname,
                    handoff=ending.handoff,
                    unclaimed=not ending.started,
                )
            except PoolBackendError as exc:
                logger.warning(
                    "celery-pools: could not release the slot of %s[%s] after %s (%s); it is "
                    "reclaimed when its lease lapses",
                    ending.task_name,
                    ending.task_id,
                    ending.why,
                    exc,
                )
                return
            if ended is None:  # its id holds no slot at all
                return
            ext.dispatcher.settle(ended.effects)
            if ended.elsewhere:
                pool = ended.pool
                continue
            if ended.slot is not None:
                report_abandoned(ending.task_name, ended.pool, ended.slot)
                return
            if ended.released:
                logger.info(
                    "celery-pools: released the slot of %s[%s] in pool %r after %s",
                    ending.task_name,
                    ending.task_id,
                    ended.pool,
                    ending.why,
                )
            return
        logger.info(
            "celery-pools: %s[%s] ended (%s) holding no slot; its id holds one of pool %r that "
            "this execution had not taken up (a copy's, or a hand-off on its way), left alone",
            ending.task_name,
            ending.task_id,
            ending.why,
            pool,
        )
