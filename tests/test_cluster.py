"""Pool state on a Redis Cluster: three masters, each with a replica, on loopback.

Every key of a prefix shares one hash tag, so one master holds them all and every script runs
there. The limit is counted by the fake API the tasks call, not by the pool. A failover of that
master mid-run (a manual ``CLUSTER FAILOVER``, which hands over only once the replica has every
write, and a SIGKILL, after which the replica takes over without what it had not yet received)
moves the slot: the workers find its new owner and go on.
"""

from __future__ import annotations

import time

import pytest

from bench.fake_api import FakeAPI
from celery_pools import PoolManager
from tests.support.polling import wait_until
from tests.support.topology import ClusterSet
from tests.workerapp import INSTANCE

pytestmark = pytest.mark.slow

CAP = 3


@pytest.fixture
def cluster():
    topology = ClusterSet().start()
    yield topology
    topology.cleanup()


def test_every_key_of_a_prefix_lives_on_the_master_of_its_slot(env, cluster):
    env.pools_url = cluster.url
    manager = env.manager()
    manager.create("api", limit=2)
    manager.assign(INSTANCE, "api")
    pools_key = f"{{{env.prefix}}}:pools"
    owner = cluster.owner_of(pools_key)
    on_owner = owner.client(decode_responses=True).keys(f"{{{env.prefix}}}:*")
    assert len(on_owner) >= 3  # the pool set, its config, the instances
    for node in cluster.nodes[: cluster.masters]:
        if node is not owner:
            assert node.client().keys(f"{{{env.prefix}}}:*") == []
    assert manager.status("api").limit == 2


@pytest.mark.parametrize("failover", ["CLUSTER FAILOVER", "SIGKILL"])
def test_three_prefork_workers_keep_the_limit_through_a_failover_of_the_slots_master(
    env, cluster, failover
):
    env.pools_url = cluster.url
    env.lease_seconds = 5.0
    manager = env.manager()
    manager.create("api", limit=CAP, timeout=120)
    manager.assign(INSTANCE, "api")
    pools_key = f"{{{env.prefix}}}:pools"
    tasks = 60
    with FakeAPI(CAP) as api:
        workers = [env.worker(concurrency=3) for _ in range(3)]
        call = env.app().tasks["t.call_api"]
        started = time.monotonic()
        results = [call.delay(f"c{i}", api.url, 300) for i in range(tasks)]
        wait_until(lambda: len(api.calls()) >= tasks // 3, 60)
        owner = cluster.owner_of(pools_key)
        replica = cluster.replica_of(owner)
        moved = time.monotonic()
        if failover == "SIGKILL":
            owner.kill()
        else:
            replica.client().execute_command("CLUSTER", "FAILOVER")
        wait_until(lambda: cluster.owner_of(pools_key) is replica, 30, interval=0.02)
        took_over = time.monotonic() - moved
        wait_until(lambda: all(r.state in ("SUCCESS", "FAILURE") for r in results), 120)
        makespan = time.monotonic() - started
        after = PoolManager.from_url(env.pools_url, key_prefix=env.prefix)
        held_after = after.status("api").in_use
        wait_until(
            lambda: after.status("api").in_use == 0,
            env.lease_seconds + 15,
            message="a slot the failover kept taken did not come back",
        )
        calls = api.calls()
        print(
            f"\ncluster {failover}: the replica owned the slot after {took_over:.1f} s; API max "
            f"in flight {api.max_in_flight} of {CAP}, 429s {api.refused}; {len(calls)} calls "
            f"for {tasks} tasks; slots held when all had ended (lost until their lease lapsed) "
            f"{held_after}; makespan {makespan:.1f} s"
        )
        failed = [r.id for r in results if r.state != "SUCCESS"]
        for worker in workers:
            worker.stop(timeout=30)
    assert not failed, f"{len(failed)} tasks did not succeed: {failed[:3]}"
    assert api.max_in_flight <= CAP, f"the API saw {api.max_in_flight} calls at once"
    assert api.refused == 0
    assert len({c.task for c in calls}) == tasks, "every task called the API"
