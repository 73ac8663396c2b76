"""``PooledTask``: a Celery task base class that holds a pool slot while its body runs.

The class carries out what :mod:`celery_pools.admission` decides: it asks the store for a slot,
sends the signals, reschedules or parks the task, and releases the slot however the body ends,
except when its process is ended under it (then the worker abandons the slot: :mod:`.endings`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Ignore, Retry
from celery.utils import uuid
from celery.utils.dispatch import Signal

from . import admission, signals
from .admission import Backoff, Caller, Fail, Park, Requeued, Run, Stale, Standby, Unassigned, Wait
from .context import PoolsExtension, get_extension
from .errors import PoolBackendError, PoolConfigError
from .execution import (
    Execution,
    stand_by,
    store_started,
    time_to_wait_here,
    wait_here,
    waits_here,
)
from .handoff import outside_tasks
from .install import install
from .models import DEFAULT_TIMEOUT, check_instance_name, check_pause_seconds, check_wait
from .processes import being_terminated, own_start
from .producer import PublishedAsUsual, park_at_publish, withdraw_grant
from .store import Acquisition, Grant, StandbyBlock
from .waiting import HEADER, WaitState

__all__ = ["InstanceResolver", "PooledTask"]

logger = logging.getLogger(__name__)

#: A function of the call's ``(args, kwargs)`` that returns the connector instance.
InstanceResolver = Callable[[tuple[Any, ...], dict[str, Any]], str]


@dataclass(frozen=True)
class _Slot:
    pool: str
    caller: Caller
    execution: dict[str, Any]  # who holds it (hostname, pid, started, thread): who gives it back
    handed: bool = False  # claimed through a hand-off: others are likely parked behind it


class _AskAgain(Exception):
    """Internal: a standby's block ended; go on, with the same wait state, from ``answer`` (what
    the store said as the block ended; None: ask it again)."""

    def __init__(self, answer: Acquisition | None) -> None:
        super().__init__()
        self.answer = answer


class _Again(Exception):
    """Internal: wait as ``wait`` says, then try again."""

    def __init__(self, wait: Wait) -> None:
        super().__init__(wait.countdown)
        self.wait = wait


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
    :class:`~celery_pools.errors.PoolTimeoutError`. The slot is released however the body ends;
    when its process is ended under it (``SystemExit``: a hard time limit, a terminate), the
    worker abandons it instead, since its call may still be in flight.

    Calling the task object directly (``push_order(1)``) runs the body as a plain function,
    without a slot, as Celery does for every task called directly. ``apply()`` and eager mode
    take a slot, waiting in-process.
    """

    abstract = True
    #: Marks the class as pooled for the worker's main process (:func:`~.context.is_pooled`).
    celery_pools_pooled = True
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
        :mod:`celery_pools.producer`.
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
        granted = parked if isinstance(parked, Grant) else None
        if granted is not None:  # a slot is free: publish as usual, with the grant
            options["headers"] = {**(options.get("headers") or {}), HEADER: granted.header()}
        elif isinstance(parked, PublishedAsUsual):  # the pool is seen ample: as usual, stamped
            options["headers"] = {**(options.get("headers") or {}), HEADER: parked.header()}
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
        except SystemExit:
            # The process is being ended under the body: billiard turns the SIGTERM of a hard
            # time limit or a terminate into SystemExit (a SIGKILL follows). The call may still
            # be in flight at the server: the worker's main process abandons the slot (its
            # grace keeps it taken; in a cold shutdown, its lease); released here, the next
            # call would start beside it.
            if being_terminated():
                slot = None
            raise
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
        execution = Execution(request, Caller(self.name, request.id, instance), args, kwargs)
        state = WaitState.from_headers(request.headers)
        if not state.waited and request.eta:  # its first message: the ETA it runs with
            state = replace(state, eta=str(request.eta))
        answer = None
        while True:
            try:
                return self._attempt(ext, execution, state, answer)
            except _AskAgain as again:
                answer = again.answer
                continue
            except _Again as again:
                answer = None
                wait = again.wait
                # Eager mode (apply(), task_always_eager) has no broker to wait in: wait here.
                if not request.is_eager and not waits_here(self, ext, execution, wait.countdown):
                    self._reschedule(execution, wait)
                wait_here(self, execution, wait)
                state = wait.state

    def _attempt(
        self,
        ext: PoolsExtension,
        execution: Execution,
        state: WaitState,
        answer: Acquisition | None = None,
    ) -> _Slot | None:
        """Ask the store for a slot (unless ``answer`` is what it said already) and carry out
        what admission decides."""
        settings, caller = ext.settings, execution.caller
        backoff = Backoff(settings.retry_backoff_min, settings.retry_backoff_max)
        if state.fail:
            self._fail(caller, admission.parked_ending(state, caller))
        # Which execution asks: another one of the same task id is a copy. A pid's start time
        # tells it from a reused one.
        named = {
            "hostname": execution.request.hostname or "",
            "pid": os.getpid(),
            "started": own_start(),
            "thread": str(threading.get_ident()),
        }

        def ask(block: StandbyBlock | None = None) -> Acquisition:
            return ext.store.acquire(
                caller.instance,
                caller.token,
                lease=settings.lease_seconds,
                first=state.first,
                waited_uid=state.uid,
                info={"task_name": self.name, "instance": caller.instance, **named},
                unassigned_timeout=state.timeout or DEFAULT_TIMEOUT,
                wait=self._wait_mode(execution.request),
                handoff=state.handoff,
                standby=time_to_wait_here(
                    self, ext, execution, settings.standby_seconds, block.seconds if block else 0
                ),
                published=execution.published(state),
                block=block,
            )

        try:
            acq = answer if answer is not None else ask()
            if ext.declared_now(acq, caller.instance):  # Redis was down as its worker started
                acq = ask()
        except PoolBackendError as exc:
            self._backend_down(ext, caller, state, exc, backoff)
        ext.dispatcher.settle(acq.effects)
        if admission.must_hand_off(acq, state):
            # Its instance was paused or rate-limited after it was parked or granted: it gave
            # back the slot it was handed, and the next parked task gets it now (else a reaper
            # does, within its interval).
            with contextlib.suppress(PoolBackendError):
                ext.dispatcher.hand_off(acq.pool)
        decision = admission.admit(acq, state, caller, backoff)
        match decision:
            case Run():
                if state.waited:
                    # The request it would have had without waiting: a countdown's message has
                    # an ETA of its own, a hand-off's none.
                    execution.request.eta = state.eta or None
                if execution.waited_here:
                    store_started(self, execution.request)
                self._signal(
                    signals.slot_acquired,
                    caller,
                    decision.pool,
                    waited=decision.waited,
                    first=decision.first,
                    granted=decision.granted,
                )
                return _Slot(decision.pool, caller, named, decision.handed)
            case Stale():
                logger.info(
                    "celery-pools: ignoring a stale copy of %s: its hand-off lapsed, or its slot "
                    "is held or awaited under another hand-off",
                    caller,
                )
                raise Ignore()
            case Unassigned():
                self._unassigned(ext, caller, state)
                if execution.waited_here:  # its pool went while it waited here: it runs now
                    store_started(self, execution.request)
                return None
            case Park():
                self._park(ext, execution, decision, state)
            case Standby():
                raise _AskAgain(stand_by(self, execution, decision, state, ask))
            case Requeued():
                self._waiting(caller, decision.acquisition, None)
                raise Retry(exc=decision.reason, when=None)
            case Wait():
                if decision.waiting is not None:
                    self._waiting(caller, decision.waiting, decision.countdown)
                raise _Again(decision)
            case Fail():
                self._fail(caller, decision)
        raise AssertionError(f"unknown admission decision {decision!r}")  # pragma: no cover

    def _wait_mode(self, request: Any) -> str:
        """How this execution waits: "" for its pool's own mode."""
        if request.is_eager:
            return "countdown"  # no broker to park in: wait in-process
        if type(self).pool_wait is not None:
            return check_wait(type(self).pool_wait, f"pool_wait of task {self.name}")
        return ""

    def _signal(self, signal: Signal, caller: Caller, pool: str, **fields: Any) -> None:
        """Send one of celery-pools' signals about this execution."""
        signal.send(
            sender=self, pool=pool, instance=caller.instance, task_id=caller.token, **fields
        )

    def _waiting(self, caller: Caller, acq: Acquisition, countdown: float | None) -> None:
        """``slot_waiting``: sent again in ``countdown`` seconds, or parked (None)."""
        self._signal(
            signals.slot_waiting,
            caller,
            acq.pool,
            waited=acq.waited,
            countdown=countdown,
            deadline=acq.deadline,
        )

    def _fail(self, caller: Caller, fail: Fail) -> NoReturn:
        if fail.timed_out:
            self._signal(signals.slot_timeout, caller, fail.pool, waited=fail.waited)
        raise fail.error

    def _park(
        self, ext: PoolsExtension, execution: Execution, park: Park, state: WaitState
    ) -> NoReturn:
        """Park this task's message in the pool's hand-off FIFO and end this run as RETRY."""
        request, caller, acq = execution.request, execution.caller, park.acquisition
        headers = dict(request.headers or {})
        headers[HEADER] = park.state.to_header()
        signature = self.signature_from_request(
            request, execution.args, execution.kwargs, retries=request.retries, headers=headers
        )
        entry = ext.dispatcher.encode(
            signature.task,
            signature.args,
            signature.kwargs,
            signature.options,
            info={"task_name": self.name, "instance": caller.instance},
        )
        position, effects = ext.store.park(
            caller.token,
            pool=acq.pool,
            first=acq.first,
            entry=entry,
            place=execution.published(state),
        )
        # A slot may have come free between the two scripts; it went to the oldest parked task,
        # which may be this one: its message is published like any other hand-off.
        ext.dispatcher.settle(effects)
        if position < 0:  # the pool vanished in between: start again from the top
            raise _Again(admission.pool_changed(acq, state))
        self._waiting(caller, acq, None)
        raise Retry(exc=admission.parked_reason(acq, position), when=None)

    def _backend_down(
        self,
        ext: PoolsExtension,
        caller: Caller,
        state: WaitState,
        exc: PoolBackendError,
        backoff: Backoff,
    ) -> NoReturn:
        """Redis is unreachable: wait as if the pool were full; at the deadline, fail."""
        decision = admission.backend_down(state, caller, ext.store.clock.estimate(), exc, backoff)
        if isinstance(decision, Fail):
            raise decision.error from exc
        logger.warning(
            "celery-pools: Redis unreachable; %s waits %.2f s before trying again: %s",
            caller,
            decision.countdown,
            exc,
        )
        raise _Again(decision) from exc

    def _unassigned(self, ext: PoolsExtension, caller: Caller, state: WaitState) -> None:
        if state.pool and ext.store.pool_uid(state.pool) != state.uid:
            raise admission.deleted_while_waiting(state.pool, caller)
        if ext.settings.require_assignment:
            raise admission.unassigned_error(caller)
        ext.warn_unassigned_once(caller.instance, self.name)

    def _reschedule(self, execution: Execution, wait: Wait) -> NoReturn:
        """Send this task again (same id, callbacks, chain, chord); end this run as RETRY."""
        request = execution.request
        headers = dict(request.headers or {})
        due = get_extension(self.app).store.clock.estimate() + wait.countdown
        headers[HEADER] = replace(wait.state, due=due).to_header()
        signature = self.signature_from_request(
            request,
            execution.args,
            execution.kwargs,
            countdown=wait.countdown,
            retries=request.retries,
            headers=headers,
        )
        options = {key: value for key, value in signature.options.items() if value is not None}
        # Task.apply_async, not self.apply_async: a mixin overriding apply_async (dedup or lock
        # libraries do) must not swallow the reschedule. Outside this task: it is not its own
        # parent (a root task keeps no parent, a chain member its own).
        with outside_tasks():
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
        seconds = check_pause_seconds(seconds)
        return get_extension(self.app).store.pause(check_instance_name(instance), seconds)

    def _leave(self, slot: _Slot) -> None:
        ext = get_extension(self.app)
        dispatcher = ext.dispatcher
        try:
            released = dispatcher.store.release(
                slot.caller.token, slot.pool, parked_likely=slot.handed, execution=slot.execution
            )
        except PoolBackendError as exc:
            logger.warning(
                "celery-pools: could not release the slot of task %s[%s] in pool %r (%s); it "
                "is reclaimed when its lease lapses",
                self.name,
                slot.caller.token,
                slot.pool,
                exc,
            )
            return
        dispatcher.settle(released.effects)
        if released.elsewhere:
            # Its lease lapsed while the body ran (the worker's main process could not renew
            # it), and another execution of the task id took the slot since: it is theirs.
            logger.warning(
                "celery-pools: the slot of task %s[%s] in pool %r lapsed while it ran and is "
                "held by another execution of it now; left to that one (a lease of %s s was "
                "not renewed in time: see pools_lease_seconds)",
                self.name,
                slot.caller.token,
                slot.pool,
                ext.settings.lease_seconds,
            )
            return
        self._signal(signals.slot_released, slot.caller, slot.pool, held=released.held)
