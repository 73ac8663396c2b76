"""Management tasks: run pools from any producer, Flower included.

Every app that uses celery-pools gets these ordinary (not pooled) tasks, registered when a
:class:`~celery_pools.task.PooledTask` is bound to it:

==================================  ==========================================================
task                                arguments (result)
==================================  ==========================================================
``celery_pools.create_pool``        ``name, limit, timeout=30, wait="countdown"`` (the ``Pool``)
``celery_pools.update_pool``        ``name, limit=None, timeout=None, wait=None`` (the ``Pool``)
``celery_pools.clear_pool``         ``name, release_held=False`` (what was dropped)
``celery_pools.delete_pool``        ``name`` (what was removed)
``celery_pools.release_slot``       ``task_id, force=False`` (the slot freed)
``celery_pools.assign_instance``    ``instance, pool`` (the instance's previous pool)
``celery_pools.unassign_instance``  ``instance`` (the pool it had)
``celery_pools.list_pools``         none (a ``PoolStatus`` per pool)
``celery_pools.pool_status``        ``name`` (the ``PoolStatus``)
``celery_pools.set_rate_limit``     ``instance, rate, burst=0`` (the rate limit)
``celery_pools.remove_rate_limit``  ``instance`` (whether it had one)
``celery_pools.pause_instance``     ``instance, seconds`` (when the pause ends)
``celery_pools.resume_instance``    ``instance`` (nothing)
==================================  ==========================================================

Each is a thin wrapper over :class:`~celery_pools.manager.PoolManager` and returns plain JSON in
the shapes of :mod:`celery_pools.views`, which the command line's ``--json`` prints too. Bad
arguments raise :class:`~celery_pools.errors.PoolConfigError` before anything is written, so the
task fails with a message naming the field; a missing pool fails with
:class:`~celery_pools.errors.PoolNotFoundError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import views
from .errors import PoolConfigError
from .manager import PoolManager
from .models import DEFAULT_TIMEOUT
from .views import JSON

__all__ = [
    "MANAGEMENT_TASK_CHOICES",
    "READ_ONLY_TASKS",
    "TASK_NAMES",
    "TASK_PREFIX",
    "assign_instance",
    "clear_pool",
    "create_pool",
    "delete_pool",
    "list_pools",
    "pause_instance",
    "pool_status",
    "register_management_tasks",
    "registered_verbs",
    "release_slot",
    "remove_rate_limit",
    "resume_instance",
    "set_rate_limit",
    "unassign_instance",
    "update_pool",
]

#: Every management task's name starts with this.
TASK_PREFIX = "celery_pools."


def _manager(task: Any) -> PoolManager:
    return PoolManager(task.app)


def _check_flag(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise PoolConfigError.invalid(field, value, "true or false")
    return value


def create_pool(
    task: Any, name: str, limit: int, timeout: float = DEFAULT_TIMEOUT, wait: str = "countdown"
) -> JSON:
    """Create a pool of ``limit`` slots whose tasks wait at most ``timeout`` seconds, by
    ``wait`` ("countdown" or "handoff").

    Fails with PoolExistsError when a pool of that name exists. Returns the pool.
    """
    return views.pool(_manager(task).create(name, limit=limit, timeout=timeout, wait=wait))


def update_pool(
    task: Any,
    name: str,
    limit: int | None = None,
    timeout: float | None = None,
    wait: str | None = None,
) -> JSON:
    """Change a pool's limit, timeout and/or waiting mode, obeyed at once. Returns the pool.

    A larger limit admits waiting tasks at once; a smaller one never interrupts running tasks,
    it only stops new ones until enough have finished.
    """
    return views.pool(_manager(task).update(name, limit=limit, timeout=timeout, wait=wait))


def clear_pool(task: Any, name: str, release_held: bool = False) -> JSON:
    """Drop every pending request: tasks waiting for a slot fail with PoolClearedError.

    With ``release_held`` the slots of running tasks are freed too; they keep running, so the
    pool can admit more tasks than its limit until they finish. Returns counts of what changed.
    """
    release = _check_flag(release_held, "release_held")
    return views.cleared(_manager(task).clear(name, release_held=release))


def delete_pool(task: Any, name: str) -> JSON:
    """Delete a pool and every association to it.

    Its waiting tasks fail with PoolDeletedError at their next attempt; its running tasks finish
    normally. Returns counts of the instances unassigned, holders and waiters.
    """
    return views.deleted(_manager(task).delete(name))


def release_slot(task: Any, task_id: str, force: bool = False) -> JSON:
    """Free the slot task ``task_id`` abandoned (it ended without releasing: killed, a hard time
    limit, terminated) before its grace ends, once its call is known to be over.

    A running task's slot is freed only with ``force`` (its call may be in flight). Fails with
    SlotNotFoundError when the task has no slot, SlotInUseError when it is running. Returns the
    slot freed.
    """
    return views.freed(_manager(task).release(task_id, force=_check_flag(force, "force")))


def assign_instance(task: Any, instance: str, pool: str) -> JSON:
    """Associate a connector instance with a pool; returns the pool it had before (or null)."""
    return views.assignment(instance, pool, _manager(task).assign(instance, pool))


def unassign_instance(task: Any, instance: str) -> JSON:
    """Remove an instance's association; returns the pool it had (or null if it had none)."""
    return views.assignment(instance, None, _manager(task).unassign(instance))


def list_pools(task: Any) -> list[JSON]:
    """The status of every pool (definition, in use, waiting, holders, waiters), by name."""
    return [views.status(status) for status in _manager(task).statuses()]


def pool_status(task: Any, name: str) -> JSON:
    """One pool's status: definition, in use, free, waiting, holders and waiters."""
    return views.status(_manager(task).status(name))


def set_rate_limit(task: Any, instance: str, rate: str, burst: int = 0) -> JSON:
    """Limit an instance to ``rate`` calls ("60/m", "10/s", "1000/h"), shared by every worker,
    with up to ``burst`` extra calls at once. Returns the limit."""
    return views.rate_limit(instance, _manager(task).set_rate_limit(instance, rate, burst=burst))


def remove_rate_limit(task: Any, instance: str) -> JSON:
    """Remove an instance's rate limit; says whether it had one."""
    return views.rate_removed(instance, _manager(task).remove_rate_limit(instance))


def pause_instance(task: Any, instance: str, seconds: float) -> JSON:
    """Pause an instance for every worker for ``seconds`` (an API said 429 Retry-After)."""
    return views.pause(instance, _manager(task).pause(instance, seconds))


def resume_instance(task: Any, instance: str) -> JSON:
    """Lift an instance's pause."""
    _manager(task).resume(instance)
    return views.pause(instance, None)


_TASKS: dict[str, Callable[..., Any]] = {
    "create_pool": create_pool,
    "update_pool": update_pool,
    "clear_pool": clear_pool,
    "delete_pool": delete_pool,
    "release_slot": release_slot,
    "assign_instance": assign_instance,
    "unassign_instance": unassign_instance,
    "list_pools": list_pools,
    "pool_status": pool_status,
    "set_rate_limit": set_rate_limit,
    "remove_rate_limit": remove_rate_limit,
    "pause_instance": pause_instance,
    "resume_instance": resume_instance,
}

#: The names of the management tasks.
TASK_NAMES = tuple(TASK_PREFIX + verb for verb in _TASKS)
#: The management tasks that only read.
READ_ONLY_TASKS = ("list_pools", "pool_status")
#: The values of ``pools_management_tasks``.
MANAGEMENT_TASK_CHOICES = ("all", "read-only", "none")


def registered_verbs(app: Any) -> tuple[str, ...]:
    """The management tasks ``app`` registers, by its ``pools_management_tasks`` setting:
    ``"all"`` (the default), ``"read-only"`` (``list_pools`` and ``pool_status``) or ``"none"``.

    Raises :class:`PoolConfigError` for any other value.
    """
    which = app.conf.get("pools_management_tasks") or "all"
    if which not in MANAGEMENT_TASK_CHOICES:
        raise PoolConfigError.invalid(
            "pools_management_tasks", which, "'all', 'read-only' or 'none'"
        )
    if which == "none":
        return ()
    return READ_ONLY_TASKS if which == "read-only" else tuple(_TASKS)


def register_management_tasks(app: Any) -> None:
    """Register the management tasks on ``app`` (done by :func:`celery_pools.install.install`):
    those :func:`registered_verbs` names.

    Tasks already registered under one of the names are left as they are.
    """
    for verb in registered_verbs(app):
        function = _TASKS[verb]
        name = TASK_PREFIX + verb
        # The raw registry: ``app.tasks`` would finalize the app, and this runs while it does.
        if name in app._tasks:
            continue
        app.task(name=name, bind=True, shared=False)(function)
