"""The ``pools`` remote inspect command: which pool slots a worker's running tasks hold.

``celery -A proj inspect pools`` asks every worker (``-d`` picks some) and prints, per worker::

    {"held": [{"task_id": ..., "task_name": ..., "pool": ..., "instance": ..., "pid": ...,
               "since": ..., "lease_expires": ...}],
     "pools": {"<pool>": <slots held by this worker>}}

Importing this module registers the command; ``import celery_pools`` does (through
:mod:`celery_pools.install`), so the ``celery`` command line knows it whenever the app imports
celery-pools. It answers from the worker's main process with one short read of Redis (bounded by
``pools_redis_socket_timeout``).
"""

from __future__ import annotations

from typing import Any

from celery.worker import state as worker_state
from celery.worker.control import inspect_command

from .context import get_extension, is_pooled
from .errors import PoolError

__all__ = ["held_slots", "pools"]


def held_slots(app: Any) -> dict[str, Any]:
    """The slots held by the pooled tasks running in this worker (call it in the worker)."""
    requests = {req.id: req for req in list(worker_state.active_requests) if is_pooled(req.task)}
    store = get_extension(app).store
    held = store.held_pools(sorted(requests))
    holders = {
        holder.task_id: holder
        for status in store.statuses(sorted(set(held.values())))
        for holder in status.holders
    }
    slots = []
    for task_id, pool in sorted(held.items(), key=lambda item: (item[1], item[0])):
        request = requests[task_id]
        holder = holders.get(task_id)
        slots.append(
            {
                "task_id": task_id,
                "task_name": request.task.name,
                "pool": pool,
                "instance": holder.instance if holder else None,
                "pid": holder.pid if holder else request.worker_pid,
                "since": holder.since if holder else None,
                "lease_expires": holder.lease_expires if holder else None,
            }
        )
    counts: dict[str, int] = {}
    for slot in slots:
        counts[slot["pool"]] = counts.get(slot["pool"], 0) + 1
    return {"held": slots, "pools": counts}


@inspect_command()  # type: ignore[untyped-decorator]
def pools(state: Any, **kwargs: Any) -> dict[str, Any]:
    """Pool slots held by this worker's running tasks."""
    try:
        return held_slots(state.app)
    except PoolError as exc:
        return {"error": f"celery-pools: {exc}"}
