"""The admission decision: what a pooled task does with the store's answer to its request.

Pure: no Redis, no Celery, no signals. :class:`~celery_pools.task.PooledTask` asks the store,
hands the answer to :func:`admit` and carries out the decision: run the body with the slot, park
for a hand-off, stand by (block until a slot is handed to it) or end a standby that was sent back
to the FIFO, wait (sent again with a countdown), fail with a typed error, ignore a stale copy, or
run without a limit when the instance has no pool. Every error a task ends with, its body not
run, is worded here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .errors import (
    PoolBackendError,
    PoolBackendTimeoutError,
    PoolClearedError,
    PoolDeletedError,
    PoolError,
    PoolFullError,
    PoolTimeoutError,
    RateLimitTimeoutError,
    UnassignedInstanceError,
)
from .models import DEFAULT_TIMEOUT
from .store import AcquireStatus, Acquisition
from .waiting import WaitState, next_countdown

__all__ = [
    "Backoff",
    "Caller",
    "Decision",
    "Fail",
    "Park",
    "Requeued",
    "Run",
    "Stale",
    "Standby",
    "Unassigned",
    "Wait",
    "admit",
    "backend_down",
    "deleted_while_waiting",
    "must_hand_off",
    "parked_ending",
    "parked_reason",
    "pool_changed",
    "unassigned_error",
]


@dataclass(frozen=True)
class Caller:
    """Who asks: the task's name, its id (the slot's token) and its connector instance."""

    task: str
    token: str
    instance: str

    def __str__(self) -> str:
        return f"task {self.task}[{self.token}]"


@dataclass(frozen=True)
class Backoff:
    """The bounds of the countdown between two attempts (``pools_retry_backoff_min/max``)."""

    minimum: float
    maximum: float
    rng: random.Random | None = None

    def countdown(self, attempt: int, remaining: float) -> float:
        """Seconds until attempt ``attempt + 1``, never past the ``remaining`` time."""
        return next_countdown(
            attempt, remaining, minimum=self.minimum, maximum=self.maximum, rng=self.rng
        )

    def paced(self, turn: float, remaining: float) -> float:
        """Seconds until the next attempt of a waiter whose turn is likely in ``turn`` seconds:
        that, give or take a fifth (so waiters do not come back together), at least 5 ms, at
        most the backoff's maximum, never past the ``remaining`` time."""
        draw = (self.rng or random).uniform(0.8, 1.2) * turn
        return max(0.0, min(max(draw, 0.005), self.maximum, remaining))


@dataclass(frozen=True)
class Run:
    """The slot is taken: run the body, then release it. ``waited`` seconds since ``first``;
    the pool gave the slot at ``granted``."""

    pool: str
    handed: bool
    waited: float
    first: float
    granted: float


@dataclass(frozen=True)
class Park:
    """Park the task's message in the pool's hand-off FIFO, with ``state`` for its next run."""

    state: WaitState
    acquisition: Acquisition


@dataclass(frozen=True)
class Standby:
    """Block as a standby for ``seconds`` at most (until a freed slot is handed to it), then ask
    again with the same wait state."""

    seconds: float
    acquisition: Acquisition


@dataclass(frozen=True)
class Requeued:
    """The standby's block ended with no slot: it is back at its place in the FIFO, and this run
    ends as a parked task's does (``reason`` is what its ``RETRY`` state stores)."""

    reason: PoolFullError
    acquisition: Acquisition


@dataclass(frozen=True)
class Wait:
    """Send the task again in ``countdown`` seconds, with ``state``; ``reason`` is what its
    ``RETRY`` state stores. ``waiting`` is the answer it waits on (none when Redis was not
    reached, or the pool changed under it)."""

    countdown: float
    state: WaitState
    reason: PoolFullError
    waiting: Acquisition | None = None


@dataclass(frozen=True)
class Fail:
    """End the task with ``error``, its body not run; ``timed_out`` when it gave up at its
    deadline in ``pool``, having waited ``waited`` seconds."""

    error: PoolError
    timed_out: bool = False
    pool: str = ""
    waited: float | None = None


@dataclass(frozen=True)
class Stale:
    """A stale copy of a handed-off message: it must not run (its task runs, or ran, elsewhere)."""


@dataclass(frozen=True)
class Unassigned:
    """The instance has no pool: the task runs without a limit (or fails, if pools are required,
    or if the pool it waited in was deleted)."""


Decision = Run | Park | Standby | Requeued | Wait | Fail | Stale | Unassigned


def _did_not_run(cause: str, caller: Caller, waited: float, of: float | None = None) -> str:
    """``<cause>; task T[id] waited 1.0 s [of 30 s] and did not run``."""
    limit = f" of {of:g} s" if of is not None else ""
    return f"{cause}; {caller} waited {waited:.1f} s{limit} and did not run"


def _ended_by(pool: str, what: str, caller: Caller, how: str) -> str:
    """``pool 'p' was <what> while task T[id] <how> a slot for instance 'i'; ...``."""
    return (
        f"pool {pool!r} was {what} while {caller} {how} a slot for instance "
        f"{caller.instance!r}; the task did not run"
    )


def admit(acq: Acquisition, state: WaitState, caller: Caller, backoff: Backoff) -> Decision:
    """What the task does with ``acq``, the store's answer to its attempt in wait ``state``."""
    status = acq.status
    if status is AcquireStatus.STALE:
        return Stale()
    if status is AcquireStatus.OK:
        waited = acq.waited if state.first is not None else 0.0
        return Run(
            acq.pool,
            handed=acq.reason == "handoff",
            waited=waited,
            first=acq.first,
            granted=acq.granted,
        )
    if status is AcquireStatus.UNASSIGNED:
        return Unassigned()
    if status is AcquireStatus.CLEARED:
        message = _ended_by(acq.pool, "cleared", caller, "waited for")
        return Fail(PoolClearedError(message, pool=acq.pool))
    if status is AcquireStatus.TIMEOUT:
        return Fail(_timeout_error(acq, caller), timed_out=True, pool=acq.pool, waited=acq.waited)
    next_state = state.next_attempt(
        first=acq.first, pool=acq.pool, uid=acq.uid, timeout=acq.timeout, handoff=""
    )
    if status is AcquireStatus.FULL and acq.reason == "handoff":
        return Park(next_state, acq)
    if status is AcquireStatus.FULL and acq.reason == "standby":
        return Standby(max(0.0, min(acq.retry_after, acq.deadline - acq.now)), acq)
    if status is AcquireStatus.FULL and acq.reason == "requeued":
        return Requeued(
            PoolFullError(
                f"back in the hand-off FIFO of pool {acq.pool!r} ({acq.in_use} of {acq.limit} in "
                f"use) after standing by; waited {acq.waited:.1f} s of {acq.timeout:g} s"
            ),
            acq,
        )
    # FULL or RATE: wait and try again (by countdown: no hand-off of its own any more).
    if status is AcquireStatus.RATE:
        # The token is due at a known time: come back then, not earlier or later.
        countdown = max(0.0, min(acq.retry_after, acq.deadline - acq.now))
        reason = (
            f"waiting for the rate limit of instance {caller.instance!r}: next call in "
            f"{acq.retry_after:.2f} s"
            if acq.reason == "rate"
            else f"instance {caller.instance!r} is paused for {acq.retry_after:.1f} s more"
        )
    else:
        remaining = acq.deadline - acq.now
        countdown = (
            backoff.paced(acq.retry_after, remaining)
            if acq.retry_after > 0 and acq.reason == "countdown"
            else backoff.countdown(state.attempts, remaining)
        )
        reason = (
            f"another execution of {caller} holds its slot of pool {acq.pool!r} (its message "
            "was delivered again while it runs): waiting for it to end"
            if acq.reason == "copy"
            else f"waiting for a slot of pool {acq.pool!r}: {acq.in_use} of {acq.limit} in use"
        )
    full = PoolFullError(
        f"{reason}; waited {acq.waited:.1f} s of {acq.timeout:g} s, next try in {countdown:.2f} s"
    )
    return Wait(countdown, next_state, full, waiting=acq)


def _timeout_error(acq: Acquisition, caller: Caller) -> PoolTimeoutError:
    error: type[PoolTimeoutError] = PoolTimeoutError
    limit: int | None = acq.limit
    cause = (
        f"no slot of pool {acq.pool!r} (limit {acq.limit}, {acq.in_use} in use) became free for "
        f"instance {caller.instance!r} within its timeout of {acq.timeout:g} s"
    )
    if acq.reason in ("rate", "paused"):
        error, limit = RateLimitTimeoutError, acq.limit or None
        held_by = "its rate limit" if acq.reason == "rate" else "a pause (back-off)"
        cause = (
            f"instance {caller.instance!r} was held back by {held_by} until the timeout of "
            f"{acq.timeout:g} s"
        )
    return error(
        _did_not_run(cause, caller, acq.waited),
        pool=acq.pool,
        limit=limit,
        waited=acq.waited,
        timeout=acq.timeout,
    )


def must_hand_off(acq: Acquisition, state: WaitState) -> bool:
    """Whether the task gave back a slot it was handed or granted (its instance was paused or
    rate-limited since), so that the pool's next parked task must get it now."""
    return bool(state.handoff) and acq.status in (AcquireStatus.RATE, AcquireStatus.TIMEOUT)


def parked_reason(acq: Acquisition, position: int) -> PoolFullError:
    """What the ``RETRY`` state of a task parked at ``position`` in the FIFO says."""
    return PoolFullError(
        f"parked for a hand-off in pool {acq.pool!r} ({acq.in_use} of {acq.limit} in use), "
        f"position {position or '?'}; waited {acq.waited:.1f} s of {acq.timeout:g} s"
    )


def pool_changed(acq: Acquisition, state: WaitState) -> Wait:
    """The pool vanished between the attempt and the park: start again from the top."""
    return Wait(0.0, state, PoolFullError(f"pool {acq.pool!r} changed; trying again"))


def parked_ending(state: WaitState, caller: Caller) -> Fail:
    """A parked task published by a reaper to end (``state.fail``): how it fails."""
    fail = state.fail or {}
    reason, pool = fail.get("reason"), state.pool
    if reason == "deleted":
        message = _ended_by(pool, "deleted", caller, "was parked for")
        return Fail(PoolDeletedError(message, pool=pool))
    if reason == "cleared":
        message = _ended_by(pool, "cleared", caller, "was parked for")
        return Fail(PoolClearedError(message, pool=pool))
    at = fail.get("at")
    waited = max(0.0, at / 1000 - state.first) if at and state.first else None
    cause = (
        f"no slot of pool {pool!r} (limit {fail.get('limit', '?')}) became free for instance "
        f"{caller.instance!r} within its timeout of {state.timeout or 0:g} s"
    )
    error = PoolTimeoutError(
        _did_not_run(cause, caller, waited or 0),
        pool=pool,
        limit=fail.get("limit"),
        waited=waited,
        timeout=state.timeout,
    )
    return Fail(error, timed_out=True, pool=pool, waited=waited)


def backend_down(
    state: WaitState, caller: Caller, now: float, exc: PoolBackendError, backoff: Backoff
) -> Wait | Fail:
    """Redis is unreachable at ``now`` (estimated Redis clock): wait as if the pool were full;
    past the deadline, fail."""
    first = state.first if state.first is not None else now
    timeout = state.timeout if state.timeout is not None else DEFAULT_TIMEOUT
    waited = max(0.0, now - first)
    if waited >= timeout:
        cause = (
            f"no slot for instance {caller.instance!r}: the pools' Redis could not be reached "
            f"({exc})"
        )
        error = PoolBackendTimeoutError(
            _did_not_run(cause, caller, waited, of=timeout),
            pool=state.pool,
            waited=waited,
            timeout=timeout,
        )
        return Fail(error)
    countdown = backoff.countdown(state.attempts, first + timeout - now)
    reason = PoolFullError(f"waiting for the pools' Redis to come back: {exc}")
    return Wait(countdown, state.next_attempt(first=first, timeout=timeout), reason)


def deleted_while_waiting(pool: str, caller: Caller) -> PoolDeletedError:
    """The pool the task waited in was deleted (its instance has no pool now)."""
    return PoolDeletedError(_ended_by(pool, "deleted", caller, "waited for"), pool=pool)


def unassigned_error(caller: Caller) -> UnassignedInstanceError:
    """The instance has no pool and ``pools_require_assignment`` is on."""
    return UnassignedInstanceError(
        f"connector instance {caller.instance!r} of task {caller.task} has no pool "
        "(pools_require_assignment is on): assign it to a pool",
        instance=caller.instance,
    )
