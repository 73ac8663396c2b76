"""The values celery-pools works with: pools, their holders and waiters, and their status.

Every check on user input lives here, so the Python API, the management tasks and the command line
refuse bad values with the same :class:`~celery_pools.errors.PoolConfigError` message.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import PoolConfigError

__all__ = [
    "DEFAULT_TIMEOUT",
    "INSTANCE_NAME_PATTERN",
    "MAX_TIMEOUT",
    "POOL_NAME_PATTERN",
    "WAIT_MODES",
    "Holder",
    "Pool",
    "PoolStatus",
    "Waiter",
    "check_instance_name",
    "check_limit",
    "check_pool_name",
    "check_timeout",
]

#: Seconds a task waits for a slot when the pool does not say otherwise.
DEFAULT_TIMEOUT = 30.0
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


def check_wait(value: object, field: str = "wait") -> WaitMode:
    """Return ``value`` if it is a waiting mode ("countdown" or "handoff"), else raise."""
    if value not in WAIT_MODES:
        raise PoolConfigError.invalid(field, value, "the waiting mode is 'countdown' or 'handoff'")
    return value  # type: ignore[return-value]


def _config_error(exc: ValidationError) -> PoolConfigError:
    """Turn pydantic's error into ours: the first problem, with its field and value."""
    first = exc.errors()[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, PoolConfigError):
        return cause
    field = ".".join(str(part) for part in first["loc"]) or "value"
    return PoolConfigError.invalid(field, first.get("input"), first["msg"])


_M = TypeVar("_M", bound="_Model")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def parse(cls: type[_M], data: Any) -> _M:
        """Validate ``data`` (a mapping) into this model; bad input raises PoolConfigError."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise _config_error(exc) from None


class _PoolSettingsValidation(_Model):
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


class Holder(_Model):
    """A task that holds a slot of a pool."""

    task_id: str
    task_name: str = ""
    instance: str = ""
    hostname: str = ""
    pid: int | None = None
    since: float = Field(description="When the slot was taken (Unix seconds, Redis clock).")
    lease_expires: float = Field(description="When the lease lapses unless renewed (Unix seconds).")


class Waiter(_Model):
    """A task waiting for a slot of a pool."""

    task_id: str
    task_name: str = ""
    instance: str = ""
    since: float = Field(description="When the task first asked for a slot (Unix seconds).")
    deadline: float = Field(description="When the task gives up (Unix seconds).")


class PoolStatus(_Model):
    """A pool's definition and what is happening in it now, read in one atomic step."""

    name: str
    limit: int
    timeout: float
    in_use: int
    free: int
    waiting: int
    instances: list[str]
    holders: list[Holder]
    waiters: list[Waiter]
    oldest_wait: float | None = Field(
        default=None, description="Seconds the longest-waiting task has waited, if any."
    )
    now: float = Field(description="The Redis server's clock when the status was read.")
