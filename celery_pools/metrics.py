"""Pool metrics: counters and histograms kept in Redis by every worker, read as one snapshot.

The Lua scripts update a per-pool ``stats`` hash in the same atomic step as the operation they
count, so the figures cost no extra round trip and never disagree with the pool's state:

- counters: acquisitions (immediate and after waiting, and per instance), timeouts, clears (and
  the waiters and holders they dropped), slots released, leases reclaimed from dead holders,
  slots abandoned by holders that ended without releasing (and how those came free);
- histograms: seconds waited for a slot (immediate acquisitions count as 0) and seconds a slot
  was held, in the fixed :data:`BUCKETS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pydantic import Field

from .models import Model, PoolStatus

__all__ = ["BUCKETS", "BUCKET_BOUNDS_ARG", "Histogram", "PoolMetrics", "parse_stats"]

#: Upper bounds (seconds) of the wait and hold histograms' buckets; a last +Inf bucket follows.
BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
#: The bounds as the Lua scripts take them: milliseconds, comma-separated.
BUCKET_BOUNDS_ARG = ",".join(str(round(bound * 1000)) for bound in BUCKETS)


class Histogram(Model):
    """A distribution of durations in seconds: per-bucket counts (not cumulative), sum, count."""

    counts: list[int] = Field(description="Observations per bucket of BUCKETS, then +Inf.")
    sum: float
    count: int

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` pairs, ending with ``(inf, count)``."""
        total = 0
        pairs = []
        for bound, n in zip((*BUCKETS, math.inf), self.counts, strict=True):
            total += n
            pairs.append((bound, total))
        return pairs

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1), interpolated within its bucket; None with no observations.

        Observations past the last bound are reported as that bound, as Prometheus does.
        """
        if self.count == 0:
            return None
        rank = q * self.count
        lower = 0.0
        seen = 0
        for bound, n in zip((*BUCKETS, math.inf), self.counts, strict=True):
            if n and seen + n >= rank:
                if math.isinf(bound):
                    return BUCKETS[-1]
                return lower + (bound - lower) * max(0.0, rank - seen) / n
            seen += n
            lower = bound if not math.isinf(bound) else lower
        return BUCKETS[-1]

    @property
    def mean(self) -> float | None:
        """The average duration, or None with no observations."""
        return self.sum / self.count if self.count else None


class PoolMetrics(Model):
    """A pool's status together with its counters and histograms."""

    status: PoolStatus
    started: float | None = Field(description="When counting began (Unix seconds, Redis clock).")
    acquired_immediate: int
    acquired_waited: int
    timeouts: int
    clears: int
    cleared_waiters: int
    cleared_holders: int
    released: int
    reclaimed: int
    handoffs: int = Field(
        default=0, description="Slots handed to parked tasks, or granted at publication."
    )
    handoffs_retried: int = Field(
        default=0, description="Hand-offs not taken up in time, handed out again."
    )
    grants_lapsed: int = Field(
        default=0, description="Slots granted at publication whose task never claimed them."
    )
    grants_withdrawn: int = Field(
        default=0, description="Slots granted at publication, given back: the publish failed."
    )
    handoffs_returned: int = Field(
        default=0,
        description="Slots handed or granted to a task whose instance was paused or rate-limited "
        "since, given back when it started, to wait by countdown.",
    )
    sent_back: int = Field(
        default=0,
        description="Parked tasks of a paused instance sent from the FIFO to wait by countdown.",
    )
    abandoned: int = Field(
        default=0,
        description="Slots abandoned: their holder ended without releasing (killed, hard time "
        "limit, terminated), so they stayed taken for the grace.",
    )
    abandoned_expired: int = Field(
        default=0, description="Abandoned slots that came free when their grace ended."
    )
    abandoned_released: int = Field(
        default=0, description="Abandoned slots freed early by an operator."
    )
    standbys_promoted: int = Field(
        default=0, description="Parked tasks promoted to standby (their message sent ahead)."
    )
    standbys_woken: int = Field(
        default=0, description="Standbys woken in one round trip by a freed slot handed to them."
    )
    standbys_returned: int = Field(
        default=0,
        description="Standbys sent back to their place in the FIFO (block over, process died, "
        "message lost).",
    )
    acquired_by_instance: dict[str, int]
    wait: Histogram
    hold: Histogram

    @property
    def acquired(self) -> int:
        """Every acquisition."""
        return self.acquired_immediate + self.acquired_waited

    @property
    def arrivals(self) -> int:
        """Tasks that asked for a slot and got an answer: acquired, timed out or cleared."""
        return self.acquired + self.timeouts + self.cleared_waiters

    @property
    def period(self) -> float:
        """Seconds the counters cover."""
        return max(0.0, self.status.now - self.started) if self.started else 0.0

    def suspicious_holders(self, threshold: float) -> list[str]:
        """Task ids of holders that have held their slot longer than ``threshold`` seconds."""
        now = self.status.now
        return [h.task_id for h in self.status.holders if now - h.since > threshold]


def _histogram(stats: Mapping[str, str], name: str) -> Histogram:
    counts = [int(stats.get(f"{name}:{index}", 0)) for index in range(len(BUCKETS) + 1)]
    return Histogram(
        counts=counts,
        sum=int(stats.get(f"{name}:sum", 0)) / 1000,
        count=int(stats.get(f"{name}:count", 0)),
    )


def parse_stats(status: PoolStatus, stats: Mapping[str, str]) -> PoolMetrics:
    """Build :class:`PoolMetrics` from a pool's status and its raw ``stats`` hash."""

    def counter(field: str) -> int:
        return int(stats.get(field, 0))

    started = stats.get("started")
    return PoolMetrics(
        status=status,
        started=int(started) / 1000 if started else None,
        acquired_immediate=counter("acquired_immediate"),
        acquired_waited=counter("acquired_waited"),
        timeouts=counter("timeouts"),
        clears=counter("clears"),
        cleared_waiters=counter("cleared_waiters"),
        cleared_holders=counter("cleared_holders"),
        released=counter("released"),
        reclaimed=counter("reclaimed"),
        handoffs=counter("handoffs"),
        handoffs_retried=counter("handoffs_retried"),
        grants_lapsed=counter("grants_lapsed"),
        grants_withdrawn=counter("grants_withdrawn"),
        handoffs_returned=counter("handoffs_returned"),
        sent_back=counter("sent_back"),
        abandoned=counter("abandoned"),
        abandoned_expired=counter("abandoned_expired"),
        abandoned_released=counter("abandoned_released"),
        standbys_promoted=counter("standbys_promoted"),
        standbys_woken=counter("standbys_woken"),
        standbys_returned=counter("standbys_returned"),
        acquired_by_instance={
            field.split(":", 1)[1]: int(value)
            for field, value in stats.items()
            if field.startswith("acquired:")
        },
        wait=_histogram(stats, "wait"),
        hold=_histogram(stats, "hold"),
    )
