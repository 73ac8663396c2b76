"""What the dashboard's write routes do, as plain functions of a :class:`PoolManager` and the
request's JSON body.

Each checks the body's fields (a missing or mistyped one raises :class:`PoolConfigError` naming
it, before anything is written), calls the manager, which validates like everywhere else, and
answers in the shapes of :mod:`celery_pools.views`, the management tasks' results.
"""

from __future__ import annotations

import math
from typing import Any

from celery_pools import views
from celery_pools.errors import PoolConfigError
from celery_pools.manager import PoolManager
from celery_pools.models import DEFAULT_TIMEOUT

__all__ = [
    "assign",
    "clear",
    "create",
    "delete",
    "pause",
    "remove_rate",
    "resume",
    "set_rate",
    "unassign",
    "update",
]

JSON = dict[str, Any]


def _body(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise PoolConfigError.invalid("request body", body, "a JSON object")
    return body


def _required(body: dict[str, Any], field: str) -> Any:
    if field not in body or body[field] in (None, ""):
        raise PoolConfigError.invalid(field, body.get(field), f"'{field}' is required")
    return body[field]


def _number(value: object, field: str) -> float:
    """A finite JSON number, or a form's text of one."""
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise PoolConfigError.invalid(field, value, "a number")
    return number


def _whole(value: object, field: str) -> int:
    """A whole JSON number, or a form's text of one."""
    number = _number(value, field)
    if not number.is_integer():
        raise PoolConfigError.invalid(field, value, "a whole number")
    return int(number)


def _flag(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise PoolConfigError.invalid(field, value, "true or false")
    return value


def create(manager: PoolManager, body: object) -> JSON:
    """``{name, limit, timeout?, wait?}`` -> the pool created."""
    data = _body(body)
    name = _required(data, "name")
    limit = _whole(_required(data, "limit"), "limit")
    timeout = _number(data.get("timeout", DEFAULT_TIMEOUT), "timeout")
    wait = data.get("wait") or "countdown"
    return views.pool(manager.create(name, limit=limit, timeout=timeout, wait=wait))


def update(manager: PoolManager, name: str, body: object) -> JSON:
    """``{limit?, timeout?, wait?}`` -> the pool as changed, obeyed at once by every worker."""
    data = _body(body)
    limit, timeout = data.get("limit"), data.get("timeout")
    changes: dict[str, Any] = {
        "limit": None if limit in (None, "") else _whole(limit, "limit"),
        "timeout": None if timeout in (None, "") else _number(timeout, "timeout"),
        "wait": data.get("wait") or None,
    }
    return views.pool(manager.update(name, **changes))


def clear(manager: PoolManager, name: str, body: object) -> JSON:
    """``{release_held?}`` -> what was dropped: waiting tasks fail with PoolClearedError."""
    release = _flag(_body(body).get("release_held", False), "release_held")
    return views.cleared(manager.clear(name, release_held=release))


def delete(manager: PoolManager, name: str) -> JSON:
    """-> what the deletion removed (its associations go with it)."""
    return views.deleted(manager.delete(name))


def assign(manager: PoolManager, instance: str, body: object) -> JSON:
    """``{pool}`` -> the instance's new and previous pool."""
    pool = _required(_body(body), "pool")
    return views.assignment(instance, pool, manager.assign(instance, pool))


def unassign(manager: PoolManager, instance: str) -> JSON:
    """-> the instance's previous pool."""
    return views.assignment(instance, None, manager.unassign(instance))


def set_rate(manager: PoolManager, instance: str, body: object) -> JSON:
    """``{rate, burst?}`` -> the instance's rate limit."""
    data = _body(body)
    rate = _required(data, "rate")
    if not isinstance(rate, str):
        raise PoolConfigError.invalid("rate", rate, "text such as '60/m', '10/s' or '1000/h'")
    burst = _whole(data.get("burst") or 0, "burst")
    return views.rate_limit(instance, manager.set_rate_limit(instance, rate, burst=burst))


def remove_rate(manager: PoolManager, instance: str) -> JSON:
    """-> whether the instance had a rate limit."""
    return views.rate_removed(instance, manager.remove_rate_limit(instance))


def pause(manager: PoolManager, instance: str, body: object) -> JSON:
    """``{seconds}`` -> when the pause ends."""
    seconds = _number(_required(_body(body), "seconds"), "seconds")
    return views.pause(instance, manager.pause(instance, seconds))


def resume(manager: PoolManager, instance: str) -> JSON:
    """-> the instance, no longer paused."""
    manager.resume(instance)
    return views.pause(instance, None)
