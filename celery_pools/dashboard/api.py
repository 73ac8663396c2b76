"""What the dashboard's JSON API answers, as plain data, read through a :class:`PoolManager`.

Every answer is made of the shapes in :mod:`celery_pools.views`: a pool is what
``celery pools show NAME --json`` prints (status, waiting mode, rate limits, metrics), advice is
what ``celery pools advise NAME --json`` prints. Nothing here writes.
"""

from __future__ import annotations

from typing import Any

from celery_pools import views
from celery_pools.advisor import advise_pool
from celery_pools.manager import PoolManager

__all__ = ["advice", "overview", "pool"]

JSON = dict[str, Any]


def overview(manager: PoolManager, suspicious_after: float) -> JSON:
    """Every pool (``pools``: a list of :func:`celery_pools.views.pool_details`, by name) and
    the Redis clock they were read at (``now``, Unix seconds; None with no pool)."""
    metrics = sorted(manager.all_metrics(), key=lambda m: m.status.name)
    waits = {definition.name: definition.wait for definition in manager.list()}
    instances = sorted({name for m in metrics for name in m.status.instances})
    rates = {rate.instance: rate for rate in manager.rates(instances)} if instances else {}
    pools = [
        views.pool_details(
            m,
            waits.get(m.status.name, "countdown"),
            [rates[name] for name in m.status.instances if name in rates],
            suspicious_after,
        )
        for m in metrics
    ]
    return {"pools": pools, "now": max((p["now"] for p in pools), default=None)}


def pool(manager: PoolManager, name: str, suspicious_after: float) -> JSON:
    """One pool, as ``celery pools show NAME --json`` prints it."""
    metrics = manager.metrics(name)
    rates = manager.rates(metrics.status.instances) if metrics.status.instances else []
    return views.pool_details(metrics, manager.get(name).wait, rates, suspicious_after)


def advice(manager: PoolManager, name: str) -> JSON:
    """The advisor's recommendation for a pool, with its arithmetic (``celery pools advise NAME
    --json``)."""
    return views.advice(name, advise_pool(manager.metrics(name)))
