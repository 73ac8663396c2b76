"""What every worker scenario shares: the :class:`Bench` (sizes, app, workers, Redis servers),
publishing a batch at once, and polling with deadlines."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from bench.benchapp import TRACE_PREFIX
from bench.config import BenchConfig
from bench.modes import UNPOOLED, create_pool
from bench.system import CpuMeter
from bench.workers import WorkerGroup
from celery_pools import PoolManager

__all__ = ["Bench", "stop_consuming", "wait_for"]


@dataclass
class Bench:
    """What a scenario needs: sizes, the driver's app, the workers, the three Redis servers."""

    config: BenchConfig
    mode: str
    app: Any
    workers: WorkerGroup
    manager: PoolManager
    broker: redis.Redis
    pools: redis.Redis
    records: redis.Redis
    server_pids: list[int]

    def name(self, what: str) -> str:
        """A fresh name for a pool, queue or instance of this mode."""
        return f"{what}-{self.mode}-{uuid.uuid4().hex[:6]}"

    def cpu_meter(self) -> CpuMeter:
        """A meter of the machine's CPU from now on, knowing which processes are the benchmark's
        and what each does: the producer (this process), the workers' main processes, their pool
        processes, and each Redis server (``server_pids``: broker, pools, records)."""

        def roles() -> dict[str, list[int]]:
            mains = self.workers.main_pids()
            servers = dict(zip(("broker", "pools", "records"), self.server_pids, strict=False))
            return {
                "producer": [os.getpid()],
                "worker main": mains,
                "worker children": [p for p in self.workers.pids() if p not in mains],
                **{f"{name} redis": [pid] for name, pid in servers.items()},
            }

        return CpuMeter(lambda: [pid for pids in roles().values() for pid in pids], roles)

    def now(self) -> float:
        """The records server's clock (the clock of every recorded event)."""
        seconds, micros = self.records.time()
        return float(seconds) + micros / 1e6

    def publish(self, task: str, count: int, queue: str, **kwargs: Any) -> float:
        """Publish ``count`` calls of ``task`` to ``queue`` through ``apply_async``, one after
        another on one producer, as an application would; returns the records server's time just
        before the first.

        ``apply_async`` is where a pool that waits by hand-off parks a task in Redis instead of
        publishing it, so this goes through it rather than writing messages to the broker.
        """
        signature = self.app.tasks[task]
        started = self.now()
        with self.app.producer_or_acquire() as producer:
            for _ in range(count):
                signature.apply_async(kwargs=kwargs, queue=queue, producer=producer)
        return started

    def consume(self, queue: str) -> int:
        """Make every worker wait on ``queue``; return the control replies (broker messages)."""
        return self.workers.consume(self.app, queue, self.broker)

    def pool(self, what: str, limit: int, timeout: float, traced: bool) -> tuple[str, str]:
        """Create a pool of this mode with one instance assigned; return ``(pool, instance)``.

        The reference mode (:data:`UNPOOLED`) creates no pool: only the names.
        """
        pool = self.name(what)
        instance = (TRACE_PREFIX if traced else "ample.") + pool
        if self.mode != UNPOOLED:
            create_pool(self.manager, pool, limit=limit, timeout=timeout, mode=self.mode)
            self.manager.assign(instance, pool)
        return pool, instance

    def task(self, name: str) -> str:
        """The task a scenario publishes for ``name`` (``bench.work``, ``bench.call``): its
        plain twin in the reference mode."""
        return f"{name}_plain" if self.mode == UNPOOLED else name


def wait_for(done: Callable[[], bool], timeout: float, interval: float) -> bool:
    """Poll ``done`` until it is true or ``timeout`` passes; return its last answer."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            return done()
        time.sleep(interval)
    return True


def stop_consuming(app: Any, workers: WorkerGroup, queue: str) -> None:
    """Make every worker of ``workers`` stop consuming ``queue``."""
    app.control.cancel_consumer(queue, destination=workers.names, reply=True, timeout=10)
