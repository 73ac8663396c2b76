"""The store's plumbing: its Redis client, keys and scripts, errors, and the MOVED protocol."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import redis

from celery_pools.errors import PoolBackendError
from celery_pools.models import (
    DEFAULT_HANDOFF_LEASE,
    DEFAULT_STANDBY_MAX,
    DEFAULT_STANDBY_SECONDS,
)

from . import fork
from .clock import RedisClock
from .connect import Endpoint
from .keys import KeySpace, script_keys
from .replies import Moved, seconds
from .scripts import SCRIPTS, script_source
from .wire import Block, ScriptCall, ScriptCaller

__all__ = ["StoreBase", "compact_json", "ms"]

T = TypeVar("T")
logger = logging.getLogger(__name__)

# A MOVED answer can only repeat while associations change under us; a few rounds always settle.
_MAX_MOVED_ROUNDS = 5


def ms(value: float) -> int:
    """Seconds as whole milliseconds, as the scripts take them."""
    return round(value * 1000)


def compact_json(value: Any) -> str:
    """``value`` as JSON without spaces, as the store writes records for the scripts."""
    return json.dumps(value, separators=(",", ":"))


class StoreBase:
    """A Redis client, the key space and the scripts, and how the store calls them.

    Scripts that depend on which pool serves an instance take the keys of the pool the caller
    believes is right; the script checks that belief atomically and answers ``MOVED`` when it is
    stale. So the store keeps a small instance -> pool cache that is never trusted, only used as
    a first guess (:meth:`_moved`). Redis errors are raised as
    :class:`~celery_pools.errors.PoolBackendError` with the cause chained.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: KeySpace | None = None,
        *,
        handoff_lease: float = DEFAULT_HANDOFF_LEASE,
        standby_max: int = DEFAULT_STANDBY_MAX,
        standby_block: float = DEFAULT_STANDBY_SECONDS,
        endpoint: Endpoint | None = None,
        wait_replicas: int = 0,
        wait_timeout: float = 0.5,
    ) -> None:
        #: Where the Redis is, and how to find it again (a cluster's slot moves).
        self.endpoint = endpoint or Endpoint.of(client)
        self.keys = keys or KeySpace()
        #: Seconds a task handed a slot has to start and claim it (``pools_handoff_lease_seconds``).
        self.handoff_lease = handoff_lease
        #: Standbys a hand-off pool keeps at most, 0 for none (``pools_standby_max``).
        self.standby_max = standby_max
        #: Seconds a standby blocks at most (``pools_standby_seconds``).
        self.standby_block = standby_block
        self.clock = RedisClock()
        #: Replicas each batch of scripts waits for (``WAIT``), and for how long at most.
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        self._scripts = self._script_caller()
        self._pool_of: dict[str, str] = {}
        fork.register(self)

    @property
    def client(self) -> redis.Redis:
        """The client of the Redis that holds pool state (for a cluster: the slot's owner)."""
        return self.endpoint.client

    def _script_caller(self) -> ScriptCaller:
        return ScriptCaller(
            self.endpoint.client,
            {name: script_source(name) for name in SCRIPTS},
            replicas=self.wait_replicas,
            replica_timeout_ms=ms(self.wait_timeout),
        )

    def after_fork(self) -> None:
        """In a forked child: the client's connection pool and the clock get new locks, and the
        pool is emptied (see :mod:`celery_pools.store.fork`)."""
        self.clock.after_fork()
        pool = getattr(self.client, "connection_pool", None)
        if pool is not None:
            fork.unlock_inherited(pool)

    @property
    def url(self) -> str:
        """Where the store's Redis is, without credentials."""
        return self.endpoint.location

    # -- calls ------------------------------------------------------------------------------

    def _call(
        self, name: str, values: Mapping[str, Any], pool: str = "", old_pool: str = ""
    ) -> ScriptCall:
        """One call of script ``name``: its keys for ``pool`` (and ``old_pool``), its arguments
        from ``values`` (argument name -> value)."""
        script = SCRIPTS[name]
        return (name, script_keys(self.keys, script.keys, pool, old_pool), script.arguments(values))

    def _pipeline(
        self, calls: Sequence[ScriptCall], what: str, block: Block | None = None
    ) -> list[Any]:
        """Run scripts in one round trip, in order; their replies, after observing the Redis
        clock each carries. After Redis lost its script cache, the calls that failed run again,
        in order; every script is safe to repeat and the reaper's next round makes up for one
        that ran out of its original order. ``what`` says what failed, if it fails. ``block``:
        first block on a LIST, in the same round trip (:meth:`ScriptCaller.run`)."""
        with self._backend(what):
            replies = self._scripts.run(calls, block=block)
        self.clock.observe(seconds(replies[-1][1]))
        return replies

    def _run(self, name: str, values: Mapping[str, Any], pool: str = "", old_pool: str = "") -> Any:
        """Run one script; its reply."""
        (reply,) = self._pipeline([self._call(name, values, pool, old_pool)], f"run {name}.lua")
        return reply

    @contextmanager
    def _backend(self, what: str) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as exc:
            if self.endpoint.rebind(exc):  # a cluster's slot moved: the next call goes there
                self._scripts = self._script_caller()
            raise PoolBackendError(f"Redis at {self.url} could not {what}: {exc}") from exc

    # -- which pool serves an instance -------------------------------------------------------

    def pool_of(self, instance: str) -> str | None:
        """The pool serving ``instance``, read from Redis (the cache is refreshed)."""
        with self._backend(f"read the pool of instance {instance!r}"):
            pool = self.client.hget(self.keys.instances, instance)
        self._pool_of[instance] = str(pool or "")
        return str(pool) if pool else None

    def _moved(self, instance: str, attempt: Callable[[str], T | Moved]) -> T:
        """Call ``attempt(believed pool)`` until the script agrees with the belief."""
        believed = self._pool_of.get(instance)
        if believed is None:
            believed = self.pool_of(instance) or ""
        for _ in range(_MAX_MOVED_ROUNDS):
            result = attempt(believed)
            if not isinstance(result, Moved):
                self._pool_of[instance] = believed
                return result
            believed = self._pool_of[instance] = result.pool
        raise PoolBackendError(
            f"the pool of instance {instance!r} kept changing during the operation; try again"
        )
