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
from typing import Any

from .errors import PoolConfigError, PoolExistsError, PoolNotFoundError
from .extension import get_extension
from .models import (
    DEFAULT_TIMEOUT,
    Pool,
    PoolStatus,
    check_instance_name,
    check_limit,
    check_pool_name,
    check_timeout,
)
from .store import ClearResult, DeleteResult, RedisPoolStore

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

    @classmethod
    def from_url(cls, url: str, *, key_prefix: str = "celery_pools") -> PoolManager:
        """A manager for the pools in the Redis at ``url`` (no Celery app needed)."""
        return cls(store=RedisPoolStore.from_url(url, key_prefix=key_prefix))

    # -- pools ------------------------------------------------------------------------------

    def create(self, name: str, *, limit: int, timeout: float = DEFAULT_TIMEOUT) -> Pool:
        """Create a pool. Raises :class:`PoolExistsError` if one of that name exists."""
        pool = Pool.parse({"name": name, "limit": limit, "timeout": timeout})
        if not self.store.create_pool(pool):
            raise PoolExistsError(
                f"a pool named {name!r} already exists; use update() to change it", pool=name
            )
        return pool

    def ensure(self, name: str, *, limit: int, timeout: float = DEFAULT_TIMEOUT) -> bool:
        """Create the pool only if it is missing; an existing pool is left as it is.

        Returns True when it was created.
        """
        pool = Pool.parse({"name": name, "limit": limit, "timeout": timeout})
        return self.store.create_pool(pool)

    def update(self, name: str, *, limit: int | None = None, timeout: float | None = None) -> Pool:
        """Change a pool's limit and/or timeout; running tasks are never interrupted."""
        check_pool_name(name)
        if limit is None and timeout is None:
            raise PoolConfigError.invalid(
                "limit/timeout", None, "give a new limit, timeout or both"
            )
        if limit is not None:
            check_limit(limit)
        if timeout is not None:
            timeout = check_timeout(timeout)
        if not self.store.update_pool(name, limit=limit, timeout=timeout):
            raise _not_found(name)
        return self.get(name)

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
        return result

    def status(self, name: str) -> PoolStatus:
        """The pool's definition, holders and waiters, read atomically."""
        check_pool_name(name)
        return self.store.status(name)

    def statuses(self) -> builtins.list[PoolStatus]:
        """The status of every pool, read atomically."""
        return self.store.statuses()

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


def _not_found(name: str) -> PoolNotFoundError:
    return PoolNotFoundError(f"no pool named {name!r}", pool=name)
