"""``PooledTask``: a Celery task base class that holds a pool slot while its body runs."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Ignore, Retry
from celery.utils import uuid

from . import signals
from .errors import (
    PoolBackendError,
    PoolBackendTimeoutError,
    PoolClearedError,
    PoolConfigError,
    PoolDeletedError,
    PoolFullError,
    PoolTimeoutError,
    RateLimitTimeoutError,
    UnassignedInstanceError,
)
from .extension import PoolsExtension, get_extension, install
from .handoff import encode_message, hand_off, log_reclaimed, publish_handoffs
from .models import DEFAULT_TIMEOUT, check_instance_name, check_wait
from .publishing import Granted, park_at_publish, withdraw_grant
from .store import AcquireStatus, Acquisition
from .waiting import HEADER, WaitState, next_countdown

__all__ = ["InstanceResolver", "PooledTask"]

logger = logging.getLogger(__name__)

#: A function of the call's ``(args, kwargs)`` that returns the connector instance.
InstanceResolver = Callable[[tuple[Any, ...], dict[str, Any]], str]


@dataclass(frozen=True)
class _Call:
    """One execution: its request, connector instance and arguments."""

    request: Any
    instance: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class _Slot:
    pool: str
    instance: str
    token: str
    handed: bool = False  # claimed through a hand-off: others are likely parked behind it


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
    #: How this task waits for a slot: "countdown" or "handoff"; None follows the pool's mode.
    pool_wait: str | None = None

    @classmethod
    def on_bound(cls, app: Any) -> None:
        """Install celery-pools on the app the task is bound to."""
        install(app)

    # -- publication -------------------------------------------------------------------------

    def apply_async(  # noqa: PLR0917  (Celery's signature)
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: str | None = None,
        **options: Any,
    ) -> Any:
        """Send the task, as :meth:`celery.app.task.Task.apply_async` does.

        When the task's pool waits by hand-off and has a free slot nobody waits for, the slot
        is granted to the call and the message published as usual, with the grant (given back
        at once if the publication fails). When the pool is full, or tasks wait in it, the task
        is parked in the pool's FIFO in Redis instead of being published, and its message is
        published when a slot is handed to it; its result reads ``PENDING`` until it starts. See
        :mod:`celery_pools.publishing`.
        """
        # The id is chosen here, so that a call published as usual keeps the id it was parked
        # under (see park_at_publish).
        task_id = task_id or uuid()
        parked = park_at_publish(
            self,
            args,
            kwargs,
            task_id,
            {
                "producer": producer,
                "link": link,
                "link_error": link_error,
                "shadow": shadow,
                **options,
            },
        )
        granted = parked if isinstance(parked, Granted) else None
        if granted is not None:  # a slot is free: publish as usual, with the grant
            options["headers"] = {**(options.get("headers") or {}), HEADER: granted.header}
        elif parked is not None:
            return parked
        try:
            return super().apply_async(
                args,
                kwargs,
                task_id=task_id,
                producer=producer,
                link=link,
                link_error=link_error,
                shadow=shadow,
                **options,
            )
        except BaseException:
            if granted is not None:
                withdraw_grant(self, task_id, granted)  # the slot is not held for nothing
            raise

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
        call = _Call(
            request, self.resolve_connector_instance(tuple(args), dict(kwargs)), args, kwargs
        )
        state = WaitState.from_headers(request.headers)
        while True:
            try:
                return self._attempt(ext, call, state)
            except _Wait as wait:
                if not request.is_eager:
                    self._reschedule(request, args, kwargs, wait)
                # Eager mode (apply(), task_always_eager) has no broker to wait in: wait here.
                time.sleep(wait.countdown)
                state = wait.state

    def _attempt(self, ext: PoolsExtension, call: _Call, state: WaitState) -> _Slot | None:
        settings = ext.settings
        request, instance = call.request, call.instance
        token = request.id
        if state.fail:
            self._fail_parked(instance, state, token)
        wait: str = ""  # the pool's own mode
        if request.is_eager:
            wait = "countdown"  # no broker to park in: wait in-process
        elif type(self).pool_wait is not None:
            wait = check_wait(type(self).pool_wait, f"pool_wait of task {self.name}")
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
                unassigned_timeout=state.timeout or DEFAULT_TIMEOUT,
                wait=wait,
                handoff=state.handoff,
            )
        except PoolBackendError as exc:
            self._wait_for_backend(ext, instance, state, exc)
        log_reclaimed(acq.pool, acq.reclaimed)
        if state.handoff and acq.status in (AcquireStatus.RATE, AcquireStatus.TIMEOUT):
            # Its instance was paused or rate-limited after it was parked or granted: it gave
            # back the slot it was handed, and the next parked task gets it now.
            self._hand_on(ext, acq.pool)
        if acq.status is AcquireStatus.STALE:
            logger.info(
                "celery-pools: ignoring a stale copy of %s[%s]: its hand-off lapsed, or its slot "
                "is held or awaited under another hand-off",
                self.name,
                token,
            )
            raise Ignore()
        if acq.status is AcquireStatus.FULL and acq.reason == "handoff":
            self._park(ext, call, state, acq)
        if acq.status is AcquireStatus.OK:
            waited = acq.waited if state.first is not None else 0.0
            signals.slot_acquired.send(
                sender=self,
                pool=acq.pool,
                instance=instance,
                task_id=token,
                waited=waited,
                first=acq.first,
            )
            return _Slot(
                pool=acq.pool, instance=instance, token=token, handed=acq.reason == "handoff"
            )
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
            if acq.reason in ("rate", "paused"):
                held_by = "its rate limit" if acq.reason == "rate" else "a pause (back-off)"
                raise RateLimitTimeoutError(
                    f"instance {instance!r} was held back by {held_by} until the timeout of "
                    f"{acq.timeout:g} s; task {self.name}[{token}] waited {acq.waited:.1f} s "
                    "and did not run",
                    pool=acq.pool,
                    limit=acq.limit or None,
                    waited=acq.waited,
                    timeout=acq.timeout,
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
        # FULL or RATE: wait and try again (by countdown: no hand-off of its own any more).
        next_state = state.next_attempt(
            first=acq.first, pool=acq.pool, uid=acq.uid, timeout=acq.timeout, handoff=""
        )
        if acq.status is AcquireStatus.RATE:
            # The token is due at a known time: come back then, not earlier or later.
            countdown = max(0.0, min(acq.retry_after, acq.deadline - acq.now))
            reason = (
                f"waiting for the rate limit of instance {instance!r}: next call in "
                f"{acq.retry_after:.2f} s"
                if acq.reason == "rate"
                else f"instance {instance!r} is paused for {acq.retry_after:.1f} s more"
            )
        else:
            countdown = next_countdown(
                state.attempts,
                acq.deadline - acq.now,
                minimum=settings.retry_backoff_min,
                maximum=settings.retry_backoff_max,
            )
            reason = f"waiting for a slot of pool {acq.pool!r}: {acq.in_use} of {acq.limit} in use"
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
                f"{reason}; waited {acq.waited:.1f} s of {acq.timeout:g} s, next try in "
                f"{countdown:.2f} s"
            ),
        )

    def _hand_on(self, ext: PoolsExtension, pool: str) -> None:
        """Give ``pool``'s free slots to its oldest parked tasks now (else a reaper does, within
        its interval)."""
        with contextlib.suppress(PoolBackendError):
            hand_off(self.app, ext.store, pool, ext.settings.handoff_lease_seconds)

    def _park(
        self, ext: PoolsExtension, call: _Call, state: WaitState, acq: Acquisition
    ) -> NoReturn:
        """Park this task's message in the pool's hand-off FIFO and end this run as RETRY."""
        request, instance = call.request, call.instance
        next_state = state.next_attempt(
            first=acq.first, pool=acq.pool, uid=acq.uid, timeout=acq.timeout, handoff=""
        )
        headers = dict(request.headers or {})
        headers[HEADER] = next_state.to_header()
        signature = self.signature_from_request(
            request, call.args, call.kwargs, retries=request.retries, headers=headers
        )
        entry = encode_message(
            self.app,
            signature.task,
            signature.args,
            signature.kwargs,
            signature.options,
            info={"task_name": self.name, "instance": instance},
        )
        position, handoffs, reclaimed = ext.store.park(
            request.id,
            pool=acq.pool,
            first=acq.first,
            entry=entry,
            lease=ext.settings.handoff_lease_seconds,
        )
        log_reclaimed(acq.pool, reclaimed)
        # A slot may have come free between the two scripts; it went to the oldest parked task,
        # which may be this one: its message is published like any other hand-off.
        publish_handoffs(self.app, handoffs)
        if position < 0:  # the pool vanished in between: start again from the top
            raise _Wait(0.0, state, PoolFullError(f"pool {acq.pool!r} changed; trying again"))
        signals.slot_waiting.send(
            sender=self,
            pool=acq.pool,
            instance=instance,
            task_id=request.id,
            waited=acq.waited,
            countdown=None,
            deadline=acq.deadline,
        )
        raise Retry(
            exc=PoolFullError(
                f"parked for a hand-off in pool {acq.pool!r} ({acq.in_use} of {acq.limit} in use), "
                f"position {position or '?'}; waited {acq.waited:.1f} s of {acq.timeout:g} s"
            ),
            when=None,
        )

    def _fail_parked(self, instance: str, state: WaitState, token: str) -> NoReturn:
        """A parked task published by the reaper to end: fail it, body not run."""
        fail = state.fail or {}
        reason = fail.get("reason")
        pool = state.pool
        if reason == "deleted":
            raise PoolDeletedError(
                f"pool {pool!r} was deleted while task {self.name}[{token}] was parked for a slot "
                f"for instance {instance!r}; the task did not run",
                pool=pool,
            )
        if reason == "cleared":
            raise PoolClearedError(
                f"pool {pool!r} was cleared while task {self.name}[{token}] was parked for a slot "
                f"for instance {instance!r}; the task did not run",
                pool=pool,
            )
        at = fail.get("at")
        waited = max(0.0, at / 1000 - state.first) if at and state.first else None
        timeout = state.timeout
        signals.slot_timeout.send(
            sender=self, pool=pool, instance=instance, task_id=token, waited=waited
        )
        raise PoolTimeoutError(
            f"no slot of pool {pool!r} (limit {fail.get('limit', '?')}) became free for instance "
            f"{instance!r} within its timeout of {timeout or 0:g} s; task {self.name}[{token}] "
            f"waited {waited or 0:.1f} s and did not run",
            pool=pool,
            limit=fail.get("limit"),
            waited=waited,
            timeout=timeout,
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

    def pause_instance(self, seconds: float, instance: str | None = None) -> float:
        """Pause this task's connector instance for every worker for ``seconds``.

        For an API that says "back off" (HTTP 429 with ``Retry-After``): no task of the instance
        starts, on any worker, until the pause ends (a pause only ever grows). Call it from the
        task body; ``instance`` defaults to the running call's instance. Returns when the pause
        ends (Unix seconds, Redis clock).
        """
        if instance is None:
            request = self.request
            instance = self.resolve_connector_instance(
                tuple(request.args or ()), dict(request.kwargs or {})
            )
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise PoolConfigError.invalid("pause seconds", seconds, "a number of seconds >= 0")
        return get_extension(self.app).store.pause(check_instance_name(instance), seconds)

    def _leave(self, slot: _Slot) -> None:
        ext = get_extension(self.app)
        try:
            released = ext.store.release(
                slot.token,
                slot.pool,
                handoff_lease=ext.settings.handoff_lease_seconds,
                parked_likely=slot.handed,
            )
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
        log_reclaimed(slot.pool, released.reclaimed)
        publish_handoffs(self.app, released.handoffs)
        signals.slot_released.send(
            sender=self,
            pool=slot.pool,
            instance=slot.instance,
            task_id=slot.token,
            held=released.held,
        )
