"""Slot operations: acquire + release pairs per second from one client, against that client's raw
Redis round trips (PING) and Dramatiq's ``ConcurrentRateLimiter`` on the same Redis."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.modes import create_pool
from celery_pools import PoolManager
from celery_pools.store import AcquireStatus, RedisPoolStore

__all__ = ["run_slotops"]

_WARM_UP = 50
_ROUNDS = 5


def _rates(iterations: int, operations: dict[str, Callable[[int], object]]) -> dict[str, Any]:
    """Operations per second of each ``operation(i)``, ``iterations`` calls of each.

    The calls run in :data:`_ROUNDS` rounds that take turns between the operations, so a
    disturbance (another process on the machine) hits them alike; each operation's rate is that
    of its best round, as usual for micro-benchmarks, and its median round is kept too.
    """
    for operation in operations.values():
        for i in range(_WARM_UP):
            operation(-1 - i)
    per_round = max(1, iterations // _ROUNDS)
    rounds: dict[str, list[float]] = {name: [] for name in operations}
    for round_ in range(_ROUNDS):
        for name, operation in operations.items():
            first = round_ * per_round
            started = time.perf_counter()
            for i in range(first, first + per_round):
                operation(i)
            rounds[name].append(per_round / (time.perf_counter() - started))
    return {
        name: {"best": max(rates), "median": statistics.median(rates), "rounds": rates}
        for name, rates in rounds.items()
    }


def _dramatiq_pair(client: Any, limit: int) -> Callable[[int], object] | str:
    """One Dramatiq acquire + release on ``client``, or why Dramatiq cannot be measured."""
    try:
        from dramatiq.rate_limits import ConcurrentRateLimiter
        from dramatiq.rate_limits.backends import RedisBackend
    except ImportError as exc:
        return f"dramatiq is not installed (pip install 'celery-pools[bench]'): {exc}"
    backend = RedisBackend(client=client)
    limiter = ConcurrentRateLimiter(  # type: ignore[no-untyped-call, unused-ignore]
        backend, "bench-slotops-dramatiq", limit=limit
    )

    def pair(_: int) -> None:
        with limiter.acquire():
            pass

    return pair


def run_slotops(pools_url: str, mode: str, iterations: int, limit: int) -> dict[str, Any]:
    """Measure the three rates, ``iterations`` of each, on a pool of ``limit`` slots in ``mode``.

    The pool's store, the PINGs and Dramatiq's backend all use the same redis-py client.
    """
    store = RedisPoolStore.from_url(pools_url, key_prefix=f"bench-slotops-{mode}")
    pool, instance = f"slotops-{mode}", f"slotops-{mode}"
    manager = PoolManager(store=store)
    create_pool(manager, pool, limit=limit, timeout=30, mode=mode)
    manager.assign(instance, pool)

    def pair(i: int) -> None:
        token = f"slotops-{i}"
        acquisition = store.acquire(instance, token, lease=60)
        if acquisition.status is not AcquireStatus.OK:
            raise RuntimeError(f"slot operations: acquire answered {acquisition.status}")
        if not store.release(token, pool).released:
            raise RuntimeError("slot operations: release gave back no slot")

    client = store.client
    operations: dict[str, Callable[[int], object]] = {
        "pings": lambda _: client.ping(),
        "pairs": pair,
    }
    dramatiq = _dramatiq_pair(client, limit)
    if not isinstance(dramatiq, str):
        operations["dramatiq_pairs"] = dramatiq
    rates = _rates(iterations, operations)
    result: dict[str, Any] = {"iterations": iterations, "rounds": _ROUNDS}
    for name, rate in rates.items():
        result[f"{name}_per_s"] = rate["best"]
        result[f"{name}_per_s_median"] = rate["median"]
        result[f"{name}_per_s_rounds"] = rate["rounds"]
    if isinstance(dramatiq, str):
        result["dramatiq_pairs_per_s"] = None
        result["dramatiq_unavailable"] = dramatiq
    result["pings_per_pair"] = result["pings_per_s"] / result["pairs_per_s"]
    if result["dramatiq_pairs_per_s"]:
        result["pairs_vs_dramatiq"] = result["pairs_per_s"] / result["dramatiq_pairs_per_s"]
    return result
