"""The values celery-pools works with: pools, their holders and waiters, and their status.

Every check on user input lives here, so the Python API, the management tasks and the command line
refuse bad values with the same :class:`~celery_pools.errors.PoolConfigError` message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import PoolConfigError

__all__ = [
    "DEFAULT_HANDOFF_LEASE",
    "DEFAULT_LEASE",
    "DEFAULT_STANDBY_MAX",
    "DEFAULT_STANDBY_SECONDS",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WAIT_IN_PROCESS",
    "INSTANCE_NAME_PATTERN",
    "MAX_TIMEOUT",
    "POOL_NAME_PATTERN",
    "WAIT_MODES",
    "AbandonedSlot",
    "Holder",
    "Model",
    "Pool",
    "PoolSpec",
    "PoolStatus",
    "WaitMode",
    "Waiter",
    "check_instance_name",
    "check_limit",
    "check_pause_seconds",
    "check_pool_name",
    "check_timeout",
    "check_wait",
]

#: Seconds a task waits for a slot when the pool does not say otherwise.
DEFAULT_TIMEOUT = 30.0
#: Seconds a task handed a slot has to start and claim it (``pools_handoff_lease_seconds``).
DEFAULT_HANDOFF_LEASE = 10.0
#: Standbys a hand-off pool keeps at most (``pools_standby_max``): none unless a deployment asks.
DEFAULT_STANDBY_MAX = 0
#: Seconds a standby blocks at most before it goes back to the FIFO (``pools_standby_seconds``).
DEFAULT_STANDBY_SECONDS = 2.0
#: The longest countdown a waiter spends in its worker process instead of being sent again
#: (``pools_wait_in_process_seconds``).
DEFAULT_WAIT_IN_PROCESS = 1.0
#: Seconds a holder's slot stays taken without a renewal (``pools_lease_seconds``).
DEFAULT_LEASE = 60.0
#: The longest a pool may let a task wait for a slot, in seconds.
MAX_TIMEOUT = 300.0
#: Pool names: a letter or digit, then letters, digits, ``.``, ``_`` or ``-``; 1 to 64 characters.
POOL_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
#: Connector instance names: as pool names, also ``:``, ``@`` and ``/``; 1 to 200 characters.
INSTANCE_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,199}"

#: How a pool's tasks wait for a slot: re-sent with a countdown, or parked for a hand-off.
WAIT_MODES = ("countdown", "handoff")
WaitMode = Literal["countdown", "handoff"]

_POOL_NAME_RE = re.compile(POOL_NAME_PATTERN)
_INSTANCE_NAME_RE = re.compile(INSTANCE_NAME_PATTERN)


def check_pool_name(value: object, field: str = "pool name") -> str:
    """Return ``value`` if it is a valid pool name, else raise :class:`PoolConfigError`."""
    if not isinstance(value, str) or not _POOL_NAME_RE.fullmatch(value):
        raise PoolConfigError.invalid(
            field,
            value,
            "a pool name is 1-64 characters: a letter or digit, then letters, digits, '.', '_' "
            "or '-'",
        )
    return value


def check_instance_name(value: object, field: str = "connector instance") -> str:
    """Return ``value`` if it is a valid connector instance name, else raise."""
    if not isinstance(value, str) or not _INSTANCE_NAME_RE.fullmatch(value):
        raise PoolConfigError.invalid(
            field,
            value,
            "an instance name is 1-200 characters: a letter or digit, then letters, digits, "
            "'.', '_', '-', ':', '@' or '/'",
        )
    return value


def check_limit(value: object, field: str = "limit") -> int:
    """Return ``value`` if it is a valid pool limit (an integer >= 1), else raise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PoolConfigError.invalid(field, value, "a limit is a whole number of slots >= 1")
    return value


def check_timeout(value: object, field: str = "timeout") -> float:
    """Return ``value`` as float seconds if it is a valid pool timeout (0 to 300), else raise."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= MAX_TIMEOUT
    ):
        raise PoolConfigError.invalid(
            field, value, f"a timeout is a number of seconds from 0 to {MAX_TIMEOUT:g}"
        )
    return float(value)


def check_pause_seconds(value: object) -> float:
    """Return ``value`` as float seconds if it is a valid pause of an instance, else raise."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise PoolConfigError.invalid("pause seconds", value, "a number of seconds >= 0")
    return float(value)


def check_wait(value: object, field: str = "wait") -> WaitMode:
    """Return ``value`` if it is a waiting mode ("countdown" or "handoff"), else raise."""
    if value not in WAIT_MODES:
        raise PoolConfigError.invalid(field, value, "the waiting mode is 'countdown' or 'handoff'")
    return value  # type: ignore[return-value]


def _config_error(exc: ValidationError, where: str | None) -> PoolConfigError:
    """Turn pydantic's error into ours: the first problem, with its field and value (the field
    inside ``where``, when the caller names the value being parsed)."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    if where:
        field = f"{where}.{field}" if field else where
    if where and first["type"] == "missing":
        return PoolConfigError.invalid(field, None, f"{first['loc'][-1]} is required")
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, PoolConfigError):
        # Our own check's error; inside a value (or a document: pools.b.limit) it names where.
        nested = where or len(first["loc"]) > 1
        return PoolConfigError.invalid(field, cause.value, cause.allowed) if nested else cause
    return PoolConfigError.invalid(field or "value", first.get("input"), first["msg"])


_M = TypeVar("_M", bound="Model")


class Model(BaseModel):
    """The base of every value celery-pools validates: immutable, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def parse(cls: type[_M], data: Any, *, where: str | None = None) -> _M:
        """Validate ``data`` (a mapping) into this model; bad input raises PoolConfigError.

        ``where`` is how the caller names the value (``pools_declare['api']``): an error then
        names the field inside it (``pools_declare['api'].limit``), and data that is not a
        mapping, or has keys the model does not know, is refused naming ``where`` itself.
        """
        if where is not None:
            allowed = " and ".join(
                ", ".join(repr(name) for name in cls.model_fields).rsplit(", ", 1)
            )
            if not isinstance(data, Mapping):
                raise PoolConfigError.invalid(where, data, f"a mapping with {allowed}")
            unknown = set(data) - set(cls.model_fields)
            if unknown:
                raise PoolConfigError.invalid(
                    where, sorted(unknown), f"the allowed keys are {allowed}"
                )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise _config_error(exc, where) from None


class _PoolSettingsValidation(Model):
    """The checks of a pool's limit, timeout and waiting mode, for every model that has them."""

    @field_validator("limit", mode="before", check_fields=False)
    @classmethod
    def _limit(cls, value: object) -> int:
        return check_limit(value)

    @field_validator("timeout", mode="before", check_fields=False)
    @classmethod
    def _timeout(cls, value: object) -> float:
        return check_timeout(value)

    @field_validator("wait", mode="before", check_fields=False)
    @classmethod
    def _wait(cls, value: object) -> WaitMode:
        return check_wait(value)


class Pool(_PoolSettingsValidation):
    """A connection pool's definition: its name, how many slots it has, how long tasks wait and
    how they wait ("countdown" or "handoff")."""

    name: str
    limit: int
    timeout: float = DEFAULT_TIMEOUT
    wait: WaitMode = "countdown"

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: object) -> str:
        return check_pool_name(value, "name")


class PoolSpec(_PoolSettingsValidation):
    """A pool's definition without its name, and the connector instances it serves: how pools
    are declared (``pools_declare``) and written in a document (:mod:`celery_pools.portable`)."""

    limit: int
    timeout: float = DEFAULT_TIMEOUT
    wait: WaitMode = "countdown"
    instances: list[str] = Field(default_factory=list)

    @field_validator("instances", mode="before")
    @classmethod
    def _instances(cls, value: object) -> list[str]:
        if not isinstance(value, list | tuple | set | frozenset):
            raise PoolConfigError.invalid("instances", value, "a list of instance names")
        return sorted(check_instance_name(item, "instance") for item in value)

    def pool(self, name: str) -> Pool:
        """The pool called ``name`` that this spec defines."""
        return Pool(name=name, limit=self.limit, timeout=self.timeout, wait=self.wait)


class _Taken(Model):
    """Who took a slot, and when."""

    task_id: str
    task_name: str = ""
    instance: str = ""
    hostname: str = ""
    pid: int | None = None
    since: float = Field(description="When the slot was taken (Unix seconds, Redis clock).")


class Holder(_Taken):
    """A task that holds a slot of a pool."""

    lease_expires: float = Field(description="When the lease lapses unless renewed (Unix seconds).")


class AbandonedSlot(_Taken):
    """A slot whose holder ended without releasing it: its process was killed, it passed a hard
    time limit or was revoked with ``terminate=True``. The call it made may still be in flight, so
    the slot stays taken until ``until`` (the grace, ``pools_abandoned_grace_seconds``), or until
    an operator frees it (``celery -A proj pools release TASK_ID``)."""

    abandoned: float = Field(description="When its holder ended (Unix seconds, Redis clock).")
    until: float = Field(description="When the slot comes free (Unix seconds, Redis clock).")
    why: str = Field(default="", description="How the holder ended: the exception, or 'revoke'.")


class Waiter(Model):
    """A task waiting for a slot of a pool."""

    task_id: str
    task_name: str = ""
    instance: str = ""
    since: float = Field(description="When the task first asked for a slot (Unix seconds).")
    deadline: float = Field(description="When the task gives up (Unix seconds).")


class PoolStatus(Model):
    """A pool's definition and what is happening in it now, read in one atomic step."""

    name: str
    limit: int
    timeout: float
    in_use: int
    free: int
    waiting: int
    reserved: int = Field(
        default=0,
        description="Free slots kept for calls a producer published as usual that are on their "
        "way to a worker (not in free): no grant or hand-off gives them out until they arrive, "
        "half a second at most.",
    )
    standbys: int = Field(
        default=0,
        description="Waiters standing by: the oldest parked tasks, their message out ahead of "
        "need, blocked in a worker until a freed slot is handed to them (in waiting).",
    )
    instances: list[str]
    holders: list[Holder]
    waiters: list[Waiter]
    abandoned: list[AbandonedSlot] = Field(
        default_factory=list,
        description="Slots kept taken after their holder ended without releasing (in in_use).",
    )
    oldest_wait: float | None = Field(
        default=None, description="Seconds the longest-waiting task has waited, if any."
    )
    now: float = Field(description="The Redis server's clock when the status was read.")
