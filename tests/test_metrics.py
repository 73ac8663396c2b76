"""Pool metrics, the Prometheus exporter and the sizing advisor, against a real Redis."""

from __future__ import annotations

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from celery_pools.advisor import advise, advise_pool
from celery_pools.exporter import serve
from celery_pools.local_redis import free_port
from celery_pools.metrics import BUCKETS, parse_stats
from celery_pools.models import PoolStatus
from celery_pools.store import AcquireStatus
from tests.support.polling import wait_until
from tests.workerapp import INSTANCE


def _bucket(seconds: float) -> int:
    return next((i for i, bound in enumerate(BUCKETS) if seconds <= bound), len(BUCKETS))


def _until_redis_clock(store, when: float) -> None:
    while store.ping() < when:
        pass


def test_counters_and_histograms_follow_a_scripted_workload_exactly(env):
    pools = env.manager()
    store = pools.store
    pools.create("p", limit=1, timeout=10)
    pools.assign("x", "p")
    pools.assign("y", "p")

    first = store.acquire("x", "a", lease=30)  # immediate
    assert first.status is AcquireStatus.OK
    full = store.acquire("y", "b", lease=30)  # full: registers a waiter, counts nothing
    assert full.status is AcquireStatus.FULL
    _until_redis_clock(store, first.now + 0.3)
    store.release("a", "p")  # held 0.3 s and a little: the (0.25, 0.5] bucket
    waited = store.acquire("y", "b", lease=30, first=store.ping() - 3.0)  # waited 3 s
    assert waited.status is AcquireStatus.OK
    timed_out = store.acquire("x", "c", lease=30, first=store.ping() - 11)
    assert timed_out.status is AcquireStatus.TIMEOUT
    assert store.acquire("x", "f", lease=30).status is AcquireStatus.FULL
    pools.clear("p")
    # A holder that dies: its lease lapses and the next acquisition reclaims it.
    store.release("b", "p")
    dead = store.acquire("x", "dead", lease=0.05, info={"task_name": "t.dead", "hostname": "h"})
    _until_redis_clock(store, dead.now + 0.1)
    assert [r.task_id for r in store.acquire("x", "g", lease=30).reclaimed] == ["dead"]

    (m,) = store.metrics(["p"])
    assert (m.acquired_immediate, m.acquired_waited) == (3, 1)  # a, dead, g / b
    assert m.acquired_by_instance == {"x": 3, "y": 1}
    assert (m.timeouts, m.clears, m.cleared_waiters, m.reclaimed) == (1, 1, 1, 1)
    assert m.released == 2  # a and b; the dead holder never released
    assert m.wait.count == 4
    assert m.wait.counts[0] == 3  # immediate acquisitions count as 0 s
    assert m.wait.counts[_bucket(3.0)] == 1
    assert 2.999 <= m.wait.sum <= 3.1  # times are whole milliseconds
    assert m.hold.count == 2
    assert m.hold.counts[_bucket(0.3)] == 1  # a: 0.3 s
    assert sum(m.hold.counts) == 2
    assert m.status.in_use == 1
    assert m.arrivals == 4 + 1 + 1


def test_real_tasks_fill_the_counters_and_hold_histogram(env, run_worker):
    pools = env.manager()
    pools.create("api", limit=1)
    pools.assign(INSTANCE, "api")
    app = env.app()
    with run_worker(app, concurrency=3):
        results = [app.tasks["t.hold"].delay(f"m{i}", 0.3) for i in range(3)]
        for result in results:
            result.get(timeout=30)
    (m,) = pools.store.metrics(["api"])
    assert m.acquired == 3
    assert m.acquired_waited >= 1  # limit 1, three at once: someone waited
    assert m.released == 3
    assert m.hold.count == 3
    assert all(n == 0 for n in m.hold.counts[: _bucket(0.3)])  # every hold >= 0.3 s
    assert m.wait.count == 3


def test_exporter_serves_parseable_metrics_with_the_expected_samples(env):
    pools = env.manager()
    store = pools.store
    pools.create("p", limit=2, timeout=5)
    pools.assign("x", "p")
    store.acquire("x", "holder", lease=30)
    store.acquire("x", "other", lease=30)
    store.acquire("x", "waiter", lease=30)  # full: waiting
    port = free_port()
    server = serve(store, port, addr="127.0.0.1")
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    finally:
        server.shutdown()
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    pool = (("pool", "p"),)
    assert samples[("celery_pools_redis_up", ())] == 1
    assert samples[("celery_pools_limit_slots", pool)] == 2
    assert samples[("celery_pools_in_use_slots", pool)] == 2
    assert samples[("celery_pools_free_slots", pool)] == 0
    assert samples[("celery_pools_reserved_slots", pool)] == 0
    assert samples[("celery_pools_waiting_tasks", pool)] == 1
    assert samples[("celery_pools_acquisitions_total", (("pool", "p"), ("waited", "false")))] == 2
    assert (
        samples[("celery_pools_instance_acquisitions_total", (("instance", "x"), ("pool", "p")))]
        == 2
    )
    assert samples[("celery_pools_timeouts_total", pool)] == 0
    # A countdown pool: no hand-offs, but the families are there.
    for name in (
        "handoffs",
        "handoffs_retried",
        "grants_lapsed",
        "grants_withdrawn",
        "handoffs_returned",
        "sent_back",
    ):
        assert samples[(f"celery_pools_{name}_total", pool)] == 0
    assert samples[("celery_pools_wait_seconds_count", pool)] == 2
    assert samples[("celery_pools_wait_seconds_bucket", (("le", "0.005"), ("pool", "p")))] == 2
    assert samples[("celery_pools_wait_seconds_bucket", (("le", "+Inf"), ("pool", "p")))] == 2
    assert families["celery_pools_wait_seconds"].type == "histogram"
    assert families["celery_pools_acquisitions"].type == "counter"


def test_exporter_reports_redis_down_instead_of_failing(private_env, private_redis):
    store = private_env.manager().store
    private_redis.kill()
    port = free_port()
    server = serve(store, port, addr="127.0.0.1")
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read()
    finally:
        server.shutdown()
    values = {
        s.name: s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples
    }
    assert values["celery_pools_redis_up"] == 0


def test_advisor_reproduces_the_seed_worked_examples():
    # 300 requests/s at 100 ms: 30 in flight; 20-30 % headroom gives 36-39 (the seed rounds to 40).
    advice = advise(300, 0.1, headroom=0.2)
    assert advice.concurrency == pytest.approx(30)
    assert advice.recommended == 36
    assert (advice.low, advice.high) == (36, 45)
    assert "300/s x p95 hold 0.1 s = 30" in advice.explain()
    # 120 max, 40 reserved, 4 deployments: 20 each; demand above it is capped.
    capped = advise(300, 0.1, backend_max=120, reserve=40, deployments=4)
    assert capped.per_deployment_cap == 20
    assert capped.recommended == 20
    assert "floor((120 max - 40 reserved) / 4 deployments) = 20" in capped.explain()
    assert advise(None, None, backend_max=120, reserve=40, deployments=4).recommended == 20


def test_advisor_gives_a_sensible_answer_on_a_recorded_workload(env, run_worker):
    pools = env.manager()
    pools.create("api", limit=10)
    pools.assign(INSTANCE, "api")
    app = env.app()
    with run_worker(app, concurrency=10):
        results = []
        for i in range(40):  # about 10 arrivals a second, each holding 0.2 s: ~2 in flight
            results.append(app.tasks["t.hold"].delay(f"a{i}", 0.2))
            time.sleep(0.1)  # pacing the arrivals is the workload, not synchronisation
        for result in results:
            result.get(timeout=30)
    (m,) = pools.store.metrics(["api"])
    advice = advise_pool(m)
    assert m.arrivals == 40
    assert advice.concurrency is not None
    assert 1.2 <= advice.concurrency <= 4.0, advice.explain()
    assert advice.recommended is not None
    assert 2 <= advice.recommended <= 6, advice.explain()
    assert "lower it to" in advice.explain()  # limit 10 is far more than this load needs


def test_histogram_quantile_interpolates_within_its_bucket():
    status = PoolStatus(
        name="p", limit=1, timeout=30, in_use=0, free=1, waiting=0, instances=[],
        holders=[], waiters=[], now=100.0,
    )  # fmt: skip
    stats = {f"hold:{_bucket(0.2)}": "100", "hold:count": "100", "hold:sum": "20000"}
    hold = parse_stats(status, stats).hold
    assert hold.quantile(0.95) == pytest.approx(0.1 + 0.15 * 0.95)
    assert hold.mean == pytest.approx(0.2)


def test_a_long_holder_is_reported_as_suspicious_and_keeps_its_slot(env):
    pools = env.manager()
    pools.create("api", limit=1)
    pools.assign(INSTANCE, "api")
    env.lease_seconds = 1.5  # renewals (and so the check) every 0.5 s
    env.extra_worker_env["CP_SUSPICIOUS_HOLD_SECONDS"] = "1.0"
    worker = env.worker(concurrency=1)
    app = env.app()
    slow = app.tasks["t.hold"].delay("slow", 4)
    worker.wait_for_log(r"suspicious holder: task t\.hold\[.*\] has held a slot of pool 'api'", 20)
    # Reported, not touched: it still holds its slot and finishes normally.
    assert [h.task_id for h in pools.status("api").holders] == [slow.id]
    assert pools.store.metrics(["api"])[0].suspicious_holders(1.0) == [slow.id]
    assert slow.get(timeout=30) == "slow"
    wait_until(lambda: pools.status("api").in_use == 0, 10, message="slot never released")


def test_grafana_dashboard_uses_only_metrics_the_exporter_serves(env):
    import json
    import re
    from pathlib import Path

    from celery_pools.exporter import PoolsCollector

    pools = env.manager()
    pools.create("p", limit=1)
    pools.assign("x", "p")
    pools.store.acquire("x", "t", lease=30)
    served = {
        sample.name for family in PoolsCollector(pools.store).collect() for sample in family.samples
    }
    dashboard = json.loads(
        (Path(__file__).parent.parent / "examples" / "grafana-dashboard.json").read_text()
    )
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"celery_pools_\w+", target["expr"])
    }
    assert used, "the dashboard queries nothing"
    assert used <= served, used - served
