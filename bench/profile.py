"""``python -m bench.profile``: where a pooled no-op spends its CPU, against a plain one.

One solo worker (``celery worker -P solo``: the worker's main process runs the task too, so one
profile holds the consumer, the pool's hooks and the body) runs ``--tasks`` no-op tasks under
``cProfile``, once plain and once pooled on an ample pool (never full, as in the overhead
scenario; ``--wait handoff`` for a hand-off pool, ``--standby-max`` for the workers'
``pools_standby_max``); the producer's ``apply_async`` loop is profiled in this process. For each
side (worker, producer) it prints the functions whose own time grew most from plain to pooled,
per task, and the pools' Redis commands per pooled task. Timings under a profiler are inflated;
read the differences, not the totals.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from bench.benchapp import create_app
from bench.harness import wait_for
from bench.recorder import Recorder
from bench.system import command_counts, server_cpu
from bench.workerenv import ENV, STANDBY_MAX_ENV
from bench.workers import WorkerGroup
from celery_pools import PoolManager
from celery_pools.local_redis import LocalRedis

__all__ = ["main"]

#: Own time per function: ``(file, line, name) -> seconds``.
Costs = dict[tuple[str, int, str], float]


def _own_times(path: Path) -> tuple[Costs, float]:
    stats: Any = pstats.Stats(str(path))
    costs = {key: value[2] for key, value in stats.stats.items()}
    return costs, float(stats.total_tt)


def _where(key: tuple[str, int, str]) -> str:
    file, line, name = key
    parts = Path(file).parts
    for anchor in ("site-packages", "celery_pools", "bench", "lib"):
        if anchor in parts:
            file = "/".join(parts[parts.index(anchor) + (anchor == "site-packages") :])
            break
    return f"{name} ({file}:{line})" if line else name


def _growth(plain: Costs, pooled: Costs, tasks: int, top: int) -> list[str]:
    keys = set(plain) | set(pooled)
    grown = sorted(keys, key=lambda k: pooled.get(k, 0.0) - plain.get(k, 0.0), reverse=True)
    return [
        f"  {1e6 * (pooled.get(k, 0.0) - plain.get(k, 0.0)) / tasks:8.1f} us  "
        f"(plain {1e6 * plain.get(k, 0.0) / tasks:6.1f})  {_where(k)}"
        for k in grown[:top]
    ]


def _run_kind(
    kind: str, tasks: int, servers: dict[str, LocalRedis], out: Path, *, wait: str, standby_max: int
) -> dict[str, Any]:
    urls = {
        "broker": servers["broker"].url(0),
        "backend": servers["records"].url(1),
        "pools_url": servers["pools"].url(0),
        "record_url": servers["records"].url(0),
        "queue": f"profile-{kind}",
    }
    app = create_app(**urls, standby_max=standby_max)
    manager = PoolManager.from_url(urls["pools_url"])
    instance = f"ample.profile.{kind}"
    if kind == "pooled":
        manager.create("profile", limit=1000, timeout=30, wait=wait)
        manager.assign(instance, "profile")
    worker_profile = out / f"worker-{kind}.prof"
    env = {ENV[name]: url for name, url in urls.items()}
    env[STANDBY_MAX_ENV] = str(standby_max)
    workers = WorkerGroup(
        env,
        count=1,
        concurrency=1,
        queue=urls["queue"],
        log_dir=out,
        pool="solo",
        python_args=["-m", "cProfile", "-o", str(worker_profile)],
    )
    pools = redis.Redis.from_url(urls["pools_url"])
    recorder = Recorder(redis.Redis.from_url(urls["record_url"], decode_responses=True), instance)
    with workers:
        workers.start(app)
        before, cpu = command_counts(pools), server_cpu(pools)
        producer_profile = cProfile.Profile()
        task = app.tasks[f"bench.noop_{kind}"]
        started = time.monotonic()
        with app.producer_or_acquire() as producer:
            producer_profile.enable()
            for _ in range(tasks):
                task.apply_async(kwargs={"instance": instance}, producer=producer)
            producer_profile.disable()
        if not wait_for(lambda: recorder.done_count() >= tasks, timeout=600, interval=0.1):
            raise RuntimeError(f"{kind}: {recorder.done_count()} of {tasks} done")
        elapsed = time.monotonic() - started
        after, cpu = command_counts(pools), server_cpu(pools) - cpu
    producer_profile.dump_stats(str(out / f"producer-{kind}.prof"))
    return {
        "elapsed_s": elapsed,
        "redis_cpu_s": cpu,
        "commands": {n: c - before.get(n, 0) for n, c in after.items() if c > before.get(n, 0)},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Profile plain and pooled no-ops; print where the pooled ones spend more."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--tasks", type=int, default=3000, help="no-op tasks per kind")
    parser.add_argument("--top", type=int, default=25, help="functions shown per side")
    parser.add_argument("--output", type=Path, default=None, help="where the .prof files go")
    parser.add_argument(
        "--wait", choices=("countdown", "handoff"), default="countdown", help="the pool's mode"
    )
    parser.add_argument(
        "--standby-max", type=int, default=0, help="the workers' pools_standby_max (default 0)"
    )
    args = parser.parse_args(argv)
    out = args.output or Path(tempfile.mkdtemp(prefix="celery-pools-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for kind in ("plain", "pooled"):
        with (
            LocalRedis() as broker,
            LocalRedis() as pools,
            LocalRedis() as records,
        ):
            servers = {"broker": broker, "pools": pools, "records": records}
            runs[kind] = _run_kind(
                kind, args.tasks, servers, out, wait=args.wait, standby_max=args.standby_max
            )
    tasks = args.tasks
    for side in ("worker", "producer"):
        plain, plain_total = _own_times(out / f"{side}-plain.prof")
        pooled, pooled_total = _own_times(out / f"{side}-pooled.prof")
        print(
            f"\n{side}: {1e6 * plain_total / tasks:.0f} us per plain task, "
            f"{1e6 * pooled_total / tasks:.0f} us per pooled task (profiled); grew most:"
        )
        print("\n".join(_growth(plain, pooled, tasks, args.top)))
    commands = runs["pooled"]["commands"]
    print(
        f"\npools' Redis per pooled task: {sum(commands.values()) / tasks:.1f} commands, "
        f"{1e6 * runs['pooled']['redis_cpu_s'] / tasks:.0f} us CPU:"
    )
    for name, calls in sorted(commands.items(), key=lambda item: -item[1]):
        print(f"  {calls / tasks:6.2f}  {name}")
    print(f"\nprofiles in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
