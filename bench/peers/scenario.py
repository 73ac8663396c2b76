"""The peers scenario: one workload through every peer, judged by what the fake API saw.

For each case (a peer at a limit) a fresh group of real prefork workers runs three runs in turn,
each against a fake API of its own whose cap is the limit (:class:`bench.fake_api.FakeAPI`: it
counts its own calls in flight and answers 429 over its cap):

* **fixed**: ``peers_tasks`` calls of ``peers_fixed_ms`` each, all published at once;
* **varied**: as many calls of seeded random length (log-normal, median 40 ms, 5-400 ms);
* **kill**: ``peers_kill_tasks`` calls of ``peers_kill_ms``; once the API serves ``limit`` calls,
  the worker process making the oldest of them is SIGKILLed. The API keeps serving that call to
  its end, as a real server does.

Every figure comes from the API's own records, the broker's and the pools' Redis command counts
and /proc, never from the peer's code. A lock (limit 1 only) runs with ``peers_tasks / limit``
tasks at limit 1, beside celery-pools' hand-off mode at limit 1.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bench.config import BenchConfig
from bench.fake_api import Call, FakeAPI
from bench.harness import stop_consuming, wait_for
from bench.measure import api_figures
from bench.peers import PEERS, Peer
from bench.peers.app import CALL_TASK, create_app
from bench.system import CpuMeter, command_calls, command_counts, package_version, server_cpu
from bench.workerenv import ENV, LEASE_ENV, STANDBY_MAX_ENV
from bench.workers import WorkerGroup
from celery_pools import PoolManager
from celery_pools.local_redis import LocalRedis

__all__ = ["Case", "after_kill", "cases", "run_peers"]

#: The seed of the varied call lengths (the same lengths for every peer).
LENGTH_SEED = 20261203


@dataclass(frozen=True)
class Case:
    """A peer at a limit."""

    peer: Peer
    limit: int

    @property
    def label(self) -> str:
        """The row name: the peer, and the limit when it is 1."""
        return self.peer.name if self.limit != 1 else f"{self.peer.name} (limit 1)"


def cases(config: BenchConfig) -> list[Case]:
    """Every peer at ``peers_limit`` (a lock at 1), and celery-pools' hand-off at 1 beside it."""
    found = [Case(p, 1 if p.limit_one else config.peers_limit) for p in PEERS.values()]
    found.insert(
        next(i for i, c in enumerate(found) if c.limit == 1), Case(PEERS["celery-pools handoff"], 1)
    )
    return found


def fixed_lengths(config: BenchConfig, tasks: int) -> list[int]:
    """``tasks`` calls of ``peers_fixed_ms``."""
    return [config.peers_fixed_ms] * tasks


def varied_lengths(tasks: int) -> list[int]:
    """``tasks`` seeded log-normal call lengths (ms): median 40, mean about 52, 5 to 400."""
    rng = random.Random(LENGTH_SEED)
    return [min(400, max(5, round(rng.lognormvariate(math.log(40), 0.7)))) for _ in range(tasks)]


@dataclass
class _Context:
    """What the runs of one case share: sizes, servers, the driver's app, the workers."""

    config: BenchConfig
    case: Case
    app: Any
    workers: WorkerGroup
    manager: PoolManager
    broker: redis.Redis
    pools: redis.Redis
    backend: redis.Redis
    server_pids: list[int]

    def cpu_meter(self) -> CpuMeter:
        return CpuMeter(lambda: [os.getpid(), *self.server_pids, *self.workers.pids()])

    def publish(self, key: str, queue: str, lengths: Sequence[int], api: str) -> list[str]:
        """One call per length, in order, through ``apply_async``; the task ids in that order."""
        peer = self.case.peer
        task = self.app.tasks[peer.task]
        base = {"key": key, "api": api}
        if peer.task == CALL_TASK:
            base.update(peer=peer.name, limit=self.case.limit)
        ids = []
        with self.app.producer_or_acquire() as producer:
            for ms in lengths:
                result = task.apply_async(kwargs={**base, "ms": ms}, queue=queue, producer=producer)
                ids.append(result.id)
        return ids


def _outcomes(backend: redis.Redis, ids: list[str]) -> dict[str, tuple[str, str | None]]:
    """``task -> (state, exception type)`` of the tasks of ``ids`` that have ended (their result
    in the Redis result backend is SUCCESS or FAILURE)."""
    metas = backend.mget([f"celery-task-meta-{task}" for task in ids])
    ended = {}
    for task, meta in zip(ids, metas, strict=True):
        if meta is None:
            continue
        result = json.loads(meta)
        if result.get("status") in ("SUCCESS", "FAILURE"):
            error = result.get("result") if result["status"] == "FAILURE" else None
            kind = error.get("exc_type") if isinstance(error, dict) else None
            ended[task] = (str(result["status"]), kind)
    return ended


def _run(
    ctx: _Context,
    what: str,
    lengths: Sequence[int],
    during: Callable[[FakeAPI], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Publish one call per length to a fresh key and queue, wait until every task ended (its
    result in the backend) or the deadline, and return the figures; ``during`` acts while the
    run goes on. A task that never ended is lost."""
    cfg, case = ctx.config, ctx.case
    key = f"{what}-{uuid.uuid4().hex[:8]}"
    case.peer.prepare(ctx.manager, key, case.limit)
    ctx.workers.consume(ctx.app, key, ctx.broker)
    ideal = sum(lengths) / 1000 / case.limit
    deadline = 60 + 4 * ideal + 6 * cfg.peers_lease
    with FakeAPI(case.limit) as api:
        messages, commands = command_calls(ctx.broker), command_counts(ctx.pools)
        redis_cpu = server_cpu(ctx.pools)
        cpu = ctx.cpu_meter()
        started = time.monotonic()
        ids = ctx.publish(key, key, lengths, api.url)
        extra = during(api) if during is not None else {}
        finished = wait_for(
            lambda: len(_outcomes(ctx.backend, ids)) >= len(ids), timeout=deadline, interval=0.1
        )
        elapsed = time.monotonic() - started
        busy = cpu.read()
        messages = command_calls(ctx.broker) - messages
        redis_cpu = server_cpu(ctx.pools) - redis_cpu
        after = command_counts(ctx.pools)
        spent = {name: calls - commands.get(name, 0) for name, calls in after.items()}
        spent = {name: calls for name, calls in spent.items() if calls > 0}
        calls = api.calls()
        stop_consuming(ctx.app, ctx.workers, key)
        outcomes = _outcomes(ctx.backend, ids)
        failures = Counter(kind or "?" for state, kind in outcomes.values() if state == "FAILURE")
        return {
            "tasks": len(ids),
            "finished": finished,
            "elapsed_s": elapsed,
            # Tasks that ended in FAILURE (by exception type), and tasks that never ended.
            "failed_tasks": sum(failures.values()),
            "failures": dict(failures),
            "lost_tasks": len(ids) - len(outcomes),
            "max_in_flight": api.max_in_flight,
            "refused": api.refused,
            "broker_messages_per_task": messages / len(ids),
            # Every command the pools' Redis ran, those inside scripts included, and how many
            # of them were script calls (EVAL, EVALSHA, FCALL); its CPU.
            "redis_commands_per_task": sum(spent.values()) / len(ids),
            "redis_script_calls_per_task": sum(
                spent.get(name, 0) for name in ("eval", "evalsha", "fcall")
            )
            / len(ids),
            "redis_cpu_ms_per_task": redis_cpu * 1000 / len(ids),
            # Which commands they were, most used first: per task.
            "redis_commands": {
                name: calls / len(ids)
                for name, calls in sorted(spent.items(), key=lambda item: -item[1])
            },
            "cpu_ms_per_task": (busy["own_s"] or 0.0) * 1000 / len(ids),
            "cpu": busy,
            **api_figures(ids, lengths, calls, case.limit),
            **extra,
            **(after_kill(extra, calls, case.limit) if "killed_at" in extra else {}),
        }


def _kill_holder(ctx: _Context) -> Callable[[FakeAPI], dict[str, Any]]:
    """Once the API serves ``limit`` calls, SIGKILL the worker process making the oldest."""

    def kill(api: FakeAPI) -> dict[str, Any]:
        if not wait_for(lambda: len(api.in_flight()) >= ctx.case.limit, timeout=60, interval=0.01):
            return {"kill_error": f"the API never served {ctx.case.limit} calls at once"}
        victim = min(api.in_flight(), key=lambda c: c.started)
        if victim.pid not in ctx.workers.pids():
            return {"kill_error": f"pid {victim.pid} is not a benchmark worker process"}
        os.kill(victim.pid, signal.SIGKILL)
        return {
            "killed_at": time.monotonic(),
            "killed_task": victim.task,
            "killed_pid": victim.pid,
            "killed_call_started": victim.started,
        }

    return kill


def after_kill(extra: dict[str, Any], calls: list[Call], limit: int) -> dict[str, Any]:
    """What the kill did, from the API's records.

    ``slot_back_s``: seconds from the kill until the API again served ``limit`` calls that were
    not the killed one (None: not within the run). ``last_start_s``: seconds from the kill to the
    run's last call start (how long work was still waiting). ``victim_calls``: calls the killed
    task made in all (2: it ran again; 1: its message was lost or it never ran again).
    """
    killed_at = float(extra["killed_at"])
    victim = extra["killed_task"]
    others = [
        c for c in calls
        if not c.refused and not (c.task == victim and c.started == extra["killed_call_started"])
    ]  # fmt: skip
    events: list[tuple[float, int]] = []
    running = 0
    for c in others:
        if c.started <= killed_at and (c.ended is None or c.ended > killed_at):
            running += 1
        elif c.started > killed_at:
            events.append((c.started, 1))
        if c.ended is not None and c.ended > killed_at and c.started <= c.ended:
            events.append((c.ended, -1))
    back = None
    for at, step in sorted(events):  # at the same instant, an end before a start
        running += step
        if running >= limit:
            back = at - killed_at
            break
    starts = [c.started for c in calls if c.started > killed_at]
    return {
        "slot_back_s": back,
        "last_start_s": (max(starts) - killed_at) if starts else None,
        "victim_calls": sum(1 for c in calls if c.task == victim and not c.refused),
    }


def _case(
    config: BenchConfig, case: Case, servers: dict[str, LocalRedis], log_dir: Path
) -> dict[str, Any]:
    urls = {
        "broker": servers["broker"].url(0),
        "backend": servers["records"].url(1),
        "pools_url": servers["pools"].url(0),
        "queue": "peers.default",
    }
    standby_max = case.peer.worker_settings.get("pools_standby_max", 0)
    app = create_app(**urls, lease=config.peers_lease, standby_max=standby_max)
    env = {ENV[name]: url for name, url in urls.items()}
    env[LEASE_ENV] = str(config.peers_lease)
    env[STANDBY_MAX_ENV] = str(standby_max)
    workers = WorkerGroup(
        env,
        count=config.workers,
        concurrency=config.concurrency,
        queue=urls["queue"],
        log_dir=log_dir / case.label.replace(" ", "_"),
        app_module="bench.peers.app",
    )
    scale = case.limit / config.peers_limit
    tasks = max(2, round(config.peers_tasks * scale))
    kill_tasks = max(2, round(config.peers_kill_tasks * scale))
    with workers:
        workers.start(app)
        ctx = _Context(
            config=config,
            case=case,
            app=app,
            workers=workers,
            manager=PoolManager.from_url(urls["pools_url"]),
            broker=redis.Redis.from_url(urls["broker"], socket_timeout=10),
            pools=redis.Redis.from_url(urls["pools_url"]),
            backend=redis.Redis.from_url(urls["backend"]),
            server_pids=[s.process.pid for s in servers.values() if s.process is not None],
        )
        return {
            "peer": case.peer.name,
            "package": case.peer.package,
            "version": package_version(case.peer.package),
            "docs": case.peer.docs,
            "limit": case.limit,
            "fixed": _run(ctx, "fixed", fixed_lengths(config, tasks)),
            "varied": _run(ctx, "varied", varied_lengths(tasks)),
            "kill": _run(
                ctx, "kill", [config.peers_kill_ms] * kill_tasks, during=_kill_holder(ctx)
            ),
        }


def run_peers(config: BenchConfig, servers: dict[str, LocalRedis]) -> dict[str, Any]:
    """Every case in turn, each on fresh workers and emptied servers: label -> result (or
    ``{"error": ...}``)."""
    log_dir = Path(tempfile.mkdtemp(prefix="celery-pools-peers-"))
    results: dict[str, Any] = {}
    for case in cases(config):
        print(f"   peers: {case.label} (logs {log_dir})", flush=True)
        started = time.monotonic()
        try:
            result = _case(config, case, servers, log_dir)
        except Exception as exc:
            traceback.print_exc()
            error = f"{type(exc).__name__}: {exc}"
            result = {"peer": case.peer.name, "limit": case.limit, "error": error}
        finally:
            for server in servers.values():
                redis.Redis.from_url(server.url(0)).flushall()
        result["seconds"] = time.monotonic() - started
        results[case.label] = result
    return results
