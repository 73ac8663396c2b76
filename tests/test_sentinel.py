"""Pool state on a Redis that Sentinel watches: a master, a replica and three sentinels.

The workers find the master through the sentinels (``sentinel://`` URLs and ``master_name``, as
Celery's broker takes them). When the master is SIGKILLed mid-run, pooled tasks wait (they never
run unthrottled) until the sentinels promote the replica, then go on there. The limit is counted
by the fake API the tasks call (:class:`~bench.fake_api.FakeAPI`), not by the pool.

What a failover can lose with asynchronous replication is a write the master answered and the
replica never got: a slot just taken (the new master grants it again: an over-grant) or one just
given back (it stays taken until its lease lapses: a lost slot). ``pools_redis_wait_replicas=1``
closes the first: every write waits (Redis ``WAIT``) until the replica has it. The failover test
reports both, and what they cost (docs/deployment.md).
"""

from __future__ import annotations

import time

import pytest

from bench.fake_api import FakeAPI
from celery_pools import PoolBackendError, PoolConfigError, PoolManager
from tests.support.polling import wait_until
from tests.support.topology import SentinelSet
from tests.workerapp import INSTANCE

pytestmark = pytest.mark.slow

CAP = 3
MASTER_PASSWORD = "master-secret-0123456789"
SENTINEL_PASSWORD = "sentinel-secret-0123456789"


@pytest.fixture
def sentinels():
    topology = SentinelSet().start()
    yield topology
    topology.cleanup()


def _on_sentinels(env, sentinels) -> None:
    env.pools_url = sentinels.url
    env.transport_options = {"master_name": sentinels.name}


def test_pools_live_on_the_master_the_sentinels_name(env, sentinels, run_worker):
    _on_sentinels(env, sentinels)
    manager = env.manager()
    manager.create("api", limit=2)
    manager.assign(INSTANCE, "api")
    master = sentinels.master.client(decode_responses=True)
    assert master.sismember(f"{{{env.prefix}}}:pools", "api")
    replica = sentinels.replica.client(decode_responses=True)
    wait_until(lambda: replica.sismember(f"{{{env.prefix}}}:pools", "api"), 5)

    app = env.app()
    with run_worker(app, concurrency=4):
        results = [app.tasks["t.hold"].delay(f"h{i}", 0.2) for i in range(6)]
        assert [r.get(timeout=30) for r in results] == [f"h{i}" for i in range(6)]
    assert env.probe().max_concurrency() == 2
    assert manager.status("api").in_use == 0


def test_a_password_protected_master_behind_password_protected_sentinels(env, run_worker):
    topology = SentinelSet(password=MASTER_PASSWORD, sentinel_password=SENTINEL_PASSWORD)
    topology.start()
    try:
        env.pools_url = ";".join(
            f"sentinel://:{MASTER_PASSWORD}@127.0.0.1:{s.port}/0" for s in topology.sentinels
        )
        env.transport_options = {
            "master_name": topology.name,
            "sentinel_kwargs": {"password": SENTINEL_PASSWORD},
        }
        manager = env.manager()
        manager.create("api", limit=2)
        manager.assign(INSTANCE, "api")
        assert topology.client(topology.master).sismember(f"{{{env.prefix}}}:pools", "api")
        assert MASTER_PASSWORD not in manager.store.url
        app = env.app()
        with run_worker(app, concurrency=4):
            results = [app.tasks["t.hold"].delay(f"h{i}", 0.2) for i in range(6)]
            assert [r.get(timeout=30) for r in results] == [f"h{i}" for i in range(6)]
        assert env.probe().max_concurrency() == 2

        wrong = dict(env.transport_options, sentinel_kwargs={"password": "not-the-password"})
        stranger = PoolManager.from_url(
            env.pools_url, key_prefix=env.prefix, transport_options=wrong
        )
        with pytest.raises(PoolBackendError):
            stranger.list()
    finally:
        topology.cleanup()


def test_a_sentinel_url_without_a_master_name_is_refused_naming_the_option(sentinels):
    with pytest.raises(PoolConfigError, match=r"master_name.*the name of the Sentinel service"):
        PoolManager.from_url(sentinels.url)
    with pytest.raises(PoolConfigError, match=r"pools_redis_transport_options.*'colour'"):
        PoolManager.from_url(sentinels.url, transport_options={"master_name": "p", "colour": 1})


@pytest.mark.parametrize("wait_replicas", [1, 0])
def test_master_killed_mid_run_tasks_wait_then_go_on_with_the_new_master(
    env, sentinels, wait_replicas
):
    _on_sentinels(env, sentinels)
    env.lease_seconds = 5.0
    env.extra_worker_env.update(CP_WAIT_REPLICAS=str(wait_replicas))
    manager = env.manager()
    manager.create("api", limit=CAP, timeout=120)
    manager.assign(INSTANCE, "api")
    tasks = 60
    with FakeAPI(CAP) as api:
        workers = [env.worker(concurrency=3) for _ in range(3)]
        call = env.app().tasks["t.call_api"]
        started = time.monotonic()
        results = [call.delay(f"c{i}", api.url, 300) for i in range(tasks)]
        wait_until(lambda: len(api.calls()) >= tasks // 3, 60)
        old_master = (sentinels.master.host, sentinels.master.port)
        sentinels.master.kill()
        killed = time.monotonic()
        in_flight_at_kill = len(api.in_flight())
        wait_until(lambda: sentinels.current_master() != old_master, 30, interval=0.02)
        promoted = time.monotonic()
        # The old master comes back as a replica of the new one, so writes have a replica to
        # wait for again. It comes back empty (no persistence): started as a master, it would be
        # an empty master until a sentinel demotes it, which a sentinel or client that has not
        # caught up could take for the master, finding no pools (Redis's replication docs: no
        # automatic restart of a master kept without persistence). So, as an operator does,
        # once the sentinels agree it is started as a replica of the new master.
        new_address = sentinels.current_master()
        wait_until(lambda: set(sentinels.masters_named()) == {new_address}, 30, interval=0.05)
        sentinels.master.extra_args += ["--replicaof", new_address[0], str(new_address[1])]
        sentinels.master.restart()
        wait_until(lambda: all(r.state in ("SUCCESS", "FAILURE") for r in results), 120)
        makespan = time.monotonic() - started
        new_master = PoolManager.from_url(
            env.pools_url, key_prefix=env.prefix, transport_options=env.transport_options
        )
        # A release the failover lost leaves its slot taken until its lease lapses (5 s).
        held_after = new_master.status("api").in_use
        wait_until(
            lambda: new_master.status("api").in_use == 0,
            env.lease_seconds + 15,
            message="a slot the failover kept taken did not come back",
        )
        calls = api.calls()
        print(
            f"\nsentinel failover, pools_redis_wait_replicas={wait_replicas}: master SIGKILLed "
            f"with {in_flight_at_kill} calls in flight, replica promoted after "
            f"{promoted - killed:.1f} s; API max in flight {api.max_in_flight} of {CAP} "
            f"(over-grants: {max(0, api.max_in_flight - CAP)}), 429s {api.refused}; "
            f"{len(calls)} calls for {tasks} tasks; slots held when all had ended (lost "
            f"until their lease lapsed) {held_after}; "
            f"makespan {makespan:.1f} s"
        )
        failed = [r.id for r in results if r.state != "SUCCESS"]
        for worker in workers:
            worker.stop(timeout=30)
    assert not failed, f"{len(failed)} tasks did not succeed: {failed[:3]}"
    assert api.max_in_flight <= CAP, f"the API saw {api.max_in_flight} calls at once"
    assert api.refused == 0
    assert len({c.task for c in calls}) == tasks, "every task called the API"
