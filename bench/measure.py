"""The figures, computed from what the tasks recorded (see :mod:`bench.recorder`).

Pure functions of recorded times (seconds, one Redis clock); nothing here talks to a server.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.fake_api import Call
from bench.recorder import Acquired, Event

__all__ = [
    "Handoffs",
    "Utilisation",
    "api_figures",
    "api_timeline",
    "concurrency_timeline",
    "count_inversions",
    "grant_inversions",
    "grant_to_start",
    "handoff_latencies",
    "milliseconds",
    "order_inversions",
    "percentile",
    "utilisation",
    "utilisation_between",
]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values``, linearly interpolated; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Utilisation:
    """Busy slot-seconds (sum of body durations) over ``limit`` x makespan (first body start to
    last body end)."""

    busy: float
    makespan: float
    limit: int

    @property
    def ratio(self) -> float:
        """The utilisation, 0..1 (more only if the limit was broken)."""
        return self.busy / (self.limit * self.makespan) if self.makespan > 0 else 0.0


def utilisation(events: Iterable[Event], limit: int) -> Utilisation:
    """The utilisation of a pool of ``limit`` slots by the bodies whose events are given."""
    starts: dict[str, float] = {}
    busy = 0.0
    first = math.inf
    last = -math.inf
    for event in events:
        if event.kind == "s":
            starts[event.task_id] = event.at
            first = min(first, event.at)
        elif event.task_id in starts:
            busy += event.at - starts.pop(event.task_id)
            last = max(last, event.at)
    makespan = last - first if last > first else 0.0
    return Utilisation(busy=busy, makespan=makespan, limit=limit)


def utilisation_between(
    events: Iterable[Event], limit: int, start: float, end: float
) -> float | None:
    """The utilisation of a pool of ``limit`` slots between ``start`` and ``end`` (the records'
    clock): the running time inside that window of the bodies whose end was recorded, over
    ``limit`` x its length. None for an empty window."""
    if end <= start:
        return None
    starts: dict[str, float] = {}
    busy = 0.0
    for event in events:
        if event.kind == "s":
            starts[event.task_id] = event.at
        elif event.task_id in starts:
            began = starts.pop(event.task_id)
            busy += max(0.0, min(event.at, end) - max(began, start))
    return busy / (limit * (end - start))


@dataclass(frozen=True)
class Handoffs:
    """Hand-off latencies: for each start that followed a release, the seconds between them.

    ``initial`` starts took a slot no task had held (the pool filling up); ``skewed`` starts were
    recorded a little before the release that freed their slot (the two records race), and count
    as a latency of 0. ``released[i]`` is when the release that ``latencies[i]`` follows was
    recorded.
    """

    latencies: list[float]
    released: list[float]
    initial: int
    skewed: int
    unpaired_releases: int

    def since(self, moment: float) -> list[float]:
        """The latencies that follow a release recorded at ``moment`` or later."""
        return [lat for lat, at in zip(self.latencies, self.released, strict=True) if at >= moment]


def handoff_latencies(releases: Iterable[float], starts: Iterable[float], limit: int) -> Handoffs:
    """Pair each start with the latest unpaired release before it; the gap is its latency.

    A start that finds no unpaired release took a never-used slot while fewer than ``limit``
    starts are unpaired; past that its release must still be on its way (recorded a moment after
    the start), so the next release pays it with a latency of 0.
    """
    timeline = sorted([(t, 0) for t in releases] + [(t, 1) for t in starts])
    pending: list[float] = []
    latencies: list[float] = []
    released: list[float] = []
    initial = skewed = owed = 0
    for at, kind in timeline:
        if kind == 0:
            if owed:
                owed -= 1
                skewed += 1
                latencies.append(0.0)
                released.append(at)
            else:
                pending.append(at)
        elif pending:
            release = pending.pop()
            latencies.append(at - release)
            released.append(release)
        elif initial < limit:
            initial += 1
        else:
            owed += 1
    return Handoffs(latencies, released, initial, skewed, len(pending))


def count_inversions(values: Sequence[float]) -> int:
    """Pairs ``i < j`` with ``values[i] > values[j]`` (merge sort, O(n log n))."""

    def sort(items: list[float]) -> tuple[list[float], int]:
        if len(items) <= 1:
            return items, 0
        middle = len(items) // 2
        left, a = sort(items[:middle])
        right, b = sort(items[middle:])
        merged: list[float] = []
        inversions = a + b
        i = j = 0
        while i < len(left) and j < len(right):
            if right[j] < left[i]:
                merged.append(right[j])
                inversions += len(left) - i
                j += 1
            else:
                merged.append(left[i])
                i += 1
        merged.extend(left[i:])
        merged.extend(right[j:])
        return merged, inversions

    return sort(list(values))[1]


def order_inversions(acquisitions: Iterable[Acquired], events: Iterable[Event]) -> tuple[int, int]:
    """``(inversions, waiters)`` among tasks that waited: pairs where one asked for a slot first
    but its body started after the other's. First ask = acquisition time - ``waited``."""
    starts = {e.task_id: e.at for e in events if e.kind == "s"}
    waiters = sorted(
        (a.first_ask, starts[a.task_id])
        for a in acquisitions
        if a.waited > 0 and a.task_id in starts
    )
    return count_inversions([start for _, start in waiters]), len(waiters)


def grant_inversions(acquisitions: Iterable[Acquired]) -> tuple[int, int]:
    """``(inversions, waiters)`` among tasks that waited and whose grant time the pool's signal
    gave: pairs where one asked for a slot first but the pool granted the other's first (both
    times by the pools' Redis clock, to the millisecond; a tie is no inversion)."""
    waiters = sorted(
        (a.first_ask, a.granted) for a in acquisitions if a.waited > 0 and a.granted is not None
    )
    return count_inversions([granted for _, granted in waiters]), len(waiters)


def grant_to_start(
    acquisitions: Iterable[Acquired], events: Iterable[Event]
) -> list[tuple[float, float]]:
    """``(granted, seconds from grant to body start)`` for each task that waited and whose slot the
    pool handed or granted it at a known time: the hand-off as the pool made it, with no pairing
    of starts to releases and no race with the releasing process's own record (a woken standby
    often starts before its releaser records the release). The grant is on the pools' Redis
    clock to the millisecond, the start on the records' Redis clock to the microsecond; both
    read this host's clock, so a latency is good to about a millisecond and may read a little
    below zero."""
    starts = {e.task_id: e.at for e in events if e.kind == "s"}
    return sorted(
        (a.granted, starts[a.task_id] - a.granted)
        for a in acquisitions
        if a.waited > 0 and a.granted is not None and a.task_id in starts
    )


def concurrency_timeline(events: Sequence[Event]) -> list[tuple[float, int]]:
    """``(seconds since the first event, bodies running)`` after each start and end.

    Events are taken in the order Redis recorded them, which is the order of the counter's
    changes (each record is one atomic script).
    """
    if not events:
        return []
    zero = events[0].at
    return [(round(e.at - zero, 6), e.running) for e in events]


def api_figures(
    ids: Sequence[str], lengths: Sequence[int], calls: Sequence[Call], limit: int
) -> dict[str, Any]:
    """What the fake API saw of one run of the tasks ``ids`` (published in that order, their
    calls ``lengths`` ms long) at a pool of ``limit``: calls served, utilisation (the API's busy
    call-seconds over ``limit`` x first call start to last call end), hand-off latency (a call's
    end to the next start) and order (inversions of the tasks' first starts against their
    publication order)."""
    served = [c for c in calls if not c.refused and c.ended is not None]
    ends = [c.ended for c in served if c.ended is not None]
    busy = sum(end - c.started for c, end in zip(served, ends, strict=True))
    first = min((c.started for c in served), default=0.0)
    makespan = max(ends, default=0.0) - first
    handoffs = handoff_latencies(ends, [c.started for c in served], limit)
    seq = {task: index for index, task in enumerate(ids)}
    first_start: dict[str, float] = {}
    for c in served:
        if c.task in seq and c.task not in first_start:
            first_start[c.task] = c.started
    order = [seq[task] for task, _ in sorted(first_start.items(), key=lambda item: item[1])]
    pairs = len(order) * (len(order) - 1) // 2
    inversions = count_inversions(order)
    return {
        "served_calls": len(served),
        "calls_per_task": len(served) / len(ids) if ids else None,
        "makespan_s": makespan,
        "ideal_makespan_s": sum(lengths) / 1000 / limit,
        "utilisation": busy / (limit * makespan) if makespan > 0 else None,
        "handoff_p50_ms": milliseconds(percentile(handoffs.latencies, 0.5)),
        "handoff_p99_ms": milliseconds(percentile(handoffs.latencies, 0.99)),
        "order_inversions": inversions,
        "inversion_fraction": inversions / pairs if pairs else 0.0,
    }


def api_timeline(calls: Sequence[Call]) -> list[tuple[float, int]]:
    """``(seconds since the first call started, calls in flight)`` after each start and end of
    the calls the API served (at the same instant, an end before a start)."""
    served = [(c.started, c.ended) for c in calls if not c.refused and c.ended is not None]
    steps = sorted([(start, 1) for start, _ in served] + [(end, -1) for _, end in served])
    if not steps:
        return []
    zero, running, timeline = steps[0][0], 0, []
    for at, step in steps:
        running += step
        timeline.append((round(at - zero, 6), running))
    return timeline


def milliseconds(seconds: float | None) -> float | None:
    """``seconds`` in milliseconds (None stays None)."""
    return None if seconds is None else seconds * 1000
