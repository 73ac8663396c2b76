"""``python -m bench.deployment``: what pool state costs a Redis, and what waiting for a replica
costs a task.

Sizing: on a private ``redis-server``, the growth of ``used_memory`` (``INFO memory``) per pool
(created and assigned one instance), per holder (a slot taken), and per parked task of a hand-off
pool (its entry: the task's message as the dispatcher encodes it, with arguments of a given
size). Replication: a master with one replica on loopback; acquire + release pairs on
an ample pool, without and with ``pools_redis_wait_replicas=1``, in alternating rounds, each
round's ratio reported (this machine is noisy: read the ratios, not the times).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import redis
from celery import Celery

from celery_pools.handoff import Dispatcher
from celery_pools.local_redis import LocalRedis
from celery_pools.models import Pool
from celery_pools.store import RedisPoolStore

__all__ = ["main"]


def _used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def sizing(pools: int, holders: int, parked: int, entry_bytes: int) -> dict[str, float]:
    """Bytes of Redis memory per pool, per holder and per parked task."""
    with LocalRedis() as server:
        client = redis.Redis.from_url(server.url(0))
        store = RedisPoolStore.from_url(server.url(0), key_prefix="sizing")
        store.ping()
        before = _used(client)
        for index in range(pools):
            store.create_pool(Pool(name=f"p{index}", limit=10))
            store.assign(f"i{index}", f"p{index}")
        per_pool = (_used(client) - before) / pools

        store.create_pool(Pool(name="big", limit=holders + 1))
        store.assign("big-i", "big")
        before = _used(client)
        for _ in range(holders):
            store.acquire("big-i", uuid.uuid4().hex, lease=600)
        per_holder = (_used(client) - before) / holders

        store.create_pool(Pool(name="fifo", limit=1, wait="handoff"))
        store.assign("fifo-i", "fifo")
        store.acquire("fifo-i", uuid.uuid4().hex, lease=600)
        entry = Dispatcher(Celery("sizing", set_as_current=False), store).encode(
            "orders.push",
            ["x" * max(0, entry_bytes - 400)],
            {},
            {"task_id": uuid.uuid4().hex, "headers": {}},
            info={"task_name": "orders.push", "instance": "fifo-i"},
        )
        now = store.ping()
        before = _used(client)
        for _ in range(parked):  # each asks first (and waits), then parks its message
            token = uuid.uuid4().hex
            store.acquire("fifo-i", token, lease=600, standby=0.0)
            store.park(token, pool="fifo", first=now, entry=entry)
        per_parked = (_used(client) - before) / parked
        client.close()
    return {"pool": per_pool, "holder": per_holder, "parked": per_parked, "entry": len(entry)}


def _pairs(store: RedisPoolStore, count: int) -> float:
    """Seconds per acquire + release pair on an ample pool."""
    started = time.perf_counter()
    for _ in range(count):
        token = uuid.uuid4().hex
        acq = store.acquire("ample-i", token, lease=60)
        store.release(token, acq.pool or "ample")
    return (time.perf_counter() - started) / count


def replication(pairs: int, rounds: int) -> list[tuple[float, float]]:
    """Per round: seconds per pair without and with WAIT for one replica."""
    with (
        LocalRedis() as master,
        LocalRedis(extra_args=["--replicaof", "127.0.0.1", "0"]) as replica,
    ):
        replica_client = redis.Redis.from_url(replica.url(0), decode_responses=True)
        replica_client.replicaof("127.0.0.1", master.port)
        deadline = time.monotonic() + 20
        while replica_client.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not catch up with the master")
            time.sleep(0.05)
        plain = RedisPoolStore.from_url(master.url(0), key_prefix="wait")
        waiting = RedisPoolStore.from_url(master.url(0), key_prefix="wait", wait_replicas=1)
        plain.create_pool(Pool(name="ample", limit=1_000_000))
        plain.assign("ample-i", "ample")
        _pairs(plain, 200)  # warm: scripts loaded, connections made
        _pairs(waiting, 200)
        results = []
        for _ in range(rounds):
            results.append((_pairs(plain, pairs), _pairs(waiting, pairs)))
        if waiting._scripts.unreplicated:
            raise RuntimeError(f"{waiting._scripts.unreplicated} batches were not replicated")
        replica_client.close()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pools", type=int, default=500)
    parser.add_argument("--holders", type=int, default=2000)
    parser.add_argument("--parked", type=int, default=2000)
    parser.add_argument(
        "--entry-bytes", type=int, default=1000, help="about how large a parked message is"
    )
    parser.add_argument("--pairs", type=int, default=2000, help="acquire+release pairs a round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    size = sizing(args.pools, args.holders, args.parked, args.entry_bytes)
    print("Redis memory (used_memory growth):")
    print(f"  per pool (with one instance):  {size['pool']:8.0f} bytes")
    print(f"  per holder (a slot taken):     {size['holder']:8.0f} bytes")
    print(
        f"  per parked task:               {size['parked']:8.0f} bytes "
        f"(its message entry {size['entry']:.0f} bytes)"
    )
    rounds = replication(args.pairs, args.rounds)
    print("\nacquire + release, master with one replica (us per pair):")
    print("  round  no WAIT  WAIT 1  ratio")
    for index, (plain, waiting) in enumerate(rounds, 1):
        print(f"  {index:5d}  {plain * 1e6:7.0f}  {waiting * 1e6:6.0f}  {waiting / plain:5.2f}")
    ratios = [waiting / plain for plain, waiting in rounds]
    print(f"  median ratio {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
