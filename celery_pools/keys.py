"""Every Redis key celery-pools uses is built here and nowhere else.

All keys share one ``{hash tag}`` (the key prefix), so on Redis Cluster they live on one node and a
script may touch any of them. Layout, with the default prefix ``celery_pools``::

    {celery_pools}:pools                  SET   names of all pools
    {celery_pools}:instances              HASH  connector instance -> pool name
    {celery_pools}:held                   HASH  task id -> pool name it holds a slot of
    {celery_pools}:rates                  HASH  instance -> rate limit (see ratelimit.py)
    {celery_pools}:paused                 HASH  instance -> paused until (ms, Redis clock)
    {celery_pools}:rate:<instance>        STRING GCRA theoretical arrival time (ms)
    {celery_pools}:pool:<name>            HASH  limit, timeout, uid, created, updated, cleared
    {celery_pools}:pool:<name>:instances  SET   instances associated with the pool
    {celery_pools}:pool:<name>:holders    ZSET  task id -> lease expiry (ms, Redis clock)
    {celery_pools}:pool:<name>:holder     HASH  task id -> JSON (task name, instance, host, since)
    {celery_pools}:pool:<name>:waiters    ZSET  task id -> deadline (ms, Redis clock)
    {celery_pools}:pool:<name>:waiter     HASH  task id -> JSON (task name, instance, since)
    {celery_pools}:pool:<name>:stats      HASH  counters and histogram buckets (see metrics.py)
    {celery_pools}:pool:<name>:queue      ZSET  parked task id -> place in line (us): hand-off FIFO
    {celery_pools}:pool:<name>:parked     HASH  parked task id -> entry JSON (info, message)
    {celery_pools}:pool:<name>:handing    HASH  task id handed a slot, not started -> entry JSON
    {celery_pools}:pool:<name>:rate_parked HASH rate-limited instance -> its tasks parked in the
                                                FIFO (at most RATE_PARKED_MAX each)
    {celery_pools}:expired                LIST  parked entries to publish so their task fails
    {celery_pools}:sent_back              LIST  parked entries of paused instances, to publish so
                                                that their task waits by countdown
    {celery_pools}:stale                  ZSET  lapsed or ended hand-off id -> forget at (ms): a
                                                message carrying it never runs

Pool names cannot contain ``:``, so one pool's keys never collide with another's.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KeySpace", "PoolKeys"]


@dataclass(frozen=True)
class PoolKeys:
    """The keys of one pool, in the order the Lua scripts expect them after the global keys."""

    config: str
    instances: str
    holders: str
    holder: str
    waiters: str
    waiter: str
    stats: str
    queue: str
    parked: str
    handing: str
    rate_parked: str

    def all(self) -> list[str]:
        """All of the pool's keys, in script order."""
        return [
            self.config,
            self.instances,
            self.holders,
            self.holder,
            self.waiters,
            self.waiter,
            self.stats,
            self.queue,
            self.parked,
            self.handing,
            self.rate_parked,
        ]


@dataclass(frozen=True)
class KeySpace:
    """Builds the key names under one prefix."""

    prefix: str = "celery_pools"

    @property
    def _root(self) -> str:
        return "{" + self.prefix + "}"

    @property
    def pools(self) -> str:
        """SET of every pool name."""
        return f"{self._root}:pools"

    @property
    def instances(self) -> str:
        """HASH of connector instance -> pool name."""
        return f"{self._root}:instances"

    @property
    def held(self) -> str:
        """HASH of task id -> name of the pool whose slot it holds."""
        return f"{self._root}:held"

    @property
    def expired(self) -> str:
        """LIST of parked entries whose task must be published to fail (timeout, clear, delete)."""
        return f"{self._root}:expired"

    @property
    def sent_back(self) -> str:
        """LIST of parked entries of paused instances, to publish to wait by countdown."""
        return f"{self._root}:sent_back"

    @property
    def stale(self) -> str:
        """ZSET of hand-off ids whose message must never run -> when to forget them (ms)."""
        return f"{self._root}:stale"

    @property
    def rates(self) -> str:
        """HASH of connector instance -> encoded rate limit."""
        return f"{self._root}:rates"

    @property
    def paused(self) -> str:
        """HASH of connector instance -> paused until (ms)."""
        return f"{self._root}:paused"

    def rate_state(self, instance: str) -> str:
        """STRING holding the instance's GCRA state (theoretical arrival time, ms)."""
        return f"{self._root}:rate:{instance}"

    def pool(self, name: str) -> PoolKeys:
        """The keys of pool ``name``."""
        base = f"{self._root}:pool:{name}"
        return PoolKeys(
            config=base,
            instances=f"{base}:instances",
            holders=f"{base}:holders",
            holder=f"{base}:holder",
            waiters=f"{base}:waiters",
            waiter=f"{base}:waiter",
            stats=f"{base}:stats",
            queue=f"{base}:queue",
            parked=f"{base}:parked",
            handing=f"{base}:handing",
            rate_parked=f"{base}:rate_parked",
        )
