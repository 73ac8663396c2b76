"""The benchmark (``python -m bench``) runs end to end in its smallest configuration.

It asserts that the figures are sane, never how fast anything is.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.config import BenchConfig
from bench.measure import (
    grant_inversions,
    grant_to_start,
    handoff_latencies,
    order_inversions,
    utilisation_between,
)
from bench.peers.scenario import cases
from bench.recorder import Acquired, Event

ROOT = Path(__file__).resolve().parent.parent


def _check_available(scenario: str, result: dict[str, Any]) -> None:
    assert not result.get("error"), f"{scenario}: {result['error']}"
    if scenario == "slotops":
        assert result["pairs_per_s"] > 0
        assert result["pings_per_s"] > 0
    elif scenario == "overhead":
        assert result["plain_per_s"] > 0
        assert result["pooled_per_s"] > 0
        assert all(rate > 0 for rate in result["scripts_batches_per_s"])
        assert result["throughput_ratio"] > 0
    else:
        assert result["finished"], result
        assert result["completed"] == result["tasks"]
        assert result["failed"] == 0
        assert result["messages_per_task"] >= 1
        assert 1 <= result["max_concurrency"] <= result["limit"]
    if scenario == "saturation":
        assert 0 < result["utilisation"] <= 1
        steady = result["steady_utilisation"]
        assert steady is None or 0 <= steady <= 1
        assert result["handoff_p50_ms"] is not None
        assert result["handoff_p50_ms"] <= result["handoff_p99_ms"]
        for prefix in ("steady_handoff", "steady_gap", "grant_to_start"):
            p50, p99 = result[f"{prefix}_p50_ms"], result[f"{prefix}_p99_ms"]
            assert (p50 is None) == (p99 is None)
            assert p50 is None or p50 <= p99
        assert result["order_inversions"] >= 0
        assert max(n for _, n in result["timeline"]) <= result["limit"]
    if scenario == "calls":
        # Judged by the fake API's own count: never over the limit, never a 429.
        assert result["refused"] == 0
        assert result["served_calls"] == result["tasks"]
        assert 0 < result["utilisation"] <= 1
        assert result["handoff_p50_ms"] is not None
    if scenario == "backlog":
        assert result["worker_rss_peak"] >= result["worker_rss_baseline"] > 0
        assert result["pools_memory_peak"] > 0


def _quick_bench(tmp_path: Path, *options: str, timeout: float) -> tuple[str, dict[str, Any]]:
    """Run ``python -m bench --quick OPTIONS`` into ``tmp_path``; it must succeed. Returns what
    it printed and its results.json."""
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", *options, "--output", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert run.returncode == 0, f"{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    return run.stdout, json.loads((tmp_path / "results.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quick_benchmark_runs_every_scenario_and_reports_sane_figures(tmp_path: Path) -> None:
    stdout, report = _quick_bench(tmp_path, timeout=170)
    assert "throughput ratio pooled/plain" in stdout  # the table was printed

    assert report["machine"]["cores"] >= 1
    assert report["machine"]["redis_server"]
    assert report["modes"]["countdown"]["available"]
    # The eta-limited mode's workers ran with the README's setting: their prefetch count.
    assert report["modes"]["countdown-eta"]["worker_settings"] == {"worker_eta_task_limit": 3 * 4}
    assert report["modes"]["countdown"]["worker_settings"] == {}
    assert set(report["results"]) == {"slotops", "overhead", "saturation", "calls", "backlog"}
    for mode, info in report["modes"].items():
        for scenario, by_mode in report["results"].items():
            result = by_mode[mode]
            if mode == "unpooled" and scenario not in ("saturation", "calls"):
                # The reference without a pool runs only those two.
                assert result["available"] is False
                assert "without a pool" in result["reason"]
            elif info["available"]:
                _check_available(scenario, result)
            else:
                assert result == {"available": False, "reason": info["reason"]}
                assert info["reason"]
    # The reference ran the same bodies as plain tasks, on one worker of `limit` processes.
    assert report["modes"]["unpooled"]["workers"] == "1 x limit"
    assert report["modes"]["countdown"]["workers"] == "2 x 3"
    reference = report["results"]["saturation"]["unpooled"]
    assert reference["pool_counters"] is None
    assert reference["inversion_fraction"] is None
    assert reference["messages_per_task"] >= 1
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "concurrency.png").stat().st_size > 0


def test_utilisation_between_counts_only_the_bodies_running_time_inside_the_window() -> None:
    # Two slots, a window from 1.0 to 3.0: a runs 0.5-1.5 (0.5 inside), b 1.0-3.5 (2.0
    # inside), c 2.0-2.5 (0.5 inside); d has no end recorded and is not counted.
    events = [
        Event("s", "a", 0.5, 1),
        Event("s", "b", 1.0, 2),
        Event("e", "a", 1.5, 1),
        Event("s", "c", 2.0, 2),
        Event("e", "c", 2.5, 1),
        Event("s", "d", 2.6, 2),
        Event("e", "b", 3.5, 1),
    ]
    assert utilisation_between(events, 2, 1.0, 3.0) == pytest.approx(3.0 / 4.0)
    assert utilisation_between(events, 2, 3.0, 3.0) is None


def test_order_inversions_use_when_the_pool_says_each_task_first_asked() -> None:
    """The order of asking is the pool's own record of it; the stamp of the acquisition record,
    taken a little after the slot was, only stands in for it when the pool does not say."""

    def start(task_id: str, at: float) -> Event:
        return Event("s", task_id, at, 1)

    # a asked first and started first; its record was stamped 30 ms after its slot was taken,
    # so the stamp alone would put its asking after b's.
    acquisitions = [Acquired("a", 10.030, 0.500, first=9.500), Acquired("b", 10.006, 0.504, 9.501)]
    events = [start("a", 10.001), start("b", 10.010)]
    assert order_inversions(acquisitions, events) == (0, 2)
    stamped_only = [Acquired(a.task_id, a.at, a.waited) for a in acquisitions]
    assert order_inversions(stamped_only, events) == (1, 2)
    # A real inversion counts either way: b asked after a but started before it.
    late_start = [start("a", 10.030), start("b", 10.010)]
    assert order_inversions(acquisitions, late_start) == (1, 2)


def test_grant_inversions_order_waiters_by_the_pools_grant_not_by_their_claim() -> None:
    """Grant order is the pool's: a task handed its slot first counts first even when its claim
    (and its record) came later; tasks that did not wait, or whose grant is unknown, are left
    out."""
    acquisitions = [
        # a asked first and was granted first, though its claim came 40 ms after b's.
        Acquired("a", 10.050, 0.550, first=9.500, granted=10.001),
        Acquired("b", 10.010, 0.509, first=9.501, granted=10.002),
        Acquired("now", 10.020, 0.0, first=10.020, granted=10.020),
        Acquired("unknown", 10.030, 0.3, first=9.400),
    ]
    assert grant_inversions(acquisitions) == (0, 2)
    # c asked after a and b, and the pool granted it before both: two pairs out of order.
    late = [*acquisitions, Acquired("c", 10.060, 0.5, first=9.502, granted=10.000)]
    assert grant_inversions(late) == (2, 3)
    # A tie, two slots given by one release to a and b, is no inversion.
    tie = [Acquired("a", 10.0, 0.5, 9.5, 10.001), Acquired("b", 10.0, 0.5, 9.501, 10.001)]
    assert grant_inversions(tie) == (0, 2)


def test_grant_to_start_measures_each_handed_slot_from_its_grant_to_its_body() -> None:
    """A slot handed to a waiter counts from the pool's grant to that task's own start, whatever
    the releasing process recorded; tasks that did not wait, whose grant is unknown or whose body
    never started are left out."""
    events = [
        Event("s", "standby", 10.0015, 1),
        Event("s", "parked", 10.0300, 2),
        Event("s", "ample", 10.0500, 3),
        Event("s", "unknown", 10.0600, 4),
    ]
    acquisitions = [
        Acquired("parked", 10.2, 0.4, first=9.6, granted=10.004),
        Acquired("standby", 10.1, 0.3, first=9.7, granted=10.001),
        Acquired("ample", 10.3, 0.0, first=10.05, granted=10.05),
        Acquired("unknown", 10.4, 0.2, first=9.86),
        Acquired("never", 10.5, 0.2, first=9.9, granted=10.0),
    ]
    handed = grant_to_start(acquisitions, events)
    assert [at for at, _ in handed] == [10.001, 10.004]
    assert [lat for _, lat in handed] == pytest.approx([0.0005, 0.026])


def test_handoff_latencies_pair_each_start_with_the_latest_release_and_say_when_it_came() -> None:
    """Each latency comes with the release it follows, so the figures after a moment (the end of
    publication) leave out the hand-offs of the burst; a start recorded before its release
    (skewed) counts 0 at that release, and starts that fill the pool pair with nothing."""
    releases = [1.00, 1.02, 2.00, 3.00]
    starts = [0.10, 0.20, 1.05, 1.06, 2.04, 2.99]
    handoffs = handoff_latencies(releases, starts, limit=2)
    assert handoffs.initial == 2
    # 1.05 takes the latest release (1.02), 1.06 the one left (1.00); 2.04 follows 2.00; 2.99
    # came before any release of its own, which 3.00 then pays with 0.
    assert handoffs.latencies == pytest.approx([0.03, 0.06, 0.04, 0.0])
    assert handoffs.released == [1.02, 1.00, 2.00, 3.00]
    assert handoffs.skewed == 1
    assert handoffs.unpaired_releases == 0
    assert handoffs.since(1.5) == pytest.approx([0.04, 0.0])
    assert handoffs.since(1.01) == pytest.approx([0.03, 0.04, 0.0])


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_quick_peers_run_every_peer_and_celery_pools_keeps_the_api_under_its_cap(
    tmp_path: Path,
) -> None:
    _, report = _quick_bench(tmp_path, "--scenarios", "peers", timeout=400)
    peers = report["results"]["peers"]
    config = BenchConfig.quick()
    assert list(peers) == [case.label for case in cases(config)]
    for label, result in peers.items():
        assert "error" not in result, f"{label}: {result.get('error')}"
        for run_name in ("fixed", "varied", "kill"):
            figures = result[run_name]
            # The API saw the calls of every task that succeeded.
            succeeded = figures["tasks"] - figures["failed_tasks"] - figures["lost_tasks"]
            assert figures["served_calls"] + figures["refused"] >= succeeded, label
            assert figures["max_in_flight"] >= 1
            assert 0 < figures["utilisation"] <= 1.0 + 1e-9 or figures["refused"], label
            if label.startswith("celery-pools"):
                # The product's claim, judged by the API itself and the tasks' results.
                assert figures["max_in_flight"] <= result["limit"], (label, run_name)
                assert figures["refused"] == 0, (label, run_name)
                assert figures["lost_tasks"] == figures["failed_tasks"] == 0, (label, run_name)
        kill = result["kill"]
        assert "kill_error" not in kill, f"{label}: {kill.get('kill_error')}"
        assert kill["killed_pid"] > 0
    table = (tmp_path / "results.md").read_text()
    assert "| celery-pools handoff |" in table
    assert "python-redis-lock (limit 1)" in table
