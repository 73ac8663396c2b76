"""Waiting modes: which ones the installed celery-pools supports, and pools created in each.

The benchmark never assumes a mode exists. A mode is selected per pool with
``PoolManager.create(..., wait=<mode>)``; when ``create`` has no ``wait`` parameter only the
core behaviour (countdown retries) is there, and every other mode is "not available".
"""

from __future__ import annotations

import inspect
from typing import Any

from celery_pools import PoolManager

__all__ = [
    "HANDOFF_MODE",
    "UNPOOLED",
    "UNPOOLED_SCENARIOS",
    "ModeUnavailableError",
    "create_pool",
    "has_wait_parameter",
    "pool_mode",
    "unavailable_reason",
    "worker_settings",
]

#: The mode every celery-pools has: waiting by countdown retries.
CORE_MODE = "countdown"
#: Hand-off waiting: a freed slot goes to the oldest parked task, granted ahead of its claim.
HANDOFF_MODE = "handoff"
#: Countdown waiting on workers whose ``worker_eta_task_limit`` is their prefetch count.
ETA_LIMITED_MODE = "countdown-eta"
#: Hand-off waiting with standbys (``pools_standby_max`` on the workers).
STANDBY_MODE = "handoff-standby"
#: The workers' ``pools_standby_max`` in :data:`STANDBY_MODE` (``--standby-max``).
STANDBY_MAX = 4
#: The reference without a pool: one worker whose processes are as many as the scenario's limit
#: runs the same bodies as plain tasks, so Celery's own concurrency is the cap. What it reaches
#: is what this machine gives a limit with no distributed pool at all: its idle slot-time is
#: the producer's burst, Celery's dispatch to a free process and the last wave.
UNPOOLED = "unpooled"
#: The scenarios the reference runs (the others measure the pool itself).
UNPOOLED_SCENARIOS = ("saturation", "calls")
#: Celery's default ``worker_prefetch_multiplier``, which the benchmark's workers keep.
PREFETCH_MULTIPLIER = 4


def pool_mode(mode: str) -> str:
    """The ``wait`` of the pools a benchmark ``mode`` creates."""
    if mode == STANDBY_MODE:
        return "handoff"
    return CORE_MODE if mode == ETA_LIMITED_MODE else mode


def worker_settings(mode: str, concurrency: int, standby_max: int = STANDBY_MAX) -> dict[str, int]:
    """Celery settings the workers of ``mode`` run with, beyond the benchmark's own
    (``standby_max``: their ``pools_standby_max`` in :data:`STANDBY_MODE`)."""
    if mode == ETA_LIMITED_MODE:
        return {"worker_eta_task_limit": concurrency * PREFETCH_MULTIPLIER}
    if mode == STANDBY_MODE:
        return {"pools_standby_max": standby_max}
    return {}


class ModeUnavailableError(RuntimeError):
    """The installed celery-pools cannot create a pool waiting in the requested mode."""


def has_wait_parameter() -> bool:
    """Whether ``PoolManager.create`` takes a ``wait`` argument (a mode per pool)."""
    return "wait" in inspect.signature(PoolManager.create).parameters


def unavailable_reason(mode: str) -> str | None:
    """None when ``mode`` can be benchmarked, else why not (for the report).

    Detection is by signature here; :func:`create_pool` is the final word, since a ``wait``
    parameter may still refuse a value.
    """
    if mode == UNPOOLED or pool_mode(mode) == CORE_MODE or has_wait_parameter():
        return None
    return "PoolManager.create() has no 'wait' parameter in this celery-pools"


def create_pool(manager: PoolManager, name: str, *, limit: int, timeout: float, mode: str) -> None:
    """Create pool ``name`` waiting in ``mode``.

    Raises :class:`ModeUnavailableError` when the installed celery-pools refuses the mode.
    """
    options: dict[str, Any] = {}
    mode = pool_mode(mode)
    if has_wait_parameter():
        options["wait"] = mode
    elif mode != CORE_MODE:
        raise ModeUnavailableError(unavailable_reason(mode) or mode)
    try:
        manager.create(name, limit=limit, timeout=timeout, **options)
    except (TypeError, ValueError) as exc:  # PoolConfigError is a ValueError
        raise ModeUnavailableError(f"PoolManager.create(wait={mode!r}) failed: {exc}") from exc
