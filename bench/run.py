"""``python -m bench``: run the benchmark against private Redis servers it starts itself.

Three private ``redis-server`` processes keep the traffic apart, so each figure reads one server:
the broker's (only Celery messages: its command counts are the broker messages), the pools'
(only pool state: its memory is the pools' memory), and the benchmark's own (what the tasks
record, and the result backend). For each waiting mode, one group of workers runs the worker
scenarios in turn; it is stopped and the servers are emptied before the next mode.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis

from bench.config import DEFAULT_SCENARIOS, MODES, SCENARIOS, BenchConfig
from bench.modes import (
    UNPOOLED,
    UNPOOLED_SCENARIOS,
    ModeUnavailableError,
    unavailable_reason,
    worker_settings,
)
from bench.peers import report as peers_report
from bench.peers.scenario import run_peers
from bench.plot import plot
from bench.report import markdown, table
from bench.system import git_revision, machine_info
from bench.workerenv import ENV, ETA_TASK_LIMIT_ENV, STANDBY_MAX_ENV
from celery_pools.local_redis import LocalRedis

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "bench" / "results"
_WORKER_SCENARIOS = ("overhead", "saturation", "calls", "backlog")


def _names(text: str, allowed: Sequence[str], what: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {unknown or text!r}: choose from {', '.join(allowed)}"
        )
    return names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for CI (tens of s)")
    parser.add_argument(
        "--scenarios",
        type=lambda text: _names(text, SCENARIOS, "scenario"),
        default=list(DEFAULT_SCENARIOS),
        help=f"comma-separated, from {','.join(SCENARIOS)} (default: all but peers)",
    )
    parser.add_argument(
        "--modes",
        type=lambda text: _names(text, MODES, "mode"),
        default=list(MODES),
        help=f"waiting modes, from {','.join(MODES)} (default: all; a mode this celery-pools "
        "lacks is reported as not available)",
    )
    parser.add_argument(
        "--standby-max",
        type=int,
        default=None,
        metavar="N",
        help="the workers' pools_standby_max in the handoff-standby mode (default 4)",
    )
    parser.add_argument(
        "--backlog-window",
        type=float,
        default=None,
        metavar="SECONDS",
        help="longest time the backlog scenario is measured (default 240, quick 30)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="directory for results.json, results.md and concurrency.png (default bench/results)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table; write ``results.json``, ``results.md`` (the table in
    Markdown) and ``concurrency.png``.

    Returns 0, or 1 when a scenario failed (its error is in the JSON and the table).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    config = BenchConfig.quick() if args.quick else BenchConfig.default()
    if args.backlog_window is not None:
        config = replace(config, backlog_window=args.backlog_window)
    if args.standby_max is not None:
        config = replace(config, standby_max=args.standby_max)
    started = time.monotonic()
    report: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "bench", *argv]),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "revision": git_revision(ROOT),
        "quick": args.quick,
        "config": config.to_dict(),
        "modes": {},
        "results": {scenario: {} for scenario in args.scenarios},
    }
    failed = False
    with ExitStack() as stack:
        servers = {
            role: stack.enter_context(LocalRedis(extra_args=["--maxmemory-policy", "noeviction"]))
            for role in ("broker", "pools", "records")
        }
        report["machine"] = machine_info(redis.Redis.from_url(servers["pools"].url(0)))
        by_mode = [scenario for scenario in args.scenarios if scenario != "peers"]
        for mode in args.modes if by_mode else []:
            print(f"== mode {mode}", flush=True)
            mode_started = time.monotonic()
            outcome = _run_mode(config, mode, by_mode, servers)
            report["modes"][mode] = {
                **outcome.pop("_mode"),
                "seconds": time.monotonic() - mode_started,
            }
            for scenario, result in outcome.items():
                report["results"][scenario][mode] = result
                failed = failed or bool(result.get("error"))
        if "peers" in args.scenarios:
            print("== peers", flush=True)
            peers = report["results"]["peers"] = run_peers(config, servers)
            failed = failed or any("error" in result for result in peers.values())
    report["seconds"] = time.monotonic() - started
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    texts, tables = [], []
    if by_mode:
        texts.append(markdown(report["results"], args.modes))
        tables.append(table(report["results"], args.modes))
    if "peers" in args.scenarios:
        texts.append(peers_report.markdown(report["results"]["peers"], config.peers_lease))
        tables.append(peers_report.table(report["results"]["peers"], config.peers_lease))
    (output / "results.md").write_text("\n\n".join(texts) + "\n")
    why_not = plot(report["results"], output / "concurrency.png")
    print()
    print("\n\n".join(tables))
    print(f"\nresults: {output / 'results.json'} (table: {output / 'results.md'})")
    print(f"plot: {output / 'concurrency.png'}" if why_not is None else f"no plot: {why_not}")
    print(f"benchmark took {report['seconds']:.0f} s")
    return 1 if failed else 0


def _run_mode(
    config: BenchConfig, mode: str, scenarios: list[str], servers: dict[str, LocalRedis]
) -> dict[str, Any]:
    """Every requested scenario in ``mode``: scenario -> result, and ``_mode`` -> availability."""
    reason = unavailable_reason(mode)
    results: dict[str, Any] = {}
    if reason is None:
        try:
            wanted = [s for s in _WORKER_SCENARIOS if s in scenarios]
            if mode == UNPOOLED:
                results.update(_reference(config, scenarios, servers))
            else:
                if "slotops" in scenarios:
                    results["slotops"] = _guard("slotops", lambda: _slotops(config, mode, servers))
                if wanted:
                    results.update(_worker_scenarios(config, mode, wanted, servers))
        except ModeUnavailableError as exc:
            reason = str(exc)
        finally:
            for server in servers.values():
                redis.Redis.from_url(server.url(0)).flushall()
    if reason is not None:
        print(f"   {mode}: not available: {reason}", flush=True)
        results = {s: {"available": False, "reason": reason} for s in scenarios}
    results["_mode"] = {
        "available": reason is None,
        "reason": reason,
        "worker_settings": worker_settings(mode, config.concurrency, config.standby_max),
        # workers x processes each (the reference: one worker of each scenario's limit)
        "workers": "1 x limit" if mode == UNPOOLED else f"{config.workers} x {config.concurrency}",
    }
    return results


def _guard(scenario: str, run: Any) -> dict[str, Any]:
    """Run one scenario; a failure becomes ``{"error": ...}`` (a missing mode is re-raised)."""
    print(f"   {scenario}...", flush=True)
    started = time.monotonic()
    try:
        result: dict[str, Any] = run()
    except ModeUnavailableError:
        raise
    except Exception as exc:
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result["seconds"] = time.monotonic() - started
    return result


def _slotops(config: BenchConfig, mode: str, servers: dict[str, LocalRedis]) -> dict[str, Any]:
    from bench.slotops import run_slotops

    return run_slotops(
        servers["pools"].url(0), mode, config.slotops_iterations, config.overhead_limit
    )


def _reference(
    config: BenchConfig, scenarios: list[str], servers: dict[str, LocalRedis]
) -> dict[str, Any]:
    """The reference without a pool (:data:`UNPOOLED`): each of its scenarios on one worker
    with as many processes as that scenario's limit; the others are not available in it."""
    limits = {"saturation": config.saturation_limit, "calls": config.calls_limit}
    by_limit: dict[int, list[str]] = {}
    results: dict[str, Any] = {}
    for scenario in scenarios:
        if scenario in UNPOOLED_SCENARIOS:
            by_limit.setdefault(limits[scenario], []).append(scenario)
        else:
            results[scenario] = {
                "available": False,
                "reason": f"the reference without a pool runs {' and '.join(UNPOOLED_SCENARIOS)}",
            }
    for limit, group in by_limit.items():
        results.update(
            _worker_scenarios(config, UNPOOLED, group, servers, workers=1, concurrency=limit)
        )
    return results


def _worker_scenarios(
    config: BenchConfig,
    mode: str,
    scenarios: list[str],
    servers: dict[str, LocalRedis],
    *,
    workers: int | None = None,
    concurrency: int | None = None,
) -> dict[str, Any]:
    """Run ``scenarios`` in ``mode`` on one group of workers: ``workers`` x ``concurrency``
    (default: the configuration's)."""
    from bench.benchapp import create_app
    from bench.harness import Bench
    from bench.scenarios import run_backlog, run_calls, run_overhead, run_saturation
    from bench.workers import WorkerGroup
    from celery_pools import PoolManager

    urls = {
        "broker": servers["broker"].url(0),
        "backend": servers["records"].url(1),
        "pools_url": servers["pools"].url(0),
        "record_url": servers["records"].url(0),
        "queue": "bench.default",
    }
    app = create_app(
        broker=urls["broker"],
        backend=urls["backend"],
        pools_url=urls["pools_url"],
        record_url=urls["record_url"],
        queue=urls["queue"],
    )
    runners = {
        "overhead": run_overhead,
        "saturation": run_saturation,
        "calls": run_calls,
        "backlog": run_backlog,
    }
    log_dir = Path(tempfile.mkdtemp(prefix="celery-pools-bench-"))
    env = {ENV[name]: url for name, url in urls.items()}
    extra = worker_settings(mode, config.concurrency, config.standby_max)
    if "worker_eta_task_limit" in extra:
        env[ETA_TASK_LIMIT_ENV] = str(extra["worker_eta_task_limit"])
    if "pools_standby_max" in extra:
        env[STANDBY_MAX_ENV] = str(extra["pools_standby_max"])
    count = config.workers if workers is None else workers
    processes = config.concurrency if concurrency is None else concurrency
    group = WorkerGroup(
        env, count=count, concurrency=processes, queue=urls["queue"], log_dir=log_dir
    )
    results: dict[str, Any] = {}
    with group:
        group.start(app)
        print(
            f"   {count} workers x {processes} ready"
            + "".join(f", {name}={value}" for name, value in extra.items())
            + f" (logs {log_dir})"
        )
        bench = Bench(
            config=config,
            mode=mode,
            app=app,
            workers=group,
            manager=PoolManager.from_url(urls["pools_url"]),
            broker=redis.Redis.from_url(urls["broker"], socket_timeout=10),
            pools=redis.Redis.from_url(urls["pools_url"]),
            records=redis.Redis.from_url(urls["record_url"], decode_responses=True),
            server_pids=[s.process.pid for s in servers.values() if s.process is not None],
        )
        for scenario in scenarios:
            results[scenario] = _guard(scenario, lambda run=runners[scenario]: run(bench))
    return results
