"""Every Redis key celery-pools uses is built here and nowhere else.

All keys share one ``{hash tag}`` (the key prefix), so on Redis Cluster they live on one node and a
script may touch any of them. Layout, with the default prefix ``celery_pools``; the first column
is the key's name in :class:`KeySpace` and in the Lua scripts::

    pools           {celery_pools}:pools                  SET   names of all pools
    instances       {celery_pools}:instances              HASH  connector instance -> pool name
    held            {celery_pools}:held                   HASH  task id -> pool it holds a slot of
    rates           {celery_pools}:rates                  HASH  instance -> rate limit
                                                                (ratelimit.py)
    rate_state      {celery_pools}:rate_state             HASH  instance -> GCRA theoretical
                                                                arrival time (ms)
    paused          {celery_pools}:paused                 HASH  instance -> paused until (ms)
    expired         {celery_pools}:expired                LIST  parked entries to publish so that
                                                                their task fails
    sent_back       {celery_pools}:sent_back              LIST  parked entries of paused instances,
                                                                to publish to wait by countdown
    stale           {celery_pools}:stale                  ZSET  ended hand-off id -> forget at (ms):
                                                                a message carrying it never runs
    config          {celery_pools}:pool:<name>            HASH  limit, timeout, wait, uid, created,
                                                                updated, cleared, handoff_seq,
                                                                reserve (lib/reserve.lua)
    pool_instances  {celery_pools}:pool:<name>:instances  SET   instances the pool serves
    holders         {celery_pools}:pool:<name>:holders    ZSET  task id -> lease expiry (ms)
    holder          {celery_pools}:pool:<name>:holder     HASH  task id -> JSON (task, instance,
                                                                host, pid, since)
    waiters         {celery_pools}:pool:<name>:waiters    ZSET  task id -> deadline (ms)
    waiter          {celery_pools}:pool:<name>:waiter     HASH  task id -> JSON (task, instance,
                                                                since)
    stats           {celery_pools}:pool:<name>:stats      HASH  counters and histogram buckets
                                                                (metrics.py)
    queue           {celery_pools}:pool:<name>:queue      ZSET  parked task id -> place in line
                                                                (us): the hand-off FIFO
    parked          {celery_pools}:pool:<name>:parked     HASH  parked task id -> entry JSON
    handoffs        {celery_pools}:pool:<name>:handoffs   HASH  task id handed a slot, not started
                                                                -> entry JSON
    rate_parked     {celery_pools}:pool:<name>:rate_parked HASH rate-limited instance -> its tasks
                                                                parked in the FIFO
    abandoned       {celery_pools}:pool:<name>:abandoned  ZSET  task id whose holder ended without
                                                                releasing -> end of its grace (ms)
    abandoned_holder {celery_pools}:pool:<name>:abandoned_holder HASH  task id -> holder JSON,
                                                                with abandoned, until and why
    standby         {celery_pools}:pool:<name>:standby    ZSET  standby task id -> place in line
                                                                (us): parked tasks whose message
                                                                is out ahead of need
    standby_entry   {celery_pools}:pool:<name>:standby_entry HASH  standby task id -> JSON (id,
                                                                entry, promoted, ready, until,
                                                                host, pid, thread)
    wake            {celery_pools}:pool:<name>:wake:<task id>  LIST  a standby's wake-up ("go",
                                                                "end"); the field is the prefix

Times are milliseconds on the Redis server's clock. Pool names cannot contain ``:``, so one
pool's keys never collide with another's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import lru_cache

__all__ = ["GLOBAL_KEYS", "POOL_KEYS", "KeySpace", "PoolKeys", "script_keys"]


@dataclass(frozen=True)
class PoolKeys:
    """The keys of one pool."""

    config: str
    pool_instances: str
    holders: str
    holder: str
    waiters: str
    waiter: str
    stats: str
    queue: str
    parked: str
    handoffs: str
    rate_parked: str
    abandoned: str
    abandoned_holder: str
    standby: str
    standby_entry: str
    wake: str

    def all(self) -> list[str]:
        """Every key of the pool."""
        return [getattr(self, name) for name in POOL_KEYS]


#: The names of a pool's keys (:class:`PoolKeys`' fields).
POOL_KEYS: tuple[str, ...] = tuple(field.name for field in fields(PoolKeys))
#: The names of the keys shared by every pool (:class:`KeySpace`'s properties).
GLOBAL_KEYS = (
    "pools",
    "instances",
    "held",
    "rates",
    "rate_state",
    "paused",
    "expired",
    "sent_back",
    "stale",
)


@dataclass(frozen=True)
class KeySpace:
    """Builds the key names under one prefix."""

    prefix: str = "celery_pools"

    @property
    def _root(self) -> str:
        return "{" + self.prefix + "}"

    @property
    def pattern(self) -> str:
        """The glob that matches every key of the prefix (and no other's)."""
        return f"{self._root}:*"

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
    def rates(self) -> str:
        """HASH of connector instance -> encoded rate limit."""
        return f"{self._root}:rates"

    @property
    def rate_state(self) -> str:
        """HASH of connector instance -> GCRA theoretical arrival time (ms)."""
        return f"{self._root}:rate_state"

    @property
    def paused(self) -> str:
        """HASH of connector instance -> paused until (ms)."""
        return f"{self._root}:paused"

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

    def pool(self, name: str) -> PoolKeys:
        """The keys of pool ``name``."""
        return _pool_keys(self._root, name)

    def key(self, name: str, pool: str = "", old_pool: str = "") -> str:
        """The key called ``name`` (a :data:`GLOBAL_KEYS` or :data:`POOL_KEYS` name, or
        ``old_pool_instances``): a pool's key is ``pool``'s, ``old_pool_instances`` is
        ``old_pool``'s ``pool_instances``."""
        if name in POOL_KEYS:
            return str(getattr(self.pool(pool), name))
        if name == "old_pool_instances":
            return self.pool(old_pool).pool_instances
        if name in GLOBAL_KEYS:
            return str(getattr(self, name))
        raise KeyError(f"no key is called {name!r}")


@lru_cache(maxsize=1024)
def _pool_keys(root: str, name: str) -> PoolKeys:
    base = f"{root}:pool:{name}"
    return PoolKeys(
        config=base,
        pool_instances=f"{base}:instances",
        holders=f"{base}:holders",
        holder=f"{base}:holder",
        waiters=f"{base}:waiters",
        waiter=f"{base}:waiter",
        stats=f"{base}:stats",
        queue=f"{base}:queue",
        parked=f"{base}:parked",
        handoffs=f"{base}:handoffs",
        rate_parked=f"{base}:rate_parked",
        abandoned=f"{base}:abandoned",
        abandoned_holder=f"{base}:abandoned_holder",
        standby=f"{base}:standby",
        standby_entry=f"{base}:standby_entry",
        wake=f"{base}:wake:",
    )


@lru_cache(maxsize=4096)
def script_keys(
    space: KeySpace, layout: Sequence[str], pool: str = "", old_pool: str = ""
) -> tuple[str, ...]:
    """The keys named by ``layout`` (a script's key names, in its order), for ``pool``.

    An instance with no pool still gets well-formed keys in the same hash slot (pool ``-``).
    """
    return tuple(space.key(name, pool or "-", old_pool or "-") for name in layout)
