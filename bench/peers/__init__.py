"""The alternatives a user would pick instead of celery-pools, each behind a small adapter, and
celery-pools' own waiting modes: ``python -m bench --scenarios peers`` runs one workload through
every one of them (:mod:`bench.peers.scenario`).
"""

from __future__ import annotations

from bench.modes import STANDBY_MAX, STANDBY_MODE
from bench.peers.base import Peer, SlotPeer
from bench.peers.counter import HolderCounter
from bench.peers.dramatiq_limiter import DramatiqLimiter
from bench.peers.mutex import Mutex
from bench.peers.poller import Poller
from bench.peers.pools import POOLED_TASK, CeleryPools
from bench.peers.semaphore import TokenSemaphore

__all__ = ["PEERS", "Peer", "SlotPeer"]

#: Every peer, by the name the report gives it, in the order they run.
PEERS: dict[str, Peer] = {
    peer.name: peer
    for peer in (
        CeleryPools("celery-pools countdown", "celery-pools", "README.md", POOLED_TASK),
        CeleryPools(
            "celery-pools handoff", "celery-pools", "README.md", POOLED_TASK, mode="handoff"
        ),
        CeleryPools(
            "celery-pools handoff+standby",
            "celery-pools",
            "README.md",
            POOLED_TASK,
            worker_settings={"pools_standby_max": STANDBY_MAX},
            mode=STANDBY_MODE,
        ),
        Poller("hand-written poller", "redis", "docs.celeryq.dev task cookbook"),
        DramatiqLimiter("dramatiq ConcurrentRateLimiter", "dramatiq", "dramatiq.io cookbook"),
        TokenSemaphore("redis-rate-limiters Semaphore", "redis-rate-limiters", "its README"),
        HolderCounter("concurrency-limit", "concurrency-limit", "its README"),
        Mutex("python-redis-lock", "python-redis-lock", "its README", limit_one=True),
    )
}
