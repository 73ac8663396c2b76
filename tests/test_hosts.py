"""Workers on three hosts whose clocks disagree by minutes, against one Redis.

Each host is a network namespace with its own address, reaching Redis over a veth pair and a
bridge; two of them run with their wall clock five minutes ahead and five minutes behind
(libfaketime). The fake API the tasks call runs on a fourth host and counts the calls in flight
itself. Every decision celery-pools takes is on the Redis clock, so: the limit holds, a lease
outlives a call longer than itself (renewed from a skewed host, it lapses neither early nor
late), a waiter's deadline comes when the pool's timeout says, a rate limit spaces calls as it
says, holders and waiters are reported in Redis time, and a task waiting by countdown comes
back when its countdown ends, not when a host's clock agrees with another's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest

from celery_pools import PoolManager, PoolStatus
from tests.support.hosts import Hosts, unavailable
from tests.support.polling import wait_until
from tests.support.redis_server import RedisServer
from tests.support.worker_process import REPO_ROOT
from tests.workerapp import INSTANCE

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
]

CAP = 3
SKEW = 300.0  # seconds: host h1 is five minutes ahead, h2 five minutes behind


@pytest.fixture
def hosts():
    made = Hosts(["h1", "h2", "h3", "api"]).start()
    yield made
    made.cleanup()


@pytest.fixture
def shared_redis(hosts):
    server = RedisServer()
    server.host = hosts.gateway  # where every host reaches it
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def remote_api(hosts):
    """The fake API on host "api": its URL, and a function that reads what it counted."""
    process = subprocess.Popen(
        [
            *hosts.wrapper("api"),
            sys.executable, "-m", "bench.fake_api",
            "--cap", str(CAP), "--host", hosts.address("api"), "--port", "18080",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    assert url.endswith("/call"), url

    def stats() -> dict:
        with urllib.request.urlopen(url.replace("/call", "/stats"), timeout=10) as answer:
            return json.loads(answer.read())

    yield url, stats
    process.terminate()
    process.wait(10)


@pytest.mark.parametrize("wait", ["countdown", "handoff"])
def test_hosts_with_skewed_clocks_keep_the_limit_leases_deadlines_and_rates(
    env, hosts, shared_redis, remote_api, wait
):
    url, api_stats = remote_api
    env.broker, env.backend = shared_redis.url(1), shared_redis.url(2)
    env.pools_url, env.probe_url = shared_redis.url(3), shared_redis.url(4)
    env.lease_seconds = 5.0
    manager: PoolManager = env.manager()
    manager.create("api", limit=CAP, timeout=120, wait=wait)
    manager.assign(INSTANCE, "api")
    manager.create("tight", limit=1, timeout=2, wait=wait)
    manager.assign("tight", "tight")
    manager.create("rated", limit=10)
    manager.assign("rated", "rated")
    manager.set_rate_limit("rated", "10/s")
    skews = {"h1": SKEW, "h2": -SKEW, "h3": 0.0}
    for host, skew in skews.items():
        env.worker(concurrency=3, wrapper=hosts.wrapper(host, skew), hostname=f"{host}@%h")
    app = env.app()
    call, hold_on = app.tasks["t.call_api"], app.tasks["t.hold_on"]

    started = time.monotonic()
    # Two calls longer than the lease (5 s): renewed from whatever host runs them.
    long_calls = [call.delay(f"long{i}", url, 6000) for i in range(2)]
    calls = long_calls + [call.delay(f"c{i}", url, 300) for i in range(40)]
    holder = hold_on.delay("holder", 6.0, instance="tight")
    wait_until(lambda: manager.status("tight").in_use == 1, 30)
    late_sent = time.monotonic()
    late = hold_on.delay("late", 0.0, instance="tight")
    rated = [hold_on.delay(f"r{i}", 0.0, instance="rated") for i in range(8)]

    # Holders and waiters are reported in Redis time, whichever host's clock is off.
    def full() -> PoolStatus | None:
        status = manager.status("api")
        return status if status.in_use == CAP and status.waiters else None

    status = wait_until(full, 30)
    for entry in [*status.holders, *status.waiters]:
        assert 0 <= status.now - entry.since < 30, (entry, status.now)

    wait_until(lambda: late.state == "FAILURE", 30)
    late_after = time.monotonic() - late_sent
    wait_until(
        lambda: all(r.state in ("SUCCESS", "FAILURE") for r in calls + rated),
        90,
        message=f"tasks still waiting ({wait})",
    )
    makespan = time.monotonic() - started
    stats = api_stats()
    starts = sorted(at for label, at in env.probe().starts() if label.startswith("r"))
    spread = starts[-1] - starts[0]
    ran_on = {str(app.AsyncResult(r.id).worker).split("@")[0] for r in calls}
    print(
        f"\nhosts at {skews} ({wait}): API max in flight {stats['max_in_flight']} of {CAP}, "
        f"429s {stats['refused']}, {len(stats['tasks'])} calls for {len(calls)} tasks in "
        f"{makespan:.1f} s; the waiter of a 2 s pool failed after {late_after:.1f} s; 8 calls "
        f"at 10/s spread over {spread:.2f} s"
    )
    assert [r.state for r in calls] == ["SUCCESS"] * len(calls)
    assert stats["max_in_flight"] <= CAP
    assert stats["refused"] == 0
    assert sorted(set(stats["tasks"])) == sorted(r.id for r in calls)
    assert makespan < 60, "tasks waited minutes: a countdown followed a skewed clock"
    assert 1.9 <= late_after <= 6.0, "the deadline followed a host's clock, not Redis's"
    assert holder.get(timeout=30) == "holder"
    # 8 calls at 10/s are spread over 0.7 s at least. A rate limit that followed a host's clock
    # would move a start by the skew (300 s) either way; a due task may also start late on a
    # worker whose three processes all hold 6 s calls (seen: 5.7 s), which is not a clock.
    assert 0.6 <= spread <= SKEW / 10, "the rate limit followed a host's clock"
    assert ran_on == set(skews), f"not every host ran calls: {ran_on}"


@pytest.mark.parametrize("skew", [SKEW, -SKEW])
def test_the_slots_of_a_dead_skewed_host_come_back_one_lease_later(env, hosts, shared_redis, skew):
    env.broker, env.backend = shared_redis.url(1), shared_redis.url(2)
    env.pools_url, env.probe_url = shared_redis.url(3), shared_redis.url(4)
    env.lease_seconds = 5.0
    manager = env.manager()
    manager.create("api", limit=CAP)
    manager.assign(INSTANCE, "api")
    worker = env.worker(concurrency=2, wrapper=hosts.wrapper("h1", skew), hostname="h1@%h")
    app = env.app()
    for i in range(2):
        app.tasks["t.hold"].delay(f"h{i}", 60.0)
    taken = wait_until(lambda: (status := manager.status("api")).in_use == 2 and status, 30)
    first_expiry = max(holder.lease_expires for holder in taken.holders)
    # The leases are renewed from h1 (its clock five minutes off) before it dies.
    wait_until(
        lambda: min(h.lease_expires for h in manager.status("api").holders) > first_expiry, 10
    )
    worker.kill()  # the whole host's worker: no process is left to give anything back
    killed = time.monotonic()
    wait_until(lambda: manager.status("api").in_use == 0, 60, interval=0.05)
    back_after = time.monotonic() - killed
    print(
        f"\nworker on a host {skew:+.0f} s off SIGKILLed: its slots back after {back_after:.1f} s"
    )
    # Renewed every third of the lease: back between two thirds of a lease and one lease after.
    assert env.lease_seconds / 2 <= back_after <= env.lease_seconds + 2
