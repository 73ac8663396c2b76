"""The Redis store: every read and atomic write of pool state.

Each write is one Lua script (``celery_pools/lua``). Scripts that depend on which pool serves an
instance take the pool's keys from the caller together with the pool name the caller believes is
right; the script checks that belief atomically and answers ``MOVED`` when it is stale, so the
store keeps a small instance -> pool cache that is never trusted, only used as a first guess.
Redis errors are raised as :class:`~celery_pools.errors.PoolBackendError` with the cause chained.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, TypeVar

import redis

from .errors import PoolBackendError, PoolNotFoundError
from .keys import KeySpace, PoolKeys
from .metrics import BUCKET_BOUNDS_ARG, PoolMetrics, parse_stats
from .models import DEFAULT_TIMEOUT, Holder, Pool, PoolStatus, Waiter
from .ratelimit import InstanceRate, RateLimit
from .scripts import SCRIPT_NAMES, script_source
from .wire import ScriptCaller

__all__ = [
    "AcquireStatus",
    "Acquisition",
    "ClearResult",
    "DeleteResult",
    "Handoff",
    "Parking",
    "Reclaimed",
    "RedisPoolStore",
    "Release",
]

T = TypeVar("T")
logger = logging.getLogger(__name__)

# A MOVED answer can only repeat while associations change under us; a few rounds always settle.
_MAX_MOVED_ROUNDS = 5
# How long a producer remembers that an instance's tasks are published as usual (not parked).
_AS_USUAL_SECONDS = 1.0
#: How long a lapsed (or cleared, or deleted) hand-off's id is remembered, so that a copy of its
#: message arriving late never runs: longer than a broker keeps an unacknowledged message before
#: delivering it again (Redis transport's visibility timeout: 1 hour by default).
STALE_HANDOFF_SECONDS = 24 * 3600.0
#: How many tasks of one rate-limited instance may be parked in a hand-off pool's FIFO at a time.
#: A hand-off passes over those whose rate token is not due, so this keeps that pass short; the
#: instance's other tasks wait by countdown and park in their place (their first request) as
#: room comes.
RATE_PARKED_MAX = 10


class AcquireStatus(str, enum.Enum):
    """What an acquisition attempt found."""

    OK = "OK"
    STALE = "STALE"
    FULL = "FULL"
    RATE = "RATE"
    TIMEOUT = "TIMEOUT"
    CLEARED = "CLEARED"
    UNASSIGNED = "UNASSIGNED"


@dataclass(frozen=True)
class Reclaimed:
    """A slot taken back from a holder whose lease lapsed (its process died or hung)."""

    task_id: str
    task_name: str
    instance: str
    hostname: str
    pid: int | None


@dataclass(frozen=True)
class Acquisition:
    """The answer to one acquisition attempt. Times are seconds on the Redis server's clock."""

    status: AcquireStatus
    now: float
    pool: str = ""
    first: float = 0.0
    limit: int = 0
    in_use: int = 0
    timeout: float = 0.0
    uid: str = ""
    reentrant: bool = False
    retry_after: float = 0.0
    reason: str = ""
    reclaimed: tuple[Reclaimed, ...] = ()

    @property
    def waited(self) -> float:
        """Seconds since the task first asked for a slot."""
        return max(0.0, self.now - self.first)

    @property
    def deadline(self) -> float:
        """When the task gives up waiting."""
        return self.first + self.timeout


@dataclass(frozen=True)
class Handoff:
    """A slot handed to a parked task: publish ``entry``'s message with ``handoff_id``."""

    token: str
    handoff_id: str
    pool: str
    entry: dict[str, Any]


@dataclass(frozen=True)
class Parking:
    """The answer to :meth:`RedisPoolStore.park_at_publish`.

    ``parked`` is True when the task's message must not be published now: it waits in the pool's
    FIFO at ``position`` (0: the task was parked or held a slot already) until ``deadline``
    (Redis clock). The hand-offs, which may include this very task, must be published by the
    caller.
    """

    parked: bool
    position: int = 0
    pool: str = ""
    deadline: float | None = None
    #: Why it was not parked: "countdown", "limited" (paused), "rate" (rate-limited, and a slot
    #: free with nobody waiting, or RATE_PARKED_MAX of its instance's tasks parked already),
    #: "held" (its id holds a slot), "" (no pool).
    reason: str = ""
    handoffs: tuple[Handoff, ...] = ()
    reclaimed: tuple[Reclaimed, ...] = ()
    #: Not parked, but granted a slot at once: the wait state (``pool``, ``uid``, ``timeout``,
    #: ``first``, ``handoff``) to publish the message with, as usual, so its task claims the slot.
    granted: dict[str, Any] | None = None


@dataclass(frozen=True)
class Release:
    """The answer to a release: whether a slot was given back, how long it was held, and the
    hand-offs to publish."""

    released: bool
    pool: str
    held: float | None = None
    handoffs: tuple[Handoff, ...] = ()
    reclaimed: tuple[Reclaimed, ...] = ()


@dataclass(frozen=True)
class ClearResult:
    """What a clear did."""

    pool: str
    waiters_dropped: int
    holders_released: int


@dataclass(frozen=True)
class DeleteResult:
    """What a delete removed."""

    pool: str
    instances: int
    holders: int
    waiters: int


@dataclass
class _Clock:
    """The last known offset between the Redis server's clock and this process's clock."""

    offset: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, redis_now: float) -> None:
        with self.lock:
            self.offset = redis_now - time.time()

    def estimate(self) -> float:
        """The Redis clock now, estimated from the last observation (local time if none)."""
        return time.time() + (self.offset or 0.0)


# Every live store, so that a forked child can repair them all (one at-fork hook per process).
_STORES: weakref.WeakSet[RedisPoolStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._after_fork()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _unlock_inherited(pool: Any) -> None:
    """Give an inherited connection pool new locks, then empty it for this process.

    Repaired in place (not replaced) so that whatever the pool carries (client-side cache,
    Sentinel's service, maintenance settings, other clients sharing it) stays.
    """
    for name in ("_fork_lock", "_lock"):
        lock = getattr(pool, name, None)
        if lock is not None:
            reentrant = isinstance(lock, type(threading.RLock()))
            setattr(pool, name, threading.RLock() if reentrant else threading.Lock())
    pool.reset()


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class _Call(NamedTuple):
    """One script call for :meth:`RedisPoolStore._pipeline` (a :data:`~.wire.ScriptCall`)."""

    script: str
    keys: Sequence[str]
    args: Sequence[Any]


class RedisPoolStore:
    """Atomic operations on pool state in one Redis database.

    Thread-safe; share one store per process. ``client`` must decode responses (use
    :meth:`from_url`). Safe across fork: in a forked child the inherited connection pool is
    emptied under new locks before anything else runs (see :meth:`_after_fork`).
    """

    def __init__(self, client: redis.Redis, keys: KeySpace | None = None) -> None:
        self.client = client
        self.keys = keys or KeySpace()
        self._scripts = ScriptCaller(client, {name: script_source(name) for name in SCRIPT_NAMES})
        self._pool_of: dict[str, str] = {}
        # (instance, wait) -> until when (monotonic) its tasks are published as usual.
        self._as_usual: dict[tuple[str, str], float] = {}
        # Pools whose last answer at publication said that tasks wait: park with the entry at
        # once, rather than first asking for a slot without it.
        self._contended: set[str] = set()
        self.clock = _Clock()
        _STORES.add(self)

    def _after_fork(self) -> None:
        """In a forked child: the client's connection pool and the clock get new locks.

        A thread of the parent (a worker's lease renewal or hand-off reaper) may have been inside
        the client's connection pool when the process forked, and the child then inherits its
        lock held by a thread that no longer exists: redis-py's own after-fork check waits on that
        lock for ever (redis-py 8 resets the pool under it), and the child's first pooled task
        hung holding its slot. The pool is emptied, as redis-py's own check would (the parent
        still uses the inherited sockets), under locks of its own.
        """
        self.clock.lock = threading.Lock()
        pool = getattr(self.client, "connection_pool", None)
        if pool is None:
            return
        try:
            _unlock_inherited(pool)
        except Exception:  # never fail a fork; redis-py's own after-fork check still applies
            logger.warning("celery-pools: could not reset the Redis connection pool after fork")

    @classmethod
    def from_url(
        cls, url: str, *, key_prefix: str = "celery_pools", socket_timeout: float = 5.0
    ) -> RedisPoolStore:
        """A store on the Redis at ``url``, with keys under ``key_prefix``."""
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=socket_timeout,
            socket_connect_timeout=min(socket_timeout, 2.0),
            health_check_interval=30,
        )
        return cls(client, KeySpace(key_prefix))

    @property
    def url(self) -> str:
        """Where the store's Redis is, without credentials."""
        kwargs = self.client.connection_pool.connection_kwargs
        if "path" in kwargs:
            return f"unix://{kwargs['path']}"
        return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"

    # -- plumbing ---------------------------------------------------------------------------

    def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return self._scripts.call(name, keys, args)
        except redis.RedisError as exc:
            raise PoolBackendError(f"Redis at {self.url} could not run {name}.lua: {exc}") from exc

    @contextmanager
    def _backend(self, what: str) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as exc:
            raise PoolBackendError(f"Redis at {self.url} could not {what}: {exc}") from exc

    def _pipeline(self, calls: Sequence[_Call]) -> list[Any]:
        """Run scripts in one round trip, in order; their replies (see :class:`ScriptCaller`:
        after Redis lost its script cache, the calls that failed run again, in order; every
        script is safe to repeat and the reaper's next round makes up for one that ran out of
        its original order)."""
        return self._scripts.run(calls)

    def _moved(self, instance: str, attempt: Callable[[str], T | None]) -> T:
        """Call ``attempt(believed_pool)`` until the script agrees with the belief."""
        believed = self._pool_of.get(instance)
        if believed is None:
            believed = self.pool_of(instance) or ""
        for _ in range(_MAX_MOVED_ROUNDS):
            result = attempt(believed)
            if result is not None:
                self._pool_of[instance] = believed
                return result
            believed = self._pool_of.get(instance, "")
        raise PoolBackendError(
            f"the pool of instance {instance!r} kept changing during the operation; try again"
        )

    def _pool_keys(self, pool: str) -> PoolKeys:
        # An instance with no pool still needs well-formed keys in the same hash slot.
        return self.keys.pool(pool or "-")

    # -- pools ------------------------------------------------------------------------------

    def create_pool(self, pool: Pool) -> bool:
        """Create ``pool``; return False (and change nothing) if one of its name exists."""
        keys = self.keys.pool(pool.name)
        created = self._run(
            "create",
            [self.keys.pools, keys.config],
            [pool.name, pool.limit, _ms(pool.timeout), uuid.uuid4().hex, pool.wait],
        )
        return bool(created)

    def update_pool(
        self,
        name: str,
        *,
        limit: int | None = None,
        timeout: float | None = None,
        wait: str | None = None,
    ) -> bool:
        """Change a pool's limit, timeout and/or waiting mode; False if there is no such pool."""
        updated = self._run(
            "update",
            [self.keys.pool(name).config],
            [
                "" if limit is None else limit,
                "" if timeout is None else _ms(timeout),
                wait or "",
            ],
        )
        return bool(updated)

    def get_pool(self, name: str) -> Pool | None:
        """The pool's definition, or None."""
        with self._backend(f"read pool {name!r}"):
            row = self.client.hmget(self.keys.pool(name).config, ["limit", "timeout", "wait"])
        return _pool(name, row)

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
        pools = [_pool(name, row) for name, row in zip(names, rows, strict=True)]
        return [pool for pool in pools if pool is not None]

    def delete_pool(self, name: str) -> DeleteResult | None:
        """Delete a pool and its associations; None if there was no such pool."""
        keys = self.keys.pool(name)
        found, instances, holders, waiters = self._run(
            "delete",
            [
                self.keys.pools,
                self.keys.instances,
                self.keys.held,
                *keys.all(),
                self.keys.expired,
                self.keys.stale,
            ],
            [name, _ms(STALE_HANDOFF_SECONDS)],
        )
        self._pool_of.clear()
        if not found:
            return None
        return DeleteResult(pool=name, instances=instances, holders=holders, waiters=waiters)

    def clear_pool(self, name: str, *, release_held: bool = False) -> ClearResult | None:
        """Drop every waiter of a pool (and its holders' slots if asked); None if no such pool."""
        keys = self.keys.pool(name)
        found, waiters, released = self._run(
            "clear",
            [
                self.keys.held,
                keys.config,
                keys.holders,
                keys.holder,
                keys.waiters,
                keys.waiter,
                keys.stats,
                keys.queue,
                keys.parked,
                self.keys.expired,
                keys.handing,
                self.keys.stale,
                keys.rate_parked,
            ],
            [name, "1" if release_held else "0", _ms(STALE_HANDOFF_SECONDS)],
        )
        if not found:
            return None
        return ClearResult(pool=name, waiters_dropped=waiters, holders_released=released)

    # -- associations -----------------------------------------------------------------------

    def pool_of(self, instance: str) -> str | None:
        """The pool serving ``instance``, read from Redis (the cache is refreshed)."""
        with self._backend(f"read the pool of instance {instance!r}"):
            pool = self.client.hget(self.keys.instances, instance)
        self._pool_of[instance] = str(pool or "")
        return str(pool) if pool else None

    def associations(self) -> dict[str, str]:
        """Every instance -> pool association."""
        with self._backend("read associations"):
            return {str(k): str(v) for k, v in self.client.hgetall(self.keys.instances).items()}

    def assign(self, instance: str, pool: str, *, if_unassigned: bool = False) -> str | None:
        """Associate ``instance`` with ``pool``.

        Returns the pool the instance had before (None if none). With ``if_unassigned`` an
        instance that already has a pool keeps it. Raises :class:`PoolNotFoundError` if ``pool``
        does not exist.
        """
        new = self.keys.pool(pool)

        def attempt(believed: str) -> tuple[str, str] | None:
            reply = self._run(
                "assign",
                [
                    self.keys.instances,
                    new.config,
                    new.instances,
                    self._pool_keys(believed).instances,
                ],
                [instance, pool, believed, "1" if if_unassigned else "0"],
            )
            if reply[0] == "MOVED":
                self._pool_of[instance] = reply[1]
                return None
            return reply[0], believed

        status, before = self._moved(instance, attempt)
        if status == "NOPOOL":
            raise PoolNotFoundError(
                f"cannot assign instance {instance!r}: no pool named {pool!r} exists "
                "(create it first)",
                pool=pool,
            )
        if status == "OK":
            self._pool_of[instance] = pool
        return before or None

    def unassign(self, instance: str) -> str | None:
        """Remove the instance's association; return the pool it had (None if none)."""

        def attempt(believed: str) -> tuple[str, str] | None:
            reply = self._run(
                "unassign",
                [self.keys.instances, self._pool_keys(believed).instances],
                [instance, believed],
            )
            if reply[0] == "MOVED":
                self._pool_of[instance] = reply[1]
                return None
            return reply[0], reply[1] if len(reply) > 1 else ""

        status, old = self._moved(instance, attempt)
        self._pool_of[instance] = ""
        return old if status == "OK" else None

    # -- slots ------------------------------------------------------------------------------

    def acquire(
        self,
        instance: str,
        token: str,
        *,
        lease: float,
        first: float | None = None,
        waited_uid: str = "",
        info: dict[str, Any] | None = None,
        unassigned_timeout: float = DEFAULT_TIMEOUT,
        wait: str = "",
        handoff: str = "",
    ) -> Acquisition:
        """Take a slot of the pool serving ``instance`` (and a rate token) for ``token``.

        ``first`` is when the task first asked (Redis clock, seconds; None on its first attempt)
        and ``waited_uid`` the uid of the pool it last waited in; together they let a clear end
        the wait. ``unassigned_timeout`` bounds the wait of an instance with no pool that waits
        for its rate limit. ``wait`` overrides the pool's waiting mode ("countdown", "handoff");
        ``handoff`` is the hand-off id the task's message carries, to claim a slot handed to it.
        One script run, one round trip, unless the instance's pool changed.
        """
        payload = json.dumps(info or {}, separators=(",", ":"))
        first_arg = "" if first is None else _ms(first)
        instance_keys = [
            self.keys.instances,
            self.keys.held,
            self.keys.rates,
            self.keys.paused,
            self.keys.rate_state(instance),
        ]

        def attempt(believed: str) -> Acquisition | None:
            reply = self._run(
                "acquire",
                [*instance_keys, *self._pool_keys(believed).all(), self.keys.stale],
                [
                    instance,
                    believed,
                    token,
                    _ms(lease),
                    first_arg,
                    waited_uid,
                    payload,
                    BUCKET_BOUNDS_ARG,
                    _ms(unassigned_timeout),
                    wait,
                    handoff,
                    RATE_PARKED_MAX,
                ],
            )
            status, now = reply[0], reply[1] / 1000
            self.clock.observe(now)
            if status == "MOVED":
                self._pool_of[instance] = reply[2]
                return None
            return Acquisition(
                AcquireStatus(status),
                now,
                pool=believed,
                first=reply[2] / 1000,
                limit=int(reply[3]),
                in_use=int(reply[4]),
                timeout=reply[5] / 1000,
                uid=str(reply[6]),
                reentrant=bool(reply[7]),
                retry_after=reply[8] / 1000,
                reason=str(reply[9]),
                reclaimed=tuple(_reclaimed(json.loads(raw)) for raw in reply[10:]),
            )

        return self._moved(instance, attempt)

    def release(
        self,
        token: str,
        pool: str,
        *,
        handoff_lease: float = 10.0,
        parked_likely: bool = False,
    ) -> Release:
        """Give back ``token``'s slot of ``pool`` (and its waiter entry). Idempotent.

        When tasks are parked in the pool, free slots then go to the oldest of them: the returned
        :class:`Release` lists the hand-offs the caller must publish. With ``parked_likely`` (the
        task was itself handed its slot) the hand-off runs in the same round trip; otherwise a
        second round trip runs it only when tasks are parked, so the countdown path stays at one.
        """
        keys = self.keys.pool(pool)
        calls = [
            _Call(
                "release",
                [
                    self.keys.held,
                    keys.holders,
                    keys.holder,
                    keys.waiters,
                    keys.waiter,
                    keys.stats,
                    keys.queue,
                    keys.handing,
                ],
                [token, pool, BUCKET_BOUNDS_ARG],
            )
        ]
        if parked_likely:
            calls.append(self._handoff_call(pool, handoff_lease))
        with self._backend(f"release a slot of pool {pool!r}"):
            replies = self._pipeline(calls)
        released, now, info, parked = replies[0]
        held = None
        if info:
            since = json.loads(info).get("since")
            if isinstance(since, int | float):
                held = max(0.0, (now - since) / 1000)
        if parked_likely:
            handoffs, reclaimed = _handoff_reply(pool, replies[1])
        elif parked:
            handoffs, reclaimed = self.handoff(pool, lease=handoff_lease)
        else:
            handoffs, reclaimed = (), ()
        return Release(
            released=bool(released), pool=pool, held=held, handoffs=handoffs, reclaimed=reclaimed
        )

    def _handoff_call(self, pool: str, lease: float) -> _Call:
        keys = self.keys.pool(pool)
        return _Call(
            "handoff",
            [
                self.keys.held,
                keys.config,
                keys.holders,
                keys.holder,
                keys.waiters,
                keys.waiter,
                keys.stats,
                keys.queue,
                keys.parked,
                keys.handing,
                self.keys.expired,
                self.keys.paused,
                self.keys.sent_back,
                self.keys.stale,
                self.keys.rates,
                keys.rate_parked,
            ],
            [pool, _ms(lease), _ms(STALE_HANDOFF_SECONDS), self.keys.rate_state("")],
        )

    def handoff(
        self, pool: str, *, lease: float = 10.0
    ) -> tuple[tuple[Handoff, ...], tuple[Reclaimed, ...]]:
        """Hand free slots of ``pool`` to its oldest parked tasks, requeue lapsed hand-offs,
        expire parked tasks past their deadline; returns the hand-offs to publish."""
        with self._backend(f"hand off slots of pool {pool!r}"):
            (reply,) = self._pipeline([self._handoff_call(pool, lease)])
        return _handoff_reply(pool, reply)

    def _park_call(self, pool: str, args: Sequence[Any]) -> _Call:
        keys = self.keys.pool(pool)
        return _Call(
            "park",
            [
                keys.config,
                keys.waiters,
                keys.waiter,
                keys.queue,
                keys.parked,
                keys.holders,
                keys.handing,
                self.keys.instances,
                self.keys.rates,
                self.keys.paused,
                keys.holder,
                self.keys.held,
                keys.stats,
                keys.rate_parked,
            ],
            args,
        )

    def park(
        self, token: str, *, pool: str, first: float, entry: str, lease: float = 10.0
    ) -> tuple[int, tuple[Handoff, ...], tuple[Reclaimed, ...]]:
        """Park ``token`` in ``pool``'s hand-off FIFO with its serialized message ``entry``
        (JSON) and, in the same round trip, hand any free slot to the oldest parked task.

        Returns its position (1 = next, 0 if it was parked already, -1 if the pool is gone), the
        hand-offs to publish and the holders reclaimed.
        """
        with self._backend(f"park a task in pool {pool!r}"):
            (position, _, _), handed = self._pipeline(
                [
                    self._park_call(pool, [token, _ms(first), entry, "", pool, ""]),
                    self._handoff_call(pool, lease),
                ]
            )
        handoffs, reclaimed = _handoff_reply(pool, handed)
        return int(position), handoffs, reclaimed

    def may_park(self, instance: str, wait: str = "") -> bool:
        """False while a recent :meth:`park_at_publish` answer says that ``instance``'s tasks
        (waiting in mode ``wait``) are published as usual; no round trip."""
        return self._as_usual.get((instance, wait), 0.0) <= time.monotonic()

    def park_at_publish(
        self,
        instance: str,
        token: str,
        *,
        entry: Callable[[], str],
        wait: str = "",
        lease: float = 10.0,
        info: dict[str, Any] | None = None,
    ) -> Parking:
        """Park a task that is being published, instead of sending its message to the broker,
        when ``instance``'s pool waits by hand-off (``wait`` overrides the pool's mode) and the
        instance is not paused; in the same round trip, free slots go to the oldest parked tasks,
        which may be this one (a rate-limited instance's task gets one with a rate token).

        When nobody waits and a slot is free, the slot is granted at once and nothing is parked:
        the answer's ``granted`` is the wait state to publish the message with (as usual), and the
        task claims the slot when it starts; ``info`` (``task_name``, ``instance``) describes the
        holder meanwhile. Such a grant is asked for without the entry, which is made and sent
        only when the task must park; while a pool's tasks keep waiting, the entry goes with the
        first request. Either way one round trip, unless the pool filled up in between.

        ``entry`` makes the parked entry (JSON); it is called only when the task may park. A
        "publish as usual" answer is remembered for a second, so publishing to a countdown pool
        (or an instance with no pool) costs a round trip per instance per second, not per task.
        """
        if not self.may_park(instance, wait):
            return Parking(parked=False)
        if not self._pool_of.get(instance):
            self._pool_of.pop(instance, None)  # "no pool" is re-read, never trusted for long
        payload: str | None = None
        handoffs: list[Handoff] = []
        reclaimed: list[Reclaimed] = []
        holder = json.dumps(info or {"instance": instance}, separators=(",", ":"))
        lease_ms = _ms(lease)

        def park_call(pool: str, payload: str) -> _Call:
            # An empty payload asks for a slot at once, parking nothing (park.lua's -4 / -5).
            args = [token, "", payload, instance, pool, wait, lease_ms, holder, RATE_PARKED_MAX]
            return self._park_call(pool, args)

        def attempt(believed: str) -> Parking | None:
            nonlocal payload
            if not believed:
                return Parking(parked=False)
            if payload is None and believed not in self._contended:
                with self._backend(f"ask for a slot of pool {believed!r}"):
                    (reply,) = self._pipeline([park_call(believed, "")])
                self.clock.observe(reply[1] / 1000)
                if reply[0] == -4:  # granted
                    return Parking(
                        parked=False,
                        pool=believed,
                        granted={
                            "pool": believed,
                            "uid": reply[3],
                            "timeout": reply[4] / 1000,
                            "first": reply[1] / 1000,
                            "handoff": reply[2],
                        },
                    )
                if reply[0] != -5:
                    return self._parking_answer(instance, believed, reply)
                self._contended.add(believed)
            if payload is None:
                payload = entry()
            with self._backend(f"park a task in pool {believed!r}"):
                reply, handed = self._pipeline(
                    [park_call(believed, payload), self._handoff_call(believed, lease)]
                )
            self.clock.observe(reply[1] / 1000)
            more_handoffs, more_reclaimed = _handoff_reply(believed, handed)
            handoffs.extend(more_handoffs)
            reclaimed.extend(more_reclaimed)
            if reply[0] >= 1 and not any(h.token == token for h in more_handoffs):
                self._contended.add(believed)  # it waits: so will the next ones, for a while
            else:
                self._contended.discard(believed)
            return self._parking_answer(instance, believed, reply)

        parking = self._moved(instance, attempt)
        # Remember what holds for the instance (its pool's mode, its rate limit), not for a token.
        if (
            not parking.parked
            and parking.granted is None
            and parking.reason not in ("held", "rate")
            and not handoffs
            and not reclaimed
        ):
            self._as_usual[instance, wait] = time.monotonic() + _AS_USUAL_SECONDS
        return replace(parking, handoffs=tuple(handoffs), reclaimed=tuple(reclaimed))

    def withdraw_grant(
        self, token: str, pool: str, handoff_id: str, *, lease: float = 10.0
    ) -> tuple[bool, tuple[Handoff, ...], tuple[Reclaimed, ...]]:
        """Take back the slot granted to ``token`` at publication (hand-off id ``handoff_id``)
        when its message could not be published, unless the task claimed it already; in the same
        round trip the slot goes to the oldest parked task. Returns whether the grant was taken
        back, and the hand-offs to publish."""
        keys = self.keys.pool(pool)
        with self._backend(f"withdraw a slot granted in pool {pool!r}"):
            withdrawn, handed = self._pipeline(
                [
                    _Call(
                        "ungrant",
                        [self.keys.held, keys.holders, keys.holder, keys.stats],
                        [token, handoff_id, pool],
                    ),
                    self._handoff_call(pool, lease),
                ]
            )
        handoffs, reclaimed = _handoff_reply(pool, handed)
        return bool(withdrawn), handoffs, reclaimed

    def _parking_answer(self, instance: str, pool: str, reply: list[Any]) -> Parking | None:
        position, _, detail = reply[:3]
        if position == -2:
            self._pool_of[instance] = str(detail)
            return None
        if position == -3:
            return Parking(parked=False, pool=pool, reason=str(detail))
        deadline = float(detail) / 1000 if position > 0 else None
        return Parking(parked=True, position=int(position), pool=pool, deadline=deadline)

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
                    *(json.dumps(record, separators=(",", ":")) for record in records),
                )

    def handoff_pools(self) -> list[str]:
        """Names of the pools whose tasks wait by hand-off, or that have parked tasks (a task
        may override its pool's mode, and a pool's mode may change while tasks are parked)."""
        names = self.pool_names()
        with self._backend("list pools"):
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                keys = self.keys.pool(name)
                pipe.hget(keys.config, "wait")
                pipe.zcard(keys.queue)
                pipe.hlen(keys.handing)
            rows = pipe.execute()
        return [
            name
            for index, name in enumerate(names)
            if rows[3 * index] == "handoff" or rows[3 * index + 1] or rows[3 * index + 2]
        ]

    def held_pools(self, tokens: Sequence[str]) -> dict[str, str]:
        """Which of ``tokens`` hold a slot, and of which pool."""
        if not tokens:
            return {}
        with self._backend("read held slots"):
            pools = self.client.hmget(self.keys.held, list(tokens))
        return {token: str(pool) for token, pool in zip(tokens, pools, strict=True) if pool}

    def release_token(self, token: str, *, handoff_lease: float = 10.0) -> Release | None:
        """Release whatever slot ``token`` holds, wherever it is; None if it holds none."""
        pool = self.held_pools([token]).get(token)
        return self.release(token, pool, handoff_lease=handoff_lease) if pool else None

    def renew(self, held: dict[str, str], *, lease: float) -> int:
        """Extend the leases of ``held`` (token -> pool); return how many were still held."""
        if not held:
            return 0
        tokens = list(held)
        keys = [self.keys.pool(held[token]).holders for token in tokens]
        return int(self._run("renew", keys, [_ms(lease), *tokens]))

    # -- reading ----------------------------------------------------------------------------

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
                pipe.smembers(keys.instances)
                pipe.zrange(keys.holders, 0, -1, withscores=True)
                pipe.hgetall(keys.holder)
                pipe.zrange(keys.waiters, 0, -1, withscores=True)
                pipe.hgetall(keys.waiter)
            reply = pipe.execute()
        seconds, micros = reply[0]
        now = seconds + micros / 1e6
        self.clock.observe(now)
        result = []
        for index, name in enumerate(names):
            rows = reply[1 + 6 * index : 7 + 6 * index]
            if rows[0]:
                result.append(_status(name, now, rows))
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

    def reset_metrics(self, name: str) -> None:
        """Forget a pool's counters and histograms (they start again from zero)."""
        with self._backend(f"reset the metrics of pool {name!r}"):
            self.client.delete(self.keys.pool(name).stats)

    # -- rate limits ------------------------------------------------------------------------

    def set_rate_limit(self, instance: str, rate: RateLimit) -> None:
        """Give ``instance`` a rate limit (replacing any); obeyed by the next acquisition."""
        with self._backend(f"set the rate limit of instance {instance!r}"):
            self.client.hset(self.keys.rates, instance, rate.encode())

    def remove_rate_limit(self, instance: str) -> bool:
        """Remove the instance's rate limit; return whether it had one."""
        with self._backend(f"remove the rate limit of instance {instance!r}"):
            pipe = self.client.pipeline(transaction=True)
            pipe.hdel(self.keys.rates, instance)
            pipe.delete(self.keys.rate_state(instance))
            removed, _ = pipe.execute()
        return bool(removed)

    def rate_limits(self) -> dict[str, RateLimit]:
        """Every instance's rate limit."""
        with self._backend("read rate limits"):
            raw = self.client.hgetall(self.keys.rates)
        return {str(k): RateLimit.decode(str(v)) for k, v in raw.items()}

    def pause(self, instance: str, seconds: float) -> float:
        """Pause ``instance`` for every worker for ``seconds`` (0 lifts the pause).

        Returns when the pause ends (Unix seconds, Redis clock; 0 when not paused).
        """
        until = self._run("pause", [self.keys.paused], [instance, _ms(seconds)])
        return int(until) / 1000

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
            for instance in instances:
                pipe.get(self.keys.rate_state(instance))
            reply = pipe.execute()
        seconds, micros = reply[0]
        now = (seconds + micros / 1e6) * 1000
        specs, paused, tats = reply[1], reply[2], reply[3:]
        return [
            _instance_rate(instance, now, spec, pause, tat)
            for instance, spec, pause, tat in zip(instances, specs, paused, tats, strict=True)
        ]

    def ping(self) -> float:
        """The Redis server's clock (Unix seconds); raises PoolBackendError if unreachable."""
        with self._backend("answer"):
            seconds, micros = self.client.time()
        now = float(seconds) + micros / 1e6
        self.clock.observe(now)
        return now

    def maxmemory_policy(self) -> str | None:
        """The server's ``maxmemory-policy``, or None when CONFIG is not allowed."""
        try:
            return str(self.client.config_get("maxmemory-policy").get("maxmemory-policy"))
        except redis.ResponseError:
            return None
        except redis.RedisError as exc:
            raise PoolBackendError(f"Redis at {self.url} could not answer: {exc}") from exc


def _reclaimed(entry: dict[str, Any]) -> Reclaimed:
    info = json.loads(entry["info"]) if entry.get("info") else {}
    return Reclaimed(
        task_id=entry["token"],
        task_name=info.get("task_name", ""),
        instance=info.get("instance", ""),
        hostname=info.get("hostname", ""),
        pid=info.get("pid"),
    )


def _pool(name: str, row: list[Any]) -> Pool | None:
    limit, timeout, wait = row
    if limit is None:
        return None
    return Pool(name=name, limit=int(limit), timeout=int(timeout) / 1000, wait=wait or "countdown")


def _handoff_reply(
    pool: str, reply: list[Any]
) -> tuple[tuple[Handoff, ...], tuple[Reclaimed, ...]]:
    handed, lapsed = reply
    handoffs = tuple(
        Handoff(
            token=handed[i], handoff_id=handed[i + 1], pool=pool, entry=json.loads(handed[i + 2])
        )
        for i in range(0, len(handed), 3)
    )
    reclaimed = tuple(
        _reclaimed({"token": lapsed[i], "info": lapsed[i + 1]}) for i in range(0, len(lapsed), 2)
    )
    return handoffs, reclaimed


def _instance_rate(
    instance: str, now: float, spec: str | None, paused: str | None, tat: str | None
) -> InstanceRate:
    """What an instance's rate limit allows now (all times in ms on the Redis clock)."""
    paused_for = max(0.0, (float(paused) - now) / 1000) if paused else 0.0
    if not spec:
        return InstanceRate(instance=instance, paused_for=paused_for)
    rate = RateLimit.decode(spec)
    interval = rate.interval * 1000
    ahead = max(0.0, float(tat or 0) - now)  # how far the schedule runs ahead of now
    tolerance = interval * rate.burst
    available = max(0, int((tolerance - ahead) // interval) + 1) if ahead <= tolerance else 0
    return InstanceRate(
        instance=instance,
        rate=str(rate),
        available=available,
        next_in=max(0.0, (ahead - tolerance) / 1000),
        paused_for=paused_for,
    )


def _status(name: str, now: float, rows: list[Any]) -> PoolStatus:
    """Build a status from the six replies read for one pool (see ``statuses``)."""
    config, instances, holders, holder_info, waiters, waiter_info = rows
    limit = int(config["limit"])
    live_holders = []
    for token, expiry in holders:
        if expiry / 1000 <= now:
            continue  # lapsed: reclaimed at the next acquisition
        info = json.loads(holder_info.get(token) or "{}")
        live_holders.append(
            Holder(
                task_id=token,
                task_name=info.get("task_name", ""),
                instance=info.get("instance", ""),
                hostname=info.get("hostname", ""),
                pid=info.get("pid"),
                since=info.get("since", 0) / 1000,
                lease_expires=expiry / 1000,
            )
        )
    live_holders.sort(key=lambda h: h.since)
    live_waiters = []
    for token, deadline in waiters:
        if deadline / 1000 <= now:
            continue
        info = json.loads(waiter_info.get(token) or "{}")
        live_waiters.append(
            Waiter(
                task_id=token,
                task_name=info.get("task_name", ""),
                instance=info.get("instance", ""),
                since=info.get("since", 0) / 1000,
                deadline=deadline / 1000,
            )
        )
    live_waiters.sort(key=lambda w: w.since)
    return PoolStatus(
        name=name,
        limit=limit,
        timeout=int(config["timeout"]) / 1000,
        in_use=len(live_holders),
        free=max(0, limit - len(live_holders)),
        waiting=len(live_waiters),
        instances=sorted(instances),
        holders=live_holders,
        waiters=live_waiters,
        oldest_wait=(now - live_waiters[0].since) if live_waiters else None,
        now=now,
    )
