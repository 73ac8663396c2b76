"""Prometheus exporter: pool metrics read from Redis at scrape time.

Needs the optional extra: ``pip install 'celery-pools[prometheus]'``. Run it with
``celery -A proj pools exporter --port 9808`` or, in Python, :func:`serve`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

from .errors import PoolError
from .metrics import Histogram, PoolMetrics
from .models import PoolStatus
from .store import RedisPoolStore

__all__ = ["PoolsCollector", "collect_families", "serve"]

_NS = "celery_pools"


def _require_prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise PoolError(
            "the exporter needs prometheus_client: pip install 'celery-pools[prometheus]'"
        ) from exc
    return prometheus_client


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    return [
        ("+Inf" if math.isinf(bound) else repr(bound), float(total))
        for bound, total in histogram.cumulative()
    ]


#: The hand-off counters: PoolMetrics field, metric name, help.
_HANDOFF_COUNTERS = (
    ("handoffs", "handoffs_total", "Slots handed to parked tasks or granted at publication."),
    ("handoffs_retried", "handoffs_retried_total", "Hand-offs not taken up in time, handed again."),
    ("grants_lapsed", "grants_lapsed_total", "Slots granted at publication, never claimed."),
    ("grants_withdrawn", "grants_withdrawn_total", "Slots granted at publication, given back."),
    (
        "handoffs_returned",
        "handoffs_returned_total",
        "Hand-offs given back: the instance was paused or rate-limited since.",
    ),
    ("sent_back", "sent_back_total", "Parked tasks of a paused instance sent to countdown."),
)
#: Counters of abandoned slots: (PoolMetrics field, metric name, help).
_ABANDONED_COUNTERS = (
    (
        "abandoned",
        "abandoned_slots_total",
        "Slots abandoned: the holder ended without releasing (killed, time limit, terminated).",
    ),
    ("abandoned_expired", "abandoned_expired_total", "Abandoned slots freed when the grace ended."),
    ("abandoned_released", "abandoned_released_total", "Abandoned slots freed by an operator."),
)
#: Counters of standbys: (PoolMetrics field, metric name, help).
_STANDBY_COUNTERS = (
    ("standbys_promoted", "standbys_promoted_total", "Parked tasks promoted to standby."),
    ("standbys_woken", "standbys_woken_total", "Standbys woken by a freed slot handed to them."),
    ("standbys_returned", "standbys_returned_total", "Standbys sent back to the FIFO."),
)


#: The gauges read from a pool's status: name, help, and the value.
_STATUS_GAUGES: tuple[tuple[str, str, Callable[[PoolStatus], float]], ...] = (
    ("limit_slots", "Slots the pool has (its limit).", lambda s: s.limit),
    ("in_use_slots", "Slots held now (abandoned ones included).", lambda s: s.in_use),
    (
        "abandoned_slots",
        "Slots kept taken now after their holder ended.",
        lambda s: len(s.abandoned),
    ),
    ("free_slots", "Slots free now.", lambda s: s.free),
    (
        "reserved_slots",
        "Free slots kept for calls on their way to a worker (not in free).",
        lambda s: s.reserved,
    ),
    ("waiting_tasks", "Tasks waiting for a slot now.", lambda s: s.waiting),
    (
        "standby_tasks",
        "Waiting tasks standing by in a worker now (in waiting).",
        lambda s: s.standbys,
    ),
    (
        "oldest_wait_seconds",
        "How long the longest-waiting task has waited.",
        lambda s: s.oldest_wait or 0.0,
    ),
    ("timeout_seconds", "How long a task may wait for a slot.", lambda s: s.timeout),
)


def collect_families(
    all_metrics: list[PoolMetrics], suspicious_after: float = 900.0
) -> Iterator[Any]:
    """The metric families for ``all_metrics`` (prometheus_client objects)."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    def gauge(name: str, doc: str) -> Any:
        return GaugeMetricFamily(f"{_NS}_{name}", doc, labels=["pool"])

    def counter(name: str, doc: str, labels: tuple[str, ...] = ("pool",)) -> Any:
        return CounterMetricFamily(f"{_NS}_{name}", doc, labels=list(labels))

    status_gauges = [(value, gauge(name, doc)) for name, doc, value in _STATUS_GAUGES]
    suspicious = gauge(
        "suspicious_holders", f"Holders that have held their slot over {suspicious_after:g} s."
    )
    acquisitions = counter(
        "acquisitions_total", "Slots taken; waited=true when the task had to wait.",
        ("pool", "waited"),
    )  # fmt: skip
    by_instance = counter(
        "instance_acquisitions_total", "Slots taken, per connector instance.", ("pool", "instance")
    )
    timeouts = counter("timeouts_total", "Tasks that gave up waiting (PoolTimeoutError).")
    clears = counter("clears_total", "Times the pool was cleared.")
    cleared = counter("cleared_waiters_total", "Waiting tasks ended by a clear.")
    released = counter("releases_total", "Slots given back by their holders.")
    reclaimed = counter("reclaimed_leases_total", "Slots taken back from dead holders (leaks).")
    counter_families = [
        (field, counter(name, doc))
        for field, name, doc in _HANDOFF_COUNTERS + _ABANDONED_COUNTERS + _STANDBY_COUNTERS
    ]
    wait = HistogramMetricFamily(
        f"{_NS}_wait_seconds", "Time from a task's first request to its slot.", labels=["pool"]
    )
    hold = HistogramMetricFamily(
        f"{_NS}_hold_seconds", "Time a slot was held before release.", labels=["pool"]
    )
    for m in all_metrics:
        s, pool = m.status, [m.status.name]
        for value, family in status_gauges:
            family.add_metric(pool, value(s))
        suspicious.add_metric(pool, len(m.suspicious_holders(suspicious_after)))
        acquisitions.add_metric([s.name, "false"], m.acquired_immediate)
        acquisitions.add_metric([s.name, "true"], m.acquired_waited)
        for instance, count in sorted(m.acquired_by_instance.items()):
            by_instance.add_metric([s.name, instance], count)
        timeouts.add_metric(pool, m.timeouts)
        clears.add_metric(pool, m.clears)
        cleared.add_metric(pool, m.cleared_waiters)
        released.add_metric(pool, m.released)
        reclaimed.add_metric(pool, m.reclaimed)
        for field, family in counter_families:
            family.add_metric(pool, getattr(m, field))
        wait.add_metric(pool, _buckets(m.wait), m.wait.sum)
        hold.add_metric(pool, _buckets(m.hold), m.hold.sum)
    yield from (family for _, family in status_gauges)
    yield suspicious
    yield from (acquisitions, by_instance, timeouts, clears, cleared, released, reclaimed)
    yield from (family for _, family in counter_families)
    yield from (wait, hold)


class PoolsCollector:
    """A prometheus_client collector that reads every pool's metrics from Redis per scrape."""

    def __init__(self, store: RedisPoolStore, suspicious_after: float = 900.0) -> None:
        self.store = store
        self.suspicious_after = suspicious_after

    def collect(self) -> Iterator[Any]:
        """Yield the metric families (called by prometheus_client at each scrape)."""
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily(f"{_NS}_redis_up", "1 when the pools' Redis answered this scrape.")
        try:
            all_metrics = self.store.metrics()
        except PoolError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from collect_families(all_metrics, self.suspicious_after)


def serve(
    store: RedisPoolStore, port: int, addr: str = "0.0.0.0", suspicious_after: float = 900.0
) -> Any:
    """Serve ``/metrics`` on ``addr:port`` in a background thread; returns the HTTP server."""
    prometheus_client = _require_prometheus()
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(PoolsCollector(store, suspicious_after))
    server, _thread = prometheus_client.start_http_server(port, addr=addr, registry=registry)
    return server
