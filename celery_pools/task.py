"""``PooledTask``: a Celery task base class that holds a pool slot while its body runs."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Retry

from . import signals
from .errors import (
    PoolBackendError,
    PoolBackendTimeoutError,
    PoolClearedError,
    PoolConfigError,
    PoolDeletedError,
    PoolFullError,
    PoolTimeoutError,
    UnassignedInstanceError,
)
from .extension import PoolsExtension, get_extension, install
from .models import DEFAULT_TIMEOUT, check_instance_name
from .store import AcquireStatus, Acquisition
from .waiting import HEADER, WaitState, next_countdown

__all__ = ["InstanceResolver", "PooledTask"]

logger = logging.getLogger(__name__)

#: A function of the call's ``(args, kwargs)`` that returns the connector instance.
InstanceResolver = Callable[[tuple[Any, ...], dict[str, Any]], str]


@dataclass(frozen=True)
class _Slot:
    pool: str
    instance: str
    token: str


class _Wait(Exception):
    """Internal: the pool is full; wait ``countdown`` seconds with ``state``, then try again."""

    def __init__(self, countdown: float, state: WaitState, reason: PoolFullError) -> None:
        super().__init__(countdown)
        self.countdown = countdown
        self.state = state
        self.reason = reason


class PooledTask(Task):  # type: ignore[misc]
    """A task that takes a slot of its connector instance's pool before its body runs.

    Set ``connector_instance`` to the instance's name, or to a function of ``(args, kwargs)``
    that returns it::

        @app.task(base=PooledTask, connector_instance="netsuite-prod")
        def push_order(order_id): ...

        @app.task(base=PooledTask, connector_instance=lambda args, kwargs: kwargs["instance"])
        def sync_customer(customer_id, *, instance): ...

    When the pool is full the body does not run: the task is sent again with a countdown
    (state ``RETRY``, reason :class:`~celery_pools.errors.PoolFullError`) without spending its
    ``max_retries``, until a slot is free or the pool's timeout passes, when it fails with
    :class:`~celery_pools.errors.PoolTimeoutError`. The slot is released however the body ends.

    Calling the task object directly (``push_order(1)``) runs the body as a plain function,
    without a slot, as Celery does for every task called directly. ``apply()`` and eager mode
    take a slot, waiting in-process.
    """

    abstract = True
    #: The connector instance whose pool limits this task: a name, or a function of
    #: ``(args, kwargs)`` returning one.
    connector_instance: str | InstanceResolver | None = None

    @classmethod
    def on_bound(cls, app: Any) -> None:
        """Install celery-pools on the app the task is bound to."""
        install(app)

    # -- the life of one execution ----------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly:
            return super().__call__(*args, **kwargs)
        slot = self._enter(request, args, kwargs)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            if slot is not None:
                self._leave(slot)

    def resolve_connector_instance(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The connector instance of this call (validated)."""
        # Read from the class: a function stored as a class attribute would bind to the task.
        source = type(self).connector_instance
        if source is None:
            raise PoolConfigError.invalid(
                f"connector_instance of task {self.name}",
                None,
                "set connector_instance=<name> or a function of (args, kwargs) in @app.task(...)",
            )
        instance = source(args, kwargs) if callable(source) else source
        return check_instance_name(instance, f"connector_instance of task {self.name}")

    def _enter(self, request: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Slot | None:
        ext = get_extension(self.app)
        instance = self.resolve_connector_instance(tuple(args), dict(kwargs))
        state = WaitState.from_headers(request.headers)
        while True:
            try:
                return self._attempt(ext, request, instance, state)
            except _Wait as wait:
                if not request.is_eager:
                    self._reschedule(request, args, kwargs, wait)
                # Eager mode (apply(), task_always_eager) has no broker to wait in: wait here.
                time.sleep(wait.countdown)
                state = wait.state

    def _attempt(
        self, ext: PoolsExtension, request: Any, instance: str, state: WaitState
    ) -> _Slot | None:
        settings = ext.settings
        token = request.id
        try:
            acq = ext.store.acquire(
                instance,
                token,
                lease=settings.lease_seconds,
                first=state.first,
                waited_uid=state.uid,
                info={
                    "task_name": self.name,
                    "instance": instance,
                    "hostname": request.hostname or "",
                    "pid": os.getpid(),
                },
            )
        except PoolBackendError as exc:
            self._wait_for_backend(ext, instance, state, exc)
        _log_reclaimed(acq)
        if acq.status is AcquireStatus.OK:
            waited = acq.waited if state.first is not None else 0.0
            signals.slot_acquired.send(
                sender=self, pool=acq.pool, instance=instance, task_id=token, waited=waited
            )
            return _Slot(pool=acq.pool, instance=instance, token=token)
        if acq.status is AcquireStatus.UNASSIGNED:
            self._unassigned(ext, instance, state)
            return None
        if acq.status is AcquireStatus.CLEARED:
            raise PoolClearedError(
                f"pool {acq.pool!r} was cleared while task {self.name}[{token}] waited for a "
                f"slot for instance {instance!r}; the task did not run",
                pool=acq.pool,
            )
        if acq.status is AcquireStatus.TIMEOUT:
            signals.slot_timeout.send(
                sender=self, pool=acq.pool, instance=instance, task_id=token, waited=acq.waited
            )
            raise PoolTimeoutError(
                f"no slot of pool {acq.pool!r} (limit {acq.limit}, {acq.in_use} in use) became "
                f"free for instance {instance!r} within its timeout of {acq.timeout:g} s; task "
                f"{self.name}[{token}] waited {acq.waited:.1f} s and did not run",
                pool=acq.pool,
                limit=acq.limit,
                waited=acq.waited,
                timeout=acq.timeout,
            )
        # FULL: wait and try again.
        next_state = state.next_attempt(
            first=acq.first, pool=acq.pool, uid=acq.uid, timeout=acq.timeout
        )
        countdown = next_countdown(
            state.attempts,
            acq.deadline - acq.now,
            minimum=settings.retry_backoff_min,
            maximum=settings.retry_backoff_max,
        )
        signals.slot_waiting.send(
            sender=self,
            pool=acq.pool,
            instance=instance,
            task_id=token,
            waited=acq.waited,
            countdown=countdown,
            deadline=acq.deadline,
        )
        raise _Wait(
            countdown,
            next_state,
            PoolFullError(
                f"waiting for a slot of pool {acq.pool!r}: {acq.in_use} of {acq.limit} in use; "
                f"waited {acq.waited:.1f} s of {acq.timeout:g} s, next try in {countdown:.2f} s"
            ),
        )

    def _wait_for_backend(
        self, ext: PoolsExtension, instance: str, state: WaitState, exc: PoolBackendError
    ) -> NoReturn:
        """Redis is unreachable: wait as if the pool were full; at the deadline, fail."""
        settings = ext.settings
        now = ext.store.clock.estimate()
        first = state.first if state.first is not None else now
        timeout = state.timeout if state.timeout is not None else DEFAULT_TIMEOUT
        waited = max(0.0, now - first)
        if waited >= timeout:
            raise PoolBackendTimeoutError(
                f"no slot for instance {instance!r}: the pools' Redis could not be reached "
                f"({exc}); task {self.name}[{self.request.id}] waited {waited:.1f} s of "
                f"{timeout:g} s and did not run",
                pool=state.pool,
                waited=waited,
                timeout=timeout,
            ) from exc
        countdown = next_countdown(
            state.attempts,
            first + timeout - now,
            minimum=settings.retry_backoff_min,
            maximum=settings.retry_backoff_max,
        )
        logger.warning(
            "celery-pools: Redis unreachable; task %s[%s] waits %.2f s before trying again: %s",
            self.name,
            self.request.id,
            countdown,
            exc,
        )
        raise _Wait(
            countdown,
            state.next_attempt(first=first, timeout=timeout),
            PoolFullError(f"waiting for the pools' Redis to come back: {exc}"),
        ) from exc

    def _unassigned(self, ext: PoolsExtension, instance: str, state: WaitState) -> None:
        if state.pool and ext.store.pool_uid(state.pool) != state.uid:
            raise PoolDeletedError(
                f"pool {state.pool!r} was deleted while task {self.name}[{self.request.id}] "
                f"waited for a slot for instance {instance!r}; the task did not run",
                pool=state.pool,
            )
        if ext.settings.require_assignment:
            raise UnassignedInstanceError(
                f"connector instance {instance!r} of task {self.name} has no pool "
                "(pools_require_assignment is on): assign it to a pool",
                instance=instance,
            )
        ext.warn_unassigned_once(instance, self.name)

    def _reschedule(
        self, request: Any, args: tuple[Any, ...], kwargs: dict[str, Any], wait: _Wait
    ) -> NoReturn:
        """Send this task again (same id, callbacks, chain, chord); end this run as RETRY."""
        headers = dict(request.headers or {})
        headers[HEADER] = wait.state.to_header()
        signature = self.signature_from_request(
            request,
            args,
            kwargs,
            countdown=wait.countdown,
            retries=request.retries,
            headers=headers,
        )
        options = {key: value for key, value in signature.options.items() if value is not None}
        # Task.apply_async, not self.apply_async: a mixin overriding apply_async (dedup or lock
        # libraries do) must not swallow the reschedule.
        Task.apply_async(self, signature.args, signature.kwargs, **options)
        raise Retry(exc=wait.reason, when=wait.countdown, sig=signature)

    def _leave(self, slot: _Slot) -> None:
        store = get_extension(self.app).store
        try:
            released = store.release(slot.token, slot.pool)
        except PoolBackendError as exc:
            logger.warning(
                "celery-pools: could not release the slot of task %s[%s] in pool %r (%s); it "
                "is reclaimed when its lease lapses",
                self.name,
                slot.token,
                slot.pool,
                exc,
            )
            return
        signals.slot_released.send(
            sender=self,
            pool=slot.pool,
            instance=slot.instance,
            task_id=slot.token,
            held=released.held,
        )


def _log_reclaimed(acq: Acquisition) -> None:
    for holder in acq.reclaimed:
        logger.warning(
            "celery-pools: reclaimed a slot of pool %r from task %s[%s] on %s (pid %s): its lease "
            "lapsed, so its process died or stopped renewing",
            acq.pool,
            holder.task_name or "?",
            holder.task_id,
            holder.hostname or "?",
            holder.pid,
        )
