"""The benchmark's sizes: the default run and the ``--quick`` one, and the names it accepts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["DEFAULT_SCENARIOS", "MODES", "SCENARIOS", "BenchConfig"]

#: Every scenario, in the order they run. ``slotops`` needs no worker; the others share one
#: group of workers per waiting mode.
SCENARIOS: tuple[str, ...] = ("slotops", "overhead", "saturation", "calls", "backlog", "peers")
#: The scenarios run when none is named: ``peers`` (every alternative, :mod:`bench.peers`) runs
#: only when asked for.
DEFAULT_SCENARIOS: tuple[str, ...] = SCENARIOS[:-1]
#: Every waiting mode the benchmark knows; a mode the installed celery-pools lacks is reported as
#: not available.
#: ``countdown-eta`` is countdown waiting on workers with ``worker_eta_task_limit`` at their
#: prefetch count, as the README prescribes for saturated countdown pools. ``unpooled`` is the
#: reference without any pool (:data:`bench.modes.UNPOOLED`): one worker with as many processes
#: as the limit runs the same bodies as plain tasks.
MODES: tuple[str, ...] = ("countdown", "countdown-eta", "handoff", "handoff-standby", "unpooled")


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run does. Every scenario and mode uses the same workers and settings."""

    workers: int = 3
    concurrency: int = 8
    # the workers' pools_standby_max in the handoff-standby mode
    standby_max: int = 4
    # slot operations: acquire + release pairs, PINGs and Dramatiq pairs, this many of each
    slotops_iterations: int = 20_000
    # overhead: no-op tasks per batch; batches alternate plain / pooled this many times each
    overhead_tasks: int = 3_000
    overhead_repeats: int = 3
    overhead_limit: int = 1_000
    # saturation
    saturation_limit: int = 10
    saturation_tasks: int = 500
    saturation_seconds: float = 0.05
    saturation_deadline: float = 300.0
    # calls: realistic calls (seeded log-normal lengths: median, spread, bounds) to a fake API
    # capped at the pool's limit, which counts its own calls in flight
    calls_limit: int = 10
    calls_tasks: int = 400
    calls_median_ms: int = 300
    calls_sigma: float = 0.5
    calls_min_ms: int = 50
    calls_max_ms: int = 2000
    # backlog: measured until every task ran or for backlog_window seconds, whichever is first
    backlog_limit: int = 5
    backlog_tasks: int = 10_000
    backlog_seconds: float = 0.05
    backlog_window: float = 240.0
    # pool timeout of the saturation and backlog pools (the longest a pool allows)
    pool_timeout: float = 300.0
    # seconds between samples of memory and progress
    sample_interval: float = 1.0
    # peers: limit, calls per run (scaled down for a limit of 1), fixed call length, the kill
    # run's calls and their length, and the lease (expiry) every peer gets
    peers_limit: int = 5
    peers_tasks: int = 200
    peers_fixed_ms: int = 50
    peers_kill_tasks: int = 120
    peers_kill_ms: int = 500
    peers_lease: float = 5.0

    @classmethod
    def default(cls) -> BenchConfig:
        """The full benchmark, as the issue describes it."""
        return cls()

    @classmethod
    def quick(cls) -> BenchConfig:
        """A CI-size run: the same scenarios with tiny sizes (tens of seconds)."""
        return replace(
            cls(),
            workers=2,
            concurrency=3,
            slotops_iterations=300,
            overhead_tasks=60,
            overhead_repeats=1,
            overhead_limit=100,
            saturation_limit=3,
            saturation_tasks=24,
            saturation_seconds=0.02,
            saturation_deadline=60.0,
            calls_limit=3,
            calls_tasks=18,
            calls_median_ms=60,
            calls_min_ms=10,
            calls_max_ms=300,
            backlog_limit=2,
            backlog_tasks=60,
            backlog_seconds=0.02,
            backlog_window=30.0,
            sample_interval=0.25,
            peers_limit=2,
            peers_tasks=12,
            peers_fixed_ms=20,
            peers_kill_tasks=8,
            peers_kill_ms=300,
            peers_lease=2.0,
        )

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-ready values."""
        return asdict(self)
