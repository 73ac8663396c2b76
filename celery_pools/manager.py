"""``PoolManager``: create, change, clear and delete pools and their instance associations.

Every change is one atomic step in Redis and is obeyed by the next acquisition on every worker,
without a restart::

    from celery_pools import PoolManager

    pools = PoolManager(app)            # or PoolManager.from_url("redis://...")
    pools.create("netsuite", limit=10, timeout=30)
    pools.assign("netsuite-prod", "netsuite")
    pools.update("netsuite", limit=12)
    pools.status("netsuite").in_use
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any

from .context import get_extension
from .errors import PoolConfigError, PoolExistsError, PoolNotFoundError
from .handoff import Dispatcher
from .metrics import PoolMetrics
from .models import (
    DEFAULT_TIMEOUT,
    Pool,
    PoolStatus,
    check_instance_name,
    check_limit,
    check_pause_seconds,
    check_pool_name,
    check_timeout,
    check_wait,
)
from .ratelimit import InstanceRate, RateLimit, parse_rate
from .store import ClearResult, DeleteResult, Freed, RedisPoolStore

__all__ = ["PoolManager"]


class PoolManager:
    """The Python admin API for pools. Bad input raises :class:`PoolConfigError` before anything
    is written; a missing pool raises :class:`PoolNotFoundError`."""

    def __init__(self, app: Any = None, *, store: RedisPoolStore | None = None) -> None:
        if store is None:
            if app is None:
                raise TypeError("PoolManager needs a Celery app or a store")
            store = get_extension(app).store
        self.store = store
        self.app = app
        # With an app, what a change frees is published at once; without one, the workers'
        # reapers publish it within their interval.
        self._dispatcher = Dispatcher(app, store) if app is not None else None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = "celery_pools",
        transport_options: Mapping[str, Any] | None = None,
    ) -> PoolManager:
        """A manager for the pools in the Redis at ``url`` (no Celery app needed): a server, a
        Sentinel master (``transport_options={"master_name": ...}``) or a Cluster, as
        ``pools_redis_url`` names them."""
        return cls(
            store=RedisPoolStore.from_url(
                url, key_prefix=key_prefix, transport_options=transport_options
            )
        )

    # -- pools ------------------------------------------------------------------------------

    def create(
        self, name: str, *, limit: int, timeout: float = DEFAULT_TIMEOUT, wait: str = "countdown"
    ) -> Pool:
        """Create a pool. Raises :class:`PoolExistsError` if one of that name exists.

        ``wait`` is how its tasks wait for a slot: ``"countdown"`` (sent again with a countdown)
        or ``"handoff"`` (parked in Redis and handed the next free slot, oldest first).
        """
        pool = Pool.parse({"name": name, "limit": limit, "timeout": timeout, "wait": wait})
        if not self.store.create_pool(pool):
            raise PoolExistsError(
                f"a pool named {name!r} already exists; use update() to change it", pool=name
            )
        return pool

    def ensure(
        self, name: str, *, limit: int, timeout: float = DEFAULT_TIMEOUT, wait: str = "countdown"
    ) -> bool:
        """Create the pool only if it is missing; an existing pool is left as it is.

        Returns True when it was created.
        """
        pool = Pool.parse({"name": name, "limit": limit, "timeout": timeout, "wait": wait})
        return self.store.create_pool(pool)

    def update(
        self,
        name: str,
        *,
        limit: int | None = None,
        timeout: float | None = None,
        wait: str | None = None,
    ) -> Pool:
        """Change a pool's limit, timeout and/or waiting mode; running tasks are never
        interrupted. A larger limit admits waiting tasks at once."""
        check_pool_name(name)
        if limit is None and timeout is None and wait is None:
            raise PoolConfigError.invalid(
                "limit/timeout/wait", None, "give a new limit, timeout, waiting mode or several"
            )
        if limit is not None:
            check_limit(limit)
        if timeout is not None:
            timeout = check_timeout(timeout)
        if wait is not None:
            check_wait(wait)
        if not self.store.update_pool(name, limit, timeout, wait):
            raise _not_found(name)
        self._hand_off(name)
        return self.get(name)

    def _hand_off(self, name: str) -> None:
        """Give slots freed by a change to parked tasks now."""
        if self._dispatcher is not None:
            self._dispatcher.hand_off(name)

    def _end_parked(self) -> None:
        """Publish parked tasks that must now fail (cleared, deleted pools) now."""
        if self._dispatcher is not None:
            self._dispatcher.publish_expired()

    def get(self, name: str) -> Pool:
        """A pool's definition."""
        check_pool_name(name)
        pool = self.store.get_pool(name)
        if pool is None:
            raise _not_found(name)
        return pool

    def list(self) -> builtins.list[Pool]:
        """Every pool, by name."""
        return self.store.list_pools()

    def delete(self, name: str) -> DeleteResult:
        """Delete a pool and its instance associations.

        Its running tasks finish normally; tasks waiting for one of its slots fail with
        :class:`~celery_pools.errors.PoolDeletedError` at their next attempt.
        """
        check_pool_name(name)
        result = self.store.delete_pool(name)
        if result is None:
            raise _not_found(name)
        self._end_parked()
        return result

    def clear(self, name: str, *, release_held: bool = False) -> ClearResult:
        """Drop every pending request: each task waiting for a slot fails with
        :class:`~celery_pools.errors.PoolClearedError` and never runs.

        Running tasks keep their slots, unless ``release_held`` is true: then their slots are
        freed at once, which can admit more tasks than the limit while they finish.
        """
        check_pool_name(name)
        result = self.store.clear_pool(name, release_held=release_held)
        if result is None:
            raise _not_found(name)
        if release_held:
            self._hand_off(name)
        self._end_parked()
        return result

    def release(self, task_id: str, *, force: bool = False) -> Freed:
        """Free the slot task ``task_id`` abandoned (its holder ended without releasing, and its
        call is known to be over) before its grace ends; the next waiting task takes it.

        A slot the task holds while running (its lease renewed) is freed only with ``force``: its
        call may be in flight, so the pool may then see one call more than its limit. Raises
        :class:`~celery_pools.errors.SlotNotFoundError` when the task has no slot,
        :class:`~celery_pools.errors.SlotInUseError` when it is running and ``force`` is not
        given.
        """
        if not isinstance(task_id, str) or not task_id or len(task_id) > 255:
            raise PoolConfigError.invalid("task_id", task_id, "a task id: 1 to 255 characters")
        freed = self.store.free(task_id, force=force)
        self._hand_off(freed.pool)
        return freed

    def status(self, name: str) -> PoolStatus:
        """The pool's definition, holders and waiters, read atomically."""
        check_pool_name(name)
        return self.store.status(name)

    def statuses(self) -> builtins.list[PoolStatus]:
        """The status of every pool, read atomically."""
        return self.store.statuses()

    def metrics(self, name: str) -> PoolMetrics:
        """A pool's status with its counters and histograms, read together."""
        check_pool_name(name)
        found = self.store.metrics([name])
        if not found:
            raise _not_found(name)
        return found[0]

    def all_metrics(self) -> builtins.list[PoolMetrics]:
        """Every pool's status with its counters and histograms."""
        return self.store.metrics()

    # -- instances --------------------------------------------------------------------------

    def assign(self, instance: str, pool: str) -> str | None:
        """Associate a connector instance with a pool (replacing its previous pool, returned)."""
        check_instance_name(instance, "instance")
        check_pool_name(pool)
        return self.store.assign(instance, pool)

    def unassign(self, instance: str) -> str | None:
        """Remove an instance's association; returns the pool it had, or None."""
        check_instance_name(instance, "instance")
        return self.store.unassign(instance)

    def pool_of(self, instance: str) -> str | None:
        """The pool serving an instance, or None."""
        check_instance_name(instance, "instance")
        return self.store.pool_of(instance)

    def associations(self) -> dict[str, str]:
        """Every instance -> pool association."""
        return self.store.associations()

    # -- rate limits ------------------------------------------------------------------------

    def set_rate_limit(self, instance: str, rate: str | RateLimit, *, burst: int = 0) -> RateLimit:
        """Limit an instance to ``rate`` calls (``"60/m"``, ``"10/s"``, ``"1000/h"``), shared by
        every worker, with up to ``burst`` extra calls at once. Obeyed by the next acquisition."""
        check_instance_name(instance, "instance")
        limit = parse_rate(rate, burst) if isinstance(rate, str) else rate
        self.store.set_rate_limit(instance, limit)
        return limit

    def remove_rate_limit(self, instance: str) -> bool:
        """Remove an instance's rate limit; returns whether it had one."""
        check_instance_name(instance, "instance")
        return self.store.remove_rate_limit(instance)

    def rate_limits(self) -> dict[str, RateLimit]:
        """Every instance's rate limit."""
        return self.store.rate_limits()

    def pause(self, instance: str, seconds: float) -> float:
        """Pause an instance for every worker (e.g. after HTTP 429 ``Retry-After``); no task of
        it starts until the pause ends. Returns when it ends (Unix seconds, Redis clock)."""
        check_instance_name(instance, "instance")
        return self.store.pause(instance, check_pause_seconds(seconds))

    def resume(self, instance: str) -> None:
        """Lift an instance's pause."""
        check_instance_name(instance, "instance")
        self.store.pause(instance, 0)

    def rates(self, instances: builtins.list[str]) -> builtins.list[InstanceRate]:
        """Each instance's rate limit and how close it is to it (calls available, next call in,
        paused for), read atomically."""
        for instance in instances:
            check_instance_name(instance, "instance")
        return self.store.instance_rates(instances)


def _not_found(name: str) -> PoolNotFoundError:
    return PoolNotFoundError(f"no pool named {name!r}", pool=name)
