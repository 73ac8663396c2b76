"""Exceptions raised by celery-pools.

Every exception derives from :class:`PoolError`, so ``except PoolError`` catches
anything this package raises on purpose::

    PoolError
    ├── PoolConfigError            bad input: names the field, the value and what is allowed
    │                              (also a ValueError)
    ├── PoolNotFoundError          no pool of that name (also a LookupError)
    ├── PoolExistsError            a pool of that name already exists
    ├── SlotNotFoundError          the task holds no slot to release (also a LookupError)
    ├── SlotInUseError             the task's slot is held by a running execution
    ├── UnassignedInstanceError    the instance has no pool and ``pools_require_assignment`` is on
    ├── PoolBackendError           Redis could not be reached or failed; the cause is chained
    ├── PoolFullError              no free slot: the reason stored while a task waits (state RETRY)
    ├── PoolTimeoutError           no slot became free before the pool's timeout
    │   ├── RateLimitTimeoutError      ... because the instance's rate limit (or a pause) held it
    │   └── PoolBackendTimeoutError    ... because Redis could not be reached
    └── PoolClearedError           the pool was cleared while the task waited
        └── PoolDeletedError       the pool was deleted while the task waited

The exceptions a task can end with (:class:`PoolTimeoutError`, :class:`PoolClearedError` and their
subclasses) keep their whole message in ``args[0]`` so that a result backend can rebuild them from
the message alone; the structured fields (``pool``, ``limit``...) are extras for code that catches
them in the worker.
"""

from __future__ import annotations

__all__ = [
    "PoolBackendError",
    "PoolBackendTimeoutError",
    "PoolClearedError",
    "PoolConfigError",
    "PoolDeletedError",
    "PoolError",
    "PoolExistsError",
    "PoolFullError",
    "PoolNotFoundError",
    "PoolTimeoutError",
    "RateLimitTimeoutError",
    "SlotInUseError",
    "SlotNotFoundError",
    "UnassignedInstanceError",
]


class PoolError(Exception):
    """Base class of every error raised by celery-pools."""


class PoolConfigError(PoolError, ValueError):
    """A value given to celery-pools is not allowed.

    ``field`` names what was wrong, ``value`` is what was given and ``allowed`` says what would
    have been accepted.
    """

    def __init__(self, message: str, *, field: str = "", value: object = None, allowed: str = ""):
        super().__init__(message)
        self.field = field
        self.value = value
        self.allowed = allowed

    @classmethod
    def invalid(cls, field: str, value: object, allowed: str) -> PoolConfigError:
        """Build the standard message: ``invalid <field> <value!r>: <allowed>``."""
        return cls(
            f"invalid {field} {value!r}: {allowed}", field=field, value=value, allowed=allowed
        )


class PoolNotFoundError(PoolError, LookupError):
    """No pool has the given name."""

    def __init__(self, message: str, *, pool: str = ""):
        super().__init__(message)
        self.pool = pool


class PoolExistsError(PoolError):
    """A pool with the given name already exists."""

    def __init__(self, message: str, *, pool: str = ""):
        super().__init__(message)
        self.pool = pool


class SlotNotFoundError(PoolError, LookupError):
    """An operator asked to release the slot of a task that holds none (nor an abandoned one)."""

    def __init__(self, message: str, *, task_id: str = ""):
        super().__init__(message)
        self.task_id = task_id


class SlotInUseError(PoolError):
    """An operator asked to release a slot whose holder is running (its lease is renewed): its
    call may be in flight. Releasing it anyway needs ``force``."""

    def __init__(self, message: str, *, task_id: str = "", pool: str = ""):
        super().__init__(message)
        self.task_id = task_id
        self.pool = pool


class UnassignedInstanceError(PoolError):
    """A pooled task's connector instance is not associated with any pool.

    Raised only when the ``pools_require_assignment`` setting is on; otherwise such a task runs
    without a limit and a warning is logged once per instance.
    """

    def __init__(self, message: str, *, instance: str = ""):
        super().__init__(message)
        self.instance = instance


class PoolBackendError(PoolError):
    """Redis could not be reached or answered with an error; the Redis error is the cause."""


class PoolFullError(PoolError):
    """The pool had no free slot.

    Not raised to callers: it is the reason Celery stores (state ``RETRY``) while a task waits.
    """


class PoolTimeoutError(PoolError):
    """No slot became free before the pool's timeout; the task body never ran."""

    def __init__(
        self,
        message: str,
        *,
        pool: str = "",
        limit: int | None = None,
        waited: float | None = None,
        timeout: float | None = None,
    ):
        super().__init__(message)
        self.pool = pool
        self.limit = limit
        self.waited = waited
        self.timeout = timeout


class RateLimitTimeoutError(PoolTimeoutError):
    """The deadline passed while the instance's rate limit (or a pause) held the task back."""


class PoolBackendTimeoutError(PoolTimeoutError):
    """The deadline passed while the pools' Redis could not be reached; the task body never ran."""


class PoolClearedError(PoolError):
    """The pool was cleared while the task waited for a slot; the task body never ran."""

    def __init__(self, message: str, *, pool: str = ""):
        super().__init__(message)
        self.pool = pool


class PoolDeletedError(PoolClearedError):
    """The pool was deleted while the task waited for a slot; the task body never ran."""
