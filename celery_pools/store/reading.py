"""The store's reads: definitions, associations, held slots, status snapshots, metrics, rates,
and the parked entries the workers must publish (ended or sent back).

None of them writes but the pops of those entries (and putting back what could not be
published); a snapshot of several keys is read in one transaction, so it is consistent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis

from celery_pools.errors import PoolBackendError, PoolNotFoundError
from celery_pools.metrics import PoolMetrics, parse_stats
from celery_pools.models import Pool, PoolStatus
from celery_pools.ratelimit import InstanceRate, RateLimit

from . import replies
from .base import StoreBase, compact_json
from .results import HolderProcess

__all__ = ["StoreReading"]


class StoreReading(StoreBase):
    """Reads of pool state."""

    # -- definitions and associations --------------------------------------------------------

    def get_pool(self, name: str) -> Pool | None:
        """The pool's definition, or None."""
        with self._backend(f"read pool {name!r}"):
            row = self.client.hmget(self.keys.pool(name).config, ["limit", "timeout", "wait"])
        return replies.pool(name, row)

    def pool_uid(self, name: str) -> str | None:
        """The random id of the pool now called ``name`` (a recreated pool has a new one)."""
        with self._backend(f"read pool {name!r}"):
            uid = self.client.hget(self.keys.pool(name).config, "uid")
        return str(uid) if uid is not None else None

    def pool_names(self) -> list[str]:
        """Every pool's name, sorted."""
        with self._backend("list pools"):
            return sorted(str(name) for name in self.client.smembers(self.keys.pools))

    def list_pools(self) -> list[Pool]:
        """Every pool's definition, sorted by name."""
        names = self.pool_names()
        with self._backend("list pools"):
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                pipe.hmget(self.keys.pool(name).config, ["limit", "timeout", "wait"])
            rows = pipe.execute()
        pools = [replies.pool(name, row) for name, row in zip(names, rows, strict=True)]
        return [pool for pool in pools if pool is not None]

    def associations(self) -> dict[str, str]:
        """Every instance -> pool association."""
        with self._backend("read associations"):
            return {str(k): str(v) for k, v in self.client.hgetall(self.keys.instances).items()}

    # -- slots and parked tasks --------------------------------------------------------------

    def held_pools(self, tokens: Sequence[str]) -> dict[str, str]:
        """Which of ``tokens`` hold a slot, and of which pool."""
        if not tokens:
            return {}
        with self._backend("read held slots"):
            pools = self.client.hmget(self.keys.held, list(tokens))
        return {token: str(pool) for token, pool in zip(tokens, pools, strict=True) if pool}

    def holder_processes(self, held: Mapping[str, str]) -> dict[str, HolderProcess]:
        """Which process holds each slot of ``held`` (token -> pool): its holder's hostname,
        pid and start (:mod:`celery_pools.processes`) as the holder recorded them when it took
        the slot (None where it recorded none); tokens whose slot is no longer held, or whose
        record names no host and no pid (or cannot be read), are left out."""
        tokens = list(held)
        if not tokens:
            return {}
        with self._backend("read slot holders"):
            pipe = self.client.pipeline(transaction=False)
            for token in tokens:
                pipe.hget(self.keys.pool(held[token]).holder, token)
            records = pipe.execute()
        found: dict[str, HolderProcess] = {}
        for token, raw in zip(tokens, records, strict=True):
            try:
                record = json.loads(raw) if raw else {}
                hostname, pid, started = (record.get(k) for k in ("hostname", "pid", "started"))
                if hostname or pid is not None:
                    found[token] = HolderProcess(
                        str(hostname or ""),
                        None if pid is None else int(pid),
                        None if started is None else int(started),
                    )
            except (TypeError, ValueError, AttributeError):  # unreadable: says no process
                continue
        return found

    def handoff_pools(self) -> list[str]:
        """Names of the pools whose tasks wait by hand-off, or that have parked tasks, tasks
        handed a slot or standbys (a task may override its pool's mode, and a pool's mode may
        change while tasks are parked)."""
        names = self.pool_names()
        with self._backend("list pools"):
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                keys = self.keys.pool(name)
                pipe.hget(keys.config, "wait")
                pipe.zcard(keys.queue)
                pipe.hlen(keys.handoffs)
                pipe.zcard(keys.standby)
            rows = pipe.execute()
        return [
            name
            for index, name in enumerate(names)
            if rows[4 * index] == "handoff" or any(rows[4 * index + 1 : 4 * index + 4])
        ]

    # -- snapshots ---------------------------------------------------------------------------

    def status(self, name: str) -> PoolStatus:
        """A consistent snapshot of one pool. Raises :class:`PoolNotFoundError`."""
        statuses = self.statuses([name])
        if not statuses:
            raise PoolNotFoundError(f"no pool named {name!r}", pool=name)
        return statuses[0]

    def statuses(self, names: Iterable[str] | None = None) -> list[PoolStatus]:
        """Snapshots of the named pools (all pools by default), read in one transaction."""
        names = self.pool_names() if names is None else list(names)
        with self._backend("read pool status"):
            pipe = self.client.pipeline(transaction=True)
            pipe.time()
            for name in names:
                keys = self.keys.pool(name)
                pipe.hgetall(keys.config)
                pipe.smembers(keys.pool_instances)
                pipe.zrange(keys.holders, 0, -1, withscores=True)
                pipe.hgetall(keys.holder)
                pipe.zrange(keys.waiters, 0, -1, withscores=True)
                pipe.hgetall(keys.waiter)
                pipe.zrange(keys.abandoned, 0, -1, withscores=True)
                pipe.hgetall(keys.abandoned_holder)
                pipe.zcard(keys.standby)
                pipe.hget(keys.stats, "as_usual_arrived")
            reply = pipe.execute()
        now = self._observe_time(reply[0])
        result = []
        for index, name in enumerate(names):
            rows = reply[1 + 10 * index : 11 + 10 * index]
            if rows[0]:
                result.append(replies.status(name, now, rows))
        return result

    def metrics(self, names: Iterable[str] | None = None) -> list[PoolMetrics]:
        """Counters and histograms of the named pools (all by default), with their status."""
        statuses = self.statuses(names)
        with self._backend("read pool metrics"):
            pipe = self.client.pipeline(transaction=False)
            for status in statuses:
                pipe.hgetall(self.keys.pool(status.name).stats)
            rows = pipe.execute()
        return [parse_stats(status, stats) for status, stats in zip(statuses, rows, strict=True)]

    # -- rate limits -------------------------------------------------------------------------

    def rate_limits(self) -> dict[str, RateLimit]:
        """Every instance's rate limit."""
        with self._backend("read rate limits"):
            raw = self.client.hgetall(self.keys.rates)
        return {str(k): RateLimit.decode(str(v)) for k, v in raw.items()}

    def instance_rates(self, instances: Sequence[str]) -> list[InstanceRate]:
        """Each instance's rate limit, calls available now, next call and pause, atomically."""
        instances = list(instances)
        if not instances:
            return []
        with self._backend("read rate limits"):
            pipe = self.client.pipeline(transaction=True)
            pipe.time()
            pipe.hmget(self.keys.rates, instances)
            pipe.hmget(self.keys.paused, instances)
            pipe.hmget(self.keys.rate_state, instances)
            reply = pipe.execute()
        now = self._observe_time(reply[0]) * 1000
        specs, paused, tats = reply[1], reply[2], reply[3]
        return [
            replies.instance_rate(instance, now, spec, pause, tat)
            for instance, spec, pause, tat in zip(instances, specs, paused, tats, strict=True)
        ]

    # -- the server --------------------------------------------------------------------------

    def ping(self) -> float:
        """The Redis server's clock (Unix seconds); raises PoolBackendError if unreachable."""
        with self._backend("answer"):
            reply = self.client.time()
        return self._observe_time(reply)

    def maxmemory_policy(self) -> str | None:
        """The server's ``maxmemory-policy``, or None when CONFIG is not allowed."""
        try:
            return str(self.client.config_get("maxmemory-policy").get("maxmemory-policy"))
        except redis.ResponseError:
            return None
        except redis.RedisError as exc:
            raise PoolBackendError(f"Redis at {self.url} could not answer: {exc}") from exc

    def redis_version(self) -> tuple[int, ...] | None:
        """The server's version (``INFO server``), or None when it cannot be read (INFO not
        allowed to this user, Redis unreachable)."""
        try:
            raw = str(self.client.info("server").get("redis_version", ""))
        except redis.RedisError:
            return None
        parts = tuple(int(part) for part in raw.split(".") if part.isdigit())
        return parts or None

    def _observe_time(self, reply: Any) -> float:
        """The Redis clock from a ``TIME`` reply (Unix seconds), observed."""
        now = float(reply[0]) + float(reply[1]) / 1e6
        self.clock.observe(now)
        return now

    # -- parked entries to publish -----------------------------------------------------------

    def pop_expired(self, count: int = 100, *, sent_back: bool = False) -> list[dict[str, Any]]:
        """Take up to ``count`` parked entries whose task must be published to fail; with
        ``sent_back``, entries of paused instances, whose task must be published to wait."""
        key = self.keys.sent_back if sent_back else self.keys.expired
        with self._backend("read parked tasks to publish"):
            raw: Any = self.client.lpop(key, count)
        return [json.loads(item) for item in raw or []]

    def return_expired(self, records: Sequence[dict[str, Any]], *, sent_back: bool = False) -> None:
        """Put back records taken by :meth:`pop_expired` whose task could not be published."""
        if records:
            with self._backend("return parked tasks to publish"):
                self.client.rpush(
                    self.keys.sent_back if sent_back else self.keys.expired,
                    *(compact_json(record) for record in records),
                )
