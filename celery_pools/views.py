"""The JSON shapes of pools and of what changes to them did: one contract for the management tasks'
results and the command line's ``--json``.

Each function turns one answer of :class:`~celery_pools.manager.PoolManager` into plain JSON data
(times are Unix seconds on the Redis clock). The command line may add fields of its own to a shape
(``previous``, ``paused_for``), never change one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from .advisor import Advice
from .metrics import Histogram, PoolMetrics
from .models import Pool, PoolStatus
from .ratelimit import InstanceRate, RateLimit
from .store import ClearResult, DeleteResult, Freed

__all__ = [
    "JSON",
    "advice",
    "assignment",
    "cleared",
    "deleted",
    "freed",
    "metrics",
    "pause",
    "pool",
    "pool_details",
    "rate_limit",
    "rate_removed",
    "status",
]

JSON = dict[str, Any]


def pool(definition: Pool) -> JSON:
    """A pool's definition: ``name``, ``limit``, ``timeout``, ``wait``."""
    return definition.model_dump(mode="json")


def status(snapshot: PoolStatus) -> JSON:
    """A pool's status: limit, timeout, in use, free, reserved (free slots kept for calls on
    their way, not in free), waiting, instances, holders, waiters, abandoned slots (counted in
    in use), oldest wait and the Redis clock it was read at."""
    return snapshot.model_dump(mode="json")


def cleared(result: ClearResult) -> JSON:
    """What a clear did: ``pool``, ``waiters_dropped``, ``holders_released``."""
    return dataclasses.asdict(result)


def deleted(result: DeleteResult) -> JSON:
    """What a delete removed: ``pool``, ``instances``, ``holders``, ``waiters``."""
    return dataclasses.asdict(result)


def freed(result: Freed) -> JSON:
    """A slot an operator freed: ``task_id``, ``pool``, ``abandoned`` (false: a running holder's,
    forced), and the holder's ``task_name``, ``hostname``, ``pid``, ``since`` (Unix seconds)."""
    return dataclasses.asdict(result)


def assignment(instance: str, pool_name: str | None, previous: str | None) -> JSON:
    """An instance's pool after a change (None when unassigned) and the pool it had before."""
    return {"instance": instance, "pool": pool_name, "previous": previous}


def rate_limit(instance: str, limit: RateLimit) -> JSON:
    """An instance's rate limit: ``count``, ``period``, ``burst`` and ``rate`` ("60/m")."""
    return {"instance": instance, **limit.model_dump(mode="json"), "rate": str(limit)}


def rate_removed(instance: str, removed: bool) -> JSON:
    """Whether an instance had a rate limit to remove."""
    return {"instance": instance, "removed": removed}


def pause(instance: str, until: float | None) -> JSON:
    """When an instance's pause ends (None: not paused)."""
    return {"instance": instance, "paused_until": until}


def _histogram(histogram: Histogram) -> JSON:
    """``count``, ``sum``, ``p50``, ``p95`` and ``buckets``: ``[upper bound, observations <=
    bound]`` pairs in seconds, the last bound null (no upper bound)."""
    return {
        "count": histogram.count,
        "sum": histogram.sum,
        "p50": histogram.quantile(0.5),
        "p95": histogram.quantile(0.95),
        "buckets": [
            [None if math.isinf(bound) else bound, total] for bound, total in histogram.cumulative()
        ],
    }


def metrics(m: PoolMetrics, suspicious_after: float) -> JSON:
    """A pool's counters, wait and hold quantiles, and holders held past ``suspicious_after``."""
    return {
        "started": m.started,
        "period": m.period,
        "acquired": m.acquired,
        "acquired_immediate": m.acquired_immediate,
        "acquired_waited": m.acquired_waited,
        "acquired_by_instance": dict(sorted(m.acquired_by_instance.items())),
        "timeouts": m.timeouts,
        "clears": m.clears,
        "cleared_waiters": m.cleared_waiters,
        "cleared_holders": m.cleared_holders,
        "released": m.released,
        "reclaimed": m.reclaimed,
        "handoffs": m.handoffs,
        "handoffs_retried": m.handoffs_retried,
        "grants_lapsed": m.grants_lapsed,
        "grants_withdrawn": m.grants_withdrawn,
        "handoffs_returned": m.handoffs_returned,
        "sent_back": m.sent_back,
        "abandoned": m.abandoned,
        "abandoned_expired": m.abandoned_expired,
        "abandoned_released": m.abandoned_released,
        "standbys_promoted": m.standbys_promoted,
        "standbys_woken": m.standbys_woken,
        "standbys_returned": m.standbys_returned,
        "wait": _histogram(m.wait),
        "hold": _histogram(m.hold),
        "suspicious_after": suspicious_after,
        "suspicious_holders": m.suspicious_holders(suspicious_after),
    }


def pool_details(
    m: PoolMetrics, wait: str, rates: Sequence[InstanceRate], suspicious_after: float
) -> JSON:
    """Everything about one pool: its status and waiting mode, its instances' rate limits and
    its metrics."""
    return {
        **status(m.status),
        "wait": wait,
        "rates": [rate.model_dump(mode="json") for rate in rates],
        "metrics": metrics(m, suspicious_after),
    }


def advice(pool_name: str, recommended: Advice) -> JSON:
    """A sizing recommendation with its arithmetic."""
    return {"pool": pool_name, **dataclasses.asdict(recommended)}
