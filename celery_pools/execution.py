"""One execution of a pooled task, and its waits inside the worker process that runs it.

An execution may wait for a slot without leaving its process: blocked as a standby until a
freed slot is handed to it, which it claims as it is woken (:func:`stand_by`), or sleeping out a
countdown short enough to fit in ``pools_wait_in_process_seconds`` (:func:`waits_here`,
:func:`wait_here`). Both count against the task's time limits, so in all an execution waits
there at most a tenth of them (:func:`time_to_wait_here`). While it waits, its result state says
so (with ``task_track_started``, which stored ``STARTED`` before the body), and
:func:`store_started` says ``STARTED`` again when it takes its slot.

``task`` below is the :class:`~celery_pools.task.PooledTask` running the execution.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import states
from celery.utils.time import maybe_iso8601

try:  # Celery 5.7: the request's explicit ignore_result, else the task's
    from celery.app.task import get_actual_ignore_result
except ImportError:  # pragma: no cover  (older Celery: either says ignore)

    def get_actual_ignore_result(task: Any, req: Any) -> bool:
        """Whether the results of ``req`` are ignored: its own flag or its task's."""
        return bool(getattr(req, "ignore_result", False) or task.ignore_result)


from .admission import Caller, Standby, Wait
from .context import PoolsExtension
from .errors import PoolBackendError, PoolFullError
from .store import Acquisition, StandbyBlock
from .waiting import WaitState

__all__ = [
    "Execution",
    "stand_by",
    "store_started",
    "time_to_wait_here",
    "wait_here",
    "waits_here",
]

logger = logging.getLogger(__name__)


@dataclass
class Execution:
    """One execution: its request, who asks, its arguments, and how long it has waited in its
    worker process so far (standing by, or for short countdowns)."""

    request: Any
    caller: Caller
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    waited_here: float = 0.0

    def published(self, state: WaitState) -> float | None:
        """When this call was published as usual into a pool seen ample (``state``'s stamp), as
        it first runs; None otherwise: a retry (``Task.retry`` copies the request's headers) is
        a new request."""
        if state.first is None and not self.request.retries:
            return state.published
        return None


def time_to_wait_here(
    task: Any, ext: PoolsExtension, execution: Execution, wanted: float, after: float = 0.0
) -> float:
    """``wanted`` seconds of waiting in the worker process, cut so that ``execution`` waits there
    at most a tenth of each of its time limits in all (they count the time: the task already
    runs in the worker's process), once it has waited ``after`` seconds more."""
    hard, soft = execution.request.timelimit or (None, None)
    default_hard, default_soft = ext.default_time_limits
    limits = [
        limit
        for limit in (
            hard or task.time_limit or default_hard,
            soft or task.soft_time_limit or default_soft,
        )
        if limit
    ]
    waited = execution.waited_here + after
    return max(0.0, min([wanted, *(float(limit) / 10 - waited for limit in limits)]))


def waits_here(task: Any, ext: PoolsExtension, execution: Execution, countdown: float) -> bool:
    """Whether ``execution`` sleeps out ``countdown`` in its worker process instead of being
    sent again: when the countdown fits in what is left of ``pools_wait_in_process_seconds``
    (for the whole execution), within :func:`time_to_wait_here`, and the task's ``expires``
    does not come first (sent again, it is revoked as expired by the worker that receives it,
    as Celery does with any expired message)."""
    budget = ext.settings.wait_in_process_seconds - execution.waited_here
    if not 0 < countdown <= time_to_wait_here(task, ext, execution, budget):
        return False
    return not _expires_within(execution.request, countdown)


def wait_here(task: Any, execution: Execution, wait: Wait) -> None:
    """Sleep out ``wait``'s countdown in this process. The result state says the task waits:
    ``RETRY`` with ``wait.reason``, stored at its first wait here (with ``task_track_started``;
    none in eager mode, which stores no state)."""
    request = execution.request
    if _tracked(task, request) and not execution.waited_here:
        task.backend.store_result(request.id, wait.reason, states.RETRY, request=request)
    started = time.monotonic()
    time.sleep(wait.countdown)
    execution.waited_here += time.monotonic() - started


def stand_by(
    task: Any,
    execution: Execution,
    standby: Standby,
    state: WaitState,
    ask: Callable[[StandbyBlock], Acquisition],
) -> Acquisition | None:
    """Block until a freed slot is handed to this standby, it is ended, or its block ends, and
    ask again as it ends, in the same round trip (``ask`` the store with the block): so a slot
    handed to it is claimed as it is woken. The answer; None if Redis failed (ask again)."""
    request, acq = execution.request, standby.acquisition
    if _tracked(task, request):
        # Celery stored STARTED before the body: the task still waits, and its state says so as
        # it did while parked: PENDING when parked at publication, else RETRY.
        if state.attempts:
            reason = PoolFullError(
                f"standing by for a slot of pool {acq.pool!r} ({acq.in_use} of {acq.limit} "
                f"in use); waited {acq.waited:.1f} s of {acq.timeout:g} s"
            )
            task.backend.store_result(request.id, reason, states.RETRY, request=request)
        else:
            task.backend.store_result(request.id, None, states.PENDING, request=request)
    started = time.monotonic()
    try:
        return ask(StandbyBlock(acq.pool, standby.seconds))
    except PoolBackendError as exc:  # the next attempt finds out what Redis says
        logger.debug("celery-pools: %s stopped standing by: %s", execution.caller, exc)
        return None
    finally:
        execution.waited_here += time.monotonic() - started


def store_started(task: Any, request: Any) -> None:
    """A task that waited in its process runs: its state says ``STARTED`` again (with
    ``task_track_started``; its wait stored another)."""
    if _tracked(task, request):
        meta = {"pid": os.getpid(), "hostname": request.hostname}
        task.backend.store_result(request.id, meta, states.STARTED, request=request)


def _expires_within(request: Any, seconds: float) -> bool:
    """Whether ``request``'s ``expires`` comes within ``seconds`` from now (or cannot be read
    with a time zone): none means never."""
    expires = request.expires
    if not expires:
        return False
    try:
        when = maybe_iso8601(expires)
    except (TypeError, ValueError):
        return True
    if when is None or when.tzinfo is None:
        return True
    return bool(when.timestamp() <= time.time() + seconds)


def _tracked(task: Any, request: Any) -> bool:
    """Whether Celery stores this execution's ``STARTED`` state (so a wait must say otherwise):
    ``task_track_started``, outside eager mode, unless results are ignored (as Celery's tracer
    decides: the request's ``ignore_result`` when its message says, else the task's)."""
    ignored = get_actual_ignore_result(task, request)
    return bool(task.track_started and not ignored and not request.is_eager)
