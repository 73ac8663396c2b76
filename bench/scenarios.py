"""The scenarios that run tasks through real workers: overhead, saturation, calls and backlog.

Each scenario first makes every worker wait on a fresh queue, then publishes all its tasks at
once through ``apply_async`` (see :meth:`Bench.publish`). Progress is polled with deadlines.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from typing import Any

from bench.config import BenchConfig
from bench.fake_api import FakeAPI
from bench.harness import Bench, stop_consuming, wait_for
from bench.measure import (
    api_figures,
    api_timeline,
    concurrency_timeline,
    grant_inversions,
    grant_to_start,
    handoff_latencies,
    milliseconds,
    order_inversions,
    percentile,
    utilisation,
    utilisation_between,
)
from bench.modes import HANDOFF_MODE, UNPOOLED, pool_mode
from bench.recorder import Recorder
from bench.system import command_calls, server_cpu, used_memory

__all__ = ["call_lengths", "run_backlog", "run_calls", "run_overhead", "run_saturation"]

#: The seed of the calls scenario's lengths (the same lengths in every mode and run).
CALLS_SEED = 20261206


def _noop_rate(bench: Bench, kind: str, instance: str, tasks: int) -> tuple[float, Any]:
    """Tasks per second of one batch of no-op tasks: from their publication to the last done."""
    queue = bench.name(f"overhead-{kind}")
    recorder = Recorder(bench.records, instance)
    bench.consume(queue)
    cpu = bench.cpu_meter()
    started = bench.publish(f"bench.noop_{kind}", tasks, queue, instance=instance)
    finished = wait_for(
        lambda: recorder.done_count() + recorder.failed_count() >= tasks, timeout=600, interval=0.05
    )
    busy = cpu.read()
    stop_consuming(bench.app, bench.workers, queue)
    last = recorder.last_done()
    if not finished or recorder.failed_count() or last is None:
        raise RuntimeError(
            f"overhead: {recorder.done_count()} of {tasks} {kind} no-op tasks finished, "
            f"{recorder.failed_count()} failed"
        )
    return tasks / (last - started), busy


def run_overhead(bench: Bench) -> dict[str, Any]:
    """No-op tasks through a plain ``Task`` and through ``PooledTask`` on an ample pool, and
    plain no-op tasks whose body runs the two scripts a pooled task needs (``scripts``: what
    those round trips cost inside a worker's process, beside the same pair from this process).

    Batches go plain, scripts, pooled, plain, ...; the median of each kind is reported.
    """
    cfg = bench.config
    pool, _ = bench.pool("ample", cfg.overhead_limit, 30, traced=False)
    kinds = ("plain", "scripts", "pooled")
    rates: dict[str, list[float]] = {kind: [] for kind in kinds}
    cpu: dict[str, list[Any]] = {kind: [] for kind in kinds}
    waited: list[int] = []
    for repeat in range(cfg.overhead_repeats):
        for kind in kinds:
            # A fresh instance per batch, so each batch counts into keys of its own.
            instance = f"ample.{pool}.{kind}.{repeat}"
            if kind != "plain":
                bench.manager.assign(instance, pool)
            before = _waited(bench, pool) if kind == "pooled" else 0
            rate, busy = _noop_rate(bench, kind, instance, cfg.overhead_tasks)
            rates[kind].append(rate)
            cpu[kind].append(busy)
            if kind == "pooled":
                waited.append(_waited(bench, pool) - before)
    plain = statistics.median(rates["plain"])
    pooled = statistics.median(rates["pooled"])
    per_task = {
        kind: statistics.median(
            [r["own_s"] / cfg.overhead_tasks for r in cpu[kind] if r.get("own_s") is not None]
            or [float("nan")]
        )
        for kind in kinds
    }
    bare = _bare_pair_cpu(bench, pool)
    in_task = per_task["scripts"] - per_task["plain"]
    by_role = {
        kind: _median_roles([r.get("roles_s") or {} for r in cpu[kind]], cfg.overhead_tasks)
        for kind in kinds
    }
    return {
        "plain_cpu_per_task_ms": per_task["plain"] * 1000,
        "pooled_cpu_per_task_ms": per_task["pooled"] * 1000,
        "bare_pair_cpu_ms": bare * 1000,
        # The extra CPU of a pooled task in units of the two scripts it cannot do without.
        "overhead_figure": (per_task["pooled"] - per_task["plain"]) / bare,
        # The same pair run by a plain task's body in the workers, and the extra CPU of a
        # pooled task in units of that: what celery-pools adds around its two scripts.
        "scripts_cpu_per_task_ms": per_task["scripts"] * 1000,
        "in_task_pair_cpu_ms": in_task * 1000,
        "overhead_figure_in_task": (
            (per_task["pooled"] - per_task["plain"]) / in_task if in_task > 0 else float("nan")
        ),
        # Where it goes: CPU ms per task by process role (median batch), and pooled - plain.
        "cpu_by_role_ms": by_role,
        "extra_cpu_by_role_ms": {
            role: by_role["pooled"][role] - by_role["plain"].get(role, 0.0)
            for role in by_role["pooled"]
        },
        "scripts_extra_cpu_by_role_ms": {
            role: by_role["scripts"][role] - by_role["plain"].get(role, 0.0)
            for role in by_role["scripts"]
        },
        "tasks_per_batch": cfg.overhead_tasks,
        "plain_per_s": plain,
        "pooled_per_s": pooled,
        "plain_batches_per_s": rates["plain"],
        "pooled_batches_per_s": rates["pooled"],
        "scripts_batches_per_s": rates["scripts"],
        "plain_batches_cpu": cpu["plain"],
        "pooled_batches_cpu": cpu["pooled"],
        "throughput_ratio": pooled / plain,
        "overhead_pct": (1 - pooled / plain) * 100,
        # Pooled tasks that found the pool full: none, if the pool was ample as intended.
        "pooled_batches_waited": waited,
    }


def _median_roles(readings: list[dict[str, float]], tasks: int) -> dict[str, float]:
    """CPU ms per task of each role: the median of ``readings`` (role -> CPU seconds of a
    batch of ``tasks``)."""
    roles = {role for reading in readings for role in reading}
    return {
        role: statistics.median(r.get(role, 0.0) for r in readings) * 1000 / tasks
        for role in sorted(roles)
    }


def _bare_pair_cpu(bench: Bench, pool: str, pairs: int = 1000) -> float:
    """CPU seconds of one acquire and one release script from this process's store (client and
    the pools' Redis, ``INFO cpu``), the two round trips a pooled task on an ample pool needs."""
    store = bench.manager.store
    instance = bench.name("bare")
    bench.manager.assign(instance, pool)

    own, server = time.process_time(), server_cpu(store.client)
    for index in range(pairs):
        token = f"{instance}-{index}"
        store.acquire(instance, token, lease=60)
        store.release(token, pool)
    return (time.process_time() - own + server_cpu(store.client) - server) / pairs


def _waited(bench: Bench, pool: str) -> int:
    """How many tasks of ``pool`` have waited for a slot so far (its own counter)."""
    (metrics,) = bench.manager.store.metrics([pool])
    return metrics.acquired_waited


def run_saturation(bench: Bench) -> dict[str, Any]:
    """Many short tasks on a small pool: utilisation, hand-off latency, messages, order."""
    cfg = bench.config
    limit, tasks = cfg.saturation_limit, cfg.saturation_tasks
    pool, instance = bench.pool("sat", limit, cfg.pool_timeout, traced=True)
    recorder = Recorder(bench.records, instance)
    queue = bench.name("sat")
    bench.consume(queue)
    before = command_calls(bench.broker)
    cpu = bench.cpu_meter()
    published = bench.publish(
        bench.task("bench.work"), tasks, queue, instance=instance, seconds=cfg.saturation_seconds
    )
    publish_s = bench.now() - published
    finished = wait_for(
        lambda: recorder.done_count() + recorder.failed_count() >= tasks,
        timeout=cfg.saturation_deadline,
        interval=0.1,
    )
    messages = command_calls(bench.broker) - before
    busy = cpu.read()
    stop_consuming(bench.app, bench.workers, queue)

    events = recorder.events()
    use = utilisation(events, limit)
    starts = [e.at for e in events if e.kind == "s"]
    # After the burst: from the end of publication (the producer then stops taking a core of
    # its own) to the last start (after it no work waits, and idle slots are the tail).
    published_all = published + publish_s
    steady = utilisation_between(events, limit, published_all, max(starts, default=0.0))
    ends = [e.at for e in events if e.kind == "e"]
    # A plain task's slot is given back as its body ends (the reference).
    releases = ends if bench.mode == UNPOOLED else [r.at for r in recorder.releases()]
    handoffs = handoff_latencies(releases, starts, limit)
    # What the external system sees of a hand-off: a body's end to the next body's start, the
    # release and everything around it included (a woken standby often starts before the
    # releasing process records its release, which then counts 0 above).
    gap_pairs = handoff_latencies(ends, starts, limit)
    gaps = gap_pairs.latencies
    # The same two after publication: the first wave of hand-offs comes while the producer
    # still publishes the burst on the same two cores, and its tail is the run's p99.
    steady_latencies, steady_gaps = handoffs.since(published_all), gap_pairs.since(published_all)
    acquisitions = recorder.acquisitions()
    inversions, waiters = order_inversions(acquisitions, events)
    waiter_pairs = waiters * (waiters - 1) // 2
    by_grant, granted = grant_inversions(acquisitions)
    # Only a hand-off pool grants a slot ahead of its claim: a countdown waiter's grant is its
    # own acquisition, a moment before its start.
    handed = grant_to_start(acquisitions, events) if pool_mode(bench.mode) == HANDOFF_MODE else []
    handed_after = [lat for at, lat in handed if at >= published_all]
    handed_all = [lat for _, lat in handed]
    granted_pairs = granted * (granted - 1) // 2
    latencies = handoffs.latencies
    return {
        "limit": limit,
        "tasks": tasks,
        "task_seconds": cfg.saturation_seconds,
        "finished": finished,
        "completed": recorder.done_count(),
        "failed": recorder.failed_count(),
        "utilisation": use.ratio,
        "steady_utilisation": steady,
        "busy_slot_seconds": use.busy,
        "makespan_s": use.makespan,
        "ideal_makespan_s": tasks * cfg.saturation_seconds / limit,
        # From just before the first publication to just after the last (records' clock), and
        # from just before the first publication to the first body start.
        "publish_s": publish_s,
        "first_start_after_publish_s": min((e.at for e in events if e.kind == "s"), default=0.0)
        - published,
        "handoff_p50_ms": milliseconds(percentile(latencies, 0.50)),
        "handoff_p99_ms": milliseconds(percentile(latencies, 0.99)),
        "handoff_mean_ms": milliseconds(statistics.fmean(latencies) if latencies else None),
        "handoff_max_ms": milliseconds(max(latencies, default=None)),
        "gap_p50_ms": milliseconds(percentile(gaps, 0.50)),
        "gap_p99_ms": milliseconds(percentile(gaps, 0.99)),
        "gap_mean_ms": milliseconds(statistics.fmean(gaps) if gaps else None),
        "steady_handoff_p50_ms": milliseconds(percentile(steady_latencies, 0.50)),
        "steady_handoff_p99_ms": milliseconds(percentile(steady_latencies, 0.99)),
        "grant_to_start_p50_ms": milliseconds(percentile(handed_all, 0.50)),
        "grant_to_start_p99_ms": milliseconds(percentile(handed_all, 0.99)),
        "steady_grant_to_start_p50_ms": milliseconds(percentile(handed_after, 0.50)),
        "steady_grant_to_start_p99_ms": milliseconds(percentile(handed_after, 0.99)),
        "steady_gap_p50_ms": milliseconds(percentile(steady_gaps, 0.50)),
        "steady_gap_p99_ms": milliseconds(percentile(steady_gaps, 0.99)),
        "handoffs": len(latencies),
        "handoffs_initial": handoffs.initial,
        "handoffs_skewed": handoffs.skewed,
        "broker_messages": messages,
        "messages_per_task": messages / tasks,
        "wait_attempts_per_task": recorder.wait_count() / tasks,
        "waiters": waiters,
        "order_inversions": inversions,
        # None without waiters (the reference: no task asks a pool, none waits for one)
        "inversion_fraction": inversions / waiter_pairs if waiter_pairs else None,
        # The same pairs by when the pool granted each slot (its FIFO), not when bodies started.
        "grant_inversions": by_grant,
        "grant_inversion_fraction": by_grant / granted_pairs if granted_pairs else None,
        "max_concurrency": max((e.running for e in events), default=0),
        "cpu": busy,
        "timeline": concurrency_timeline(events),
        # The pool's own counters of how slots went round (what it did, not what it achieved).
        "pool_counters": _pool_counters(bench, pool),
    }


def _pool_counters(bench: Bench, pool: str) -> dict[str, int] | None:
    if bench.mode == UNPOOLED:
        return None
    (metrics,) = bench.manager.store.metrics([pool])
    fields = (
        "acquired_immediate", "acquired_waited", "handoffs", "handoffs_retried",
        "standbys_promoted", "standbys_woken", "standbys_returned",
    )  # fmt: skip
    return {field: int(getattr(metrics, field)) for field in fields}


def call_lengths(config: BenchConfig) -> list[int]:
    """The calls scenario's call lengths (ms): ``calls_tasks`` seeded log-normal draws around
    ``calls_median_ms`` (spread ``calls_sigma``), kept within ``calls_min_ms..calls_max_ms``."""
    rng = random.Random(CALLS_SEED)
    median, sigma = math.log(config.calls_median_ms), config.calls_sigma
    return [
        min(config.calls_max_ms, max(config.calls_min_ms, round(rng.lognormvariate(median, sigma))))
        for _ in range(config.calls_tasks)
    ]


def run_calls(bench: Bench) -> dict[str, Any]:
    """Calls of realistic, varied lengths to a fake API capped at the pool's limit, all published
    at once: what the API saw (its own count of calls in flight, 429s, busy time, order)."""
    cfg = bench.config
    limit = cfg.calls_limit
    _, instance = bench.pool("calls", limit, cfg.pool_timeout, traced=False)
    recorder = Recorder(bench.records, instance)
    queue = bench.name("calls")
    bench.consume(queue)
    lengths = call_lengths(cfg)
    task = bench.app.tasks[bench.task("bench.call")]
    with FakeAPI(limit) as api:
        before = command_calls(bench.broker)
        cpu = bench.cpu_meter()
        with bench.app.producer_or_acquire() as producer:
            ids = [
                task.apply_async(
                    kwargs={"instance": instance, "api": api.url, "ms": ms},
                    queue=queue,
                    producer=producer,
                ).id
                for ms in lengths
            ]
        finished = wait_for(
            lambda: recorder.done_count() + recorder.failed_count() >= len(ids),
            timeout=60 + 4 * sum(lengths) / 1000 / limit,
            interval=0.1,
        )
        messages = command_calls(bench.broker) - before
        busy = cpu.read()
        calls = api.calls()
    stop_consuming(bench.app, bench.workers, queue)
    return {
        "limit": limit,
        "tasks": len(ids),
        "median_ms": statistics.median(lengths),
        "mean_ms": statistics.fmean(lengths),
        "finished": finished,
        "completed": recorder.done_count(),
        "failed": recorder.failed_count(),
        # The API's own count: never more than the limit, never a 429.
        "max_concurrency": api.max_in_flight,
        "refused": api.refused,
        "broker_messages": messages,
        "messages_per_task": messages / len(ids),
        "cpu": busy,
        # The API's calls in flight over time: (seconds since the first call started, calls).
        "timeline": api_timeline(calls),
        **api_figures(ids, lengths, calls, limit),
    }


def run_backlog(bench: Bench) -> dict[str, Any]:
    """A large backlog queued at once on a small pool: memory of workers and Redis, messages.

    Runs until every task finished or for ``backlog_window`` seconds, whichever comes first.
    """
    cfg = bench.config
    limit, tasks = cfg.backlog_limit, cfg.backlog_tasks
    _, instance = bench.pool("backlog", limit, cfg.pool_timeout, traced=True)
    recorder = Recorder(bench.records, instance)
    queue = bench.name("backlog")
    bench.consume(queue)
    baseline = _memory_sample(bench, recorder, 0.0)
    before = command_calls(bench.broker)
    cpu = bench.cpu_meter()
    bench.publish("bench.work", tasks, queue, instance=instance, seconds=cfg.backlog_seconds)
    started = time.monotonic()
    samples = [baseline]

    def sample_and_check() -> bool:
        samples.append(_memory_sample(bench, recorder, time.monotonic() - started))
        return recorder.done_count() + recorder.failed_count() >= tasks

    finished = wait_for(sample_and_check, timeout=cfg.backlog_window, interval=cfg.sample_interval)
    elapsed = time.monotonic() - started
    messages = command_calls(bench.broker) - before
    busy = cpu.read()
    completed = recorder.done_count()
    events = recorder.events()

    def peak(field: str) -> int:
        return max(int(s[field]) for s in samples)

    return {
        "limit": limit,
        "tasks": tasks,
        "task_seconds": cfg.backlog_seconds,
        "window_s": cfg.backlog_window,
        "finished": finished,
        "elapsed_s": elapsed,
        "completed": completed,
        "failed": recorder.failed_count(),
        "completed_per_s": completed / elapsed if elapsed else 0.0,
        "broker_messages": messages,
        "messages_per_task": messages / completed if completed else None,
        "wait_attempts_per_task": recorder.wait_count() / completed if completed else None,
        "max_concurrency": max((e.running for e in events), default=0),
        "cpu": busy,
        "worker_rss_baseline": baseline["worker_rss"],
        "worker_rss_peak": peak("worker_rss"),
        "worker_rss_growth": peak("worker_rss") - baseline["worker_rss"],
        "worker_main_rss_baseline": baseline["worker_main_rss"],
        "worker_main_rss_peak": peak("worker_main_rss"),
        "pools_memory_baseline": baseline["pools_memory"],
        "pools_memory_peak": peak("pools_memory"),
        "broker_memory_baseline": baseline["broker_memory"],
        "broker_memory_peak": peak("broker_memory"),
        "samples": samples,
    }


def _memory_sample(bench: Bench, recorder: Recorder, at: float) -> dict[str, float]:
    workers = bench.workers.memory()
    return {
        "t": round(at, 3),
        "completed": recorder.done_count(),
        "worker_rss": workers["total"],
        "worker_main_rss": workers["main"],
        "pools_memory": used_memory(bench.pools),
        "broker_memory": used_memory(bench.broker),
    }
