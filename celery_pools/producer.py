"""Parking at publication: a task bound for a full hand-off pool never enters the broker.

When ``PooledTask.apply_async`` sends a task whose connector instance is served by a pool that
waits by hand-off, and the pool is full or tasks wait in it, the task's message is parked in the
pool's FIFO in Redis instead of being published. When a slot is free and nobody waits, the slot
is granted at once (one round trip, nothing parked) and the message published as usual with the
grant in its header. So the broker only ever carries messages that hold a slot: a burst of
thousands of tasks costs one broker message each, workers never take a message just to park it,
and a freed slot's hand-off never queues behind them. Everything a task is published with (id, args,
kwargs, callbacks, errbacks, chain, chord, group, headers, routing, parent and root ids) is kept in
the parked entry and used when its message is finally published.

A task is published as usual (and waits, if it must, when a worker runs it) when it is eager,
has a countdown or ETA, waits by countdown, its instance has no pool or is paused (or has a rate
limit while a slot is free and nobody waits), its message cannot be serialized, or the pools'
Redis cannot be reached.

What a producer learns is remembered per store by its :class:`Publisher`: an instance whose tasks
are published as usual (a countdown pool, no pool) is not asked about again for a second; a grant
that leaves slots free lets the next calls to that pool go as usual, for at most 10 seconds: half
as many as it saw free, not counting the calls this producer published as usual that have not
reached a worker yet. A call on its way holds no slot, so a grant's count of free slots does not
see it; the grant also answers how many calls published as usual have reached a worker so far,
and the calls that count grew by since the last grant have arrived (another producer's calls
count too, which only makes the estimate less cautious; a call older than half a second is taken
to have arrived). So a burst into an empty pool from one producer sends at most limit - 1 calls as
usual, not a budget per grant, while steady traffic into an ample pool, whose calls arrive
between grants, keeps the whole budget; and a pool whose tasks keep waiting is asked with the
parked entry at once.

The slots those calls will take are kept for them while they are on their way: each later grant
or park this producer asks for passes how many may still be on their way (and the pool's count
of arrived calls when it last read it, so that those that arrived meanwhile are not counted),
and Redis keeps that many free slots, which no grant and no hand-off, a worker's included, gives
out until they arrive or their time is up (lib/reserve.lua). Each such call carries when it was
published (:class:`PublishedAsUsual`: the Redis clock reckoned from the pool's last answer, so
early by that answer's trip at most, a millisecond or so); its worker's acquire gives it a free
slot while tasks are parked or stand by only when it was published before all of them, so none
of them passes a task that asked first, and a burst from one producer costs one broker message
per task. A call that finds the pool full anyway costs one more message and parks in its
worker at its publication's place (its deadline from its arrival): it arrived after its slot
stopped being kept (``_IN_FLIGHT_SECONDS``), another producer's reservation replaced this one's
(the pool keeps one), or its pool's workers run an earlier version, whose acquire does not count
the arrivals.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from kombu.exceptions import EncodeError

from . import signals
from .context import get_extension
from .errors import PoolBackendError, PoolConfigError
from .models import check_wait
from .store import Grant, Parking, RedisPoolStore, Reserve

__all__ = ["PublishedAsUsual", "Publisher", "park_at_publish", "publisher_for", "withdraw_grant"]

logger = logging.getLogger(__name__)

#: ``apply_async`` options that only mean something in this process, never stored.
_LOCAL_OPTIONS = frozenset(
    {"producer", "connection", "publisher", "router", "result_cls", "add_to_parent", "task_type"}
)
# How long a producer remembers that an instance's tasks are published as usual (not parked).
_AS_USUAL_SECONDS = 1.0
# How long a producer trusts a grant's count of free slots (see Publisher.park): the calls it
# lets go as usual are counted (half the slots the grant saw free), so the window only needs to
# outlast the gaps between calls of a pool with little traffic.
_AMPLE_SECONDS = 10.0
# How long a call published as usual is at most taken to be on its way to a worker (not yet
# holding a slot, so unseen by a grant's count of free slots) when no grant's count of arrived
# calls has shown it arrive; also how long its slot is kept for it.
_IN_FLIGHT_SECONDS = 0.5


@dataclass(frozen=True)
class PublishedAsUsual:
    """A call published as usual while its pool was seen ample: its message carries when it was
    published (``published``, the Redis clock as its producer reckons it, in the wait-state
    header), so that its worker gives it a free slot ahead of tasks parked after that."""

    published: float

    def header(self) -> dict[str, Any]:
        """The wait-state header value of its message."""
        return {"published": self.published}


class Publisher:
    """Decides, for each call being published to ``store``'s pools, whether it is published as
    usual, granted a slot at once, or parked, and remembers what the answers said. Thread-safe."""

    def __init__(self, store: RedisPoolStore) -> None:
        self.store = store
        # (instance, wait) -> until when (monotonic) its tasks are published as usual.
        self._as_usual: dict[tuple[str, str], float] = {}
        # Pools whose last answer at publication said that tasks wait: park with the entry at
        # once, rather than first asking for a slot without it.
        self._contended: set[str] = set()
        # Pool -> [calls still to publish as usual, until when (monotonic)]: a grant found
        # slots free beyond its own and nobody waiting.
        self._ample: dict[str, list[float]] = {}
        # Pool -> when (monotonic) each call published as usual and not known to have arrived
        # was published, oldest first; and the pool's count of calls published as usual that
        # reached a worker, at the last grant (see Publisher.park).
        self._in_flight: dict[str, collections.deque[float]] = {}
        self._arrived: dict[str, int] = {}
        # Pool -> the Redis clock at its last answer, and this process's monotonic clock then.
        self._clock: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def may_park(self, instance: str, wait: str = "") -> bool:
        """False while a recent answer says that ``instance``'s tasks (waiting in mode ``wait``)
        are published as usual; no round trip."""
        return self._as_usual.get((instance, wait), 0.0) <= time.monotonic()

    def park(
        self,
        instance: str,
        token: str,
        *,
        entry: Callable[[], str],
        wait: str = "",
        info: dict[str, Any] | None = None,
    ) -> Parking:
        """Park a call being published (see
        :meth:`~celery_pools.store.RedisPoolStore.park_at_publish`), granting it a free slot
        nobody waits for instead, in one round trip unless the pool filled up in between.

        A grant is asked for without the parked entry, which ``entry`` makes only when the task
        must park; while a pool's tasks keep waiting, the entry goes with the first request.
        """
        if not self.may_park(instance, wait):
            return Parking(parked=False)
        parking: Parking | None = None
        believed = self.store.believed_pool(instance)
        if believed is None:
            believed = self.store.pool_of(instance) or ""
        if self._spend_ample(believed):
            # Published as usual: the worker's acquire takes a free slot, one script as in a
            # countdown pool, and never ahead of a task parked before it was published
            # (acquire.lua gives a hand-off pool's slot to a newcomer while tasks are parked or
            # stand by only when it was published before all of them: see reckon).
            return Parking(parked=False, pool=believed, reason="ample")
        # The slots the calls published as usual still on their way will take are not granted
        # or handed to later calls meanwhile (lib/reserve.lua).
        reserve = self._reserve(believed)
        if believed not in self._contended:
            parking = self.store.park_at_publish(
                instance, token, entry=None, wait=wait, info=info, reserve=reserve
            )
            self._answered(parking)
            if parking.reason == "contended":
                self._contended.add(parking.pool)
                parking = None
        if parking is not None and parking.granted is not None and parking.free > 1:
            # Half the slots still free may go to calls published as usual, for a while: the
            # slots free less those the calls it published as usual on their way will take.
            with self._lock:
                budget = (parking.free - self._on_their_way(parking.pool, parking.arrived)) // 2
                if budget >= 1:
                    self._ample[parking.pool] = [budget, time.monotonic() + _AMPLE_SECONDS]
        if parking is None:
            parking = self.store.park_at_publish(
                instance, token, entry=entry(), wait=wait, info=info, reserve=reserve
            )
            self._answered(parking)
            if parking.position >= 1 and all(h.token != token for h in parking.handoffs):
                self._contended.add(parking.pool)  # it waits: so will the next ones, for a while
            else:
                self._contended.discard(parking.pool)
        # Remember what holds for the instance (its pool's mode, its rate limit), not for a token.
        if (
            not parking.parked
            and parking.granted is None
            and parking.reason not in ("held", "rate")
            and not parking.handoffs
            and not parking.reclaimed
        ):
            self._as_usual[instance, wait] = time.monotonic() + _AS_USUAL_SECONDS
        return parking

    def reckon(self, pool: str) -> float | None:
        """Now on the Redis clock, as reckoned from ``pool``'s last answer to this producer (None
        if it never answered): the time a call published as usual carries, by which a worker
        knows it from tasks that parked after it was published."""
        with self._lock:
            answered = self._clock.get(pool)
        if answered is None:
            return None
        redis_now, at = answered
        return redis_now + (time.monotonic() - at)

    def _answered(self, parking: Parking) -> None:
        if parking.pool and parking.now:
            with self._lock:
                self._clock[parking.pool] = (parking.now, time.monotonic())

    def _reserve(self, pool: str) -> Reserve:
        """The slots to keep for the calls published as usual to ``pool`` that may still be on
        their way: how many, the pool's count of such calls that arrived when last read, and
        until the youngest of them is taken to have arrived (see lib/reserve.lua)."""
        # Read, not pruned: _on_their_way pops the arrived calls oldest first, then the aged.
        with self._lock:
            now = time.monotonic()
            young = [at for at in self._in_flight.get(pool, ()) if at >= now - _IN_FLIGHT_SECONDS]
            if not young:
                return (0, "", 0.0)
            arrived = self._arrived.get(pool)
            left = young[-1] + _IN_FLIGHT_SECONDS - now
            return (len(young), "" if arrived is None else arrived, left)

    def _spend_ample(self, pool: str) -> bool:
        """Whether a call to ``pool`` may be published as usual, without a grant: a recent grant
        left slots free (spends one of them)."""
        with self._lock:
            ample = self._ample.get(pool)
            if not ample or ample[0] < 1 or ample[1] <= time.monotonic():
                self._ample.pop(pool, None)
                return False
            ample[0] -= 1
            self._in_flight.setdefault(pool, collections.deque()).append(time.monotonic())
            return True

    def _on_their_way(self, pool: str, arrived: int) -> int:
        """How many calls this producer published as usual to ``pool`` may not have reached a
        worker yet, given the pool's count of calls published as usual that arrived
        (``arrived``) at a grant now: as many fewer as that count grew since the last grant,
        none older than ``_IN_FLIGHT_SECONDS``. The caller holds the lock."""
        before = self._arrived.get(pool)
        self._arrived[pool] = arrived
        sent = self._in_flight.get(pool)
        if sent is None:
            return 0
        came = max(0, arrived - before) if before is not None else 0
        for _ in range(min(came, len(sent))):
            sent.popleft()
        horizon = time.monotonic() - _IN_FLIGHT_SECONDS
        while sent and sent[0] < horizon:
            sent.popleft()
        if not sent:
            del self._in_flight[pool]
        return len(sent)


_publishers: weakref.WeakKeyDictionary[RedisPoolStore, Publisher] = weakref.WeakKeyDictionary()
_publishers_lock = threading.Lock()


def publisher_for(store: RedisPoolStore) -> Publisher:
    """The one :class:`Publisher` of ``store`` in this process."""
    publisher = _publishers.get(store)
    if publisher is None:
        with _publishers_lock:
            publisher = _publishers.get(store)
            if publisher is None:
                publisher = _publishers[store] = Publisher(store)
    return publisher


def park_at_publish(
    task: Any,
    args: Any,
    kwargs: Any,
    task_id: str,
    options: dict[str, Any],
) -> Any | Grant | PublishedAsUsual | None:
    """Park ``task``'s call instead of publishing it, when its pool waits by hand-off.

    ``options`` are ``apply_async``'s (``link``, ``link_error``, ``shadow``, ``producer`` ... among
    them). Returns the task's ``AsyncResult`` when it was parked (or handed a slot and published);
    a :class:`~celery_pools.store.Grant` when a slot is free and nobody waits: the caller
    publishes it as usual, with the grant in its headers; a :class:`PublishedAsUsual` when the
    pool is seen ample: the caller publishes it as usual with that header; None when the caller
    must publish it as usual, with the same ``task_id``: if Redis parked it but its answer was
    lost, the copy published as usual is then recognised and never runs twice.
    """
    app = task._get_app()
    if app.conf.task_always_eager:
        return None
    if options.get("countdown") is not None or options.get("eta") is not None:
        return None  # a scheduled task waits for its time in the broker first
    wait = type(task).pool_wait
    if wait is not None:
        wait = check_wait(wait, f"pool_wait of task {task.name}")
        if wait == "countdown":
            return None
    try:
        instance = task.resolve_connector_instance(tuple(args or ()), dict(kwargs or {}))
    except (PoolConfigError, LookupError, TypeError, ValueError):
        return None  # the worker reports it through Celery's failure path
    try:
        ext = get_extension(app)
        dispatcher = ext.dispatcher
    except PoolConfigError as exc:  # no (valid) pools settings in this producer
        logger.debug("celery-pools: publishing %s[%s] as usual: %s", task.name, task_id, exc)
        return None
    publisher = publisher_for(dispatcher.store)
    if not publisher.may_park(instance, wait or ""):
        return None  # known to publish as usual: skip the preparation apply_async does anyway
    _check(task, args, kwargs)  # what apply_async refuses is refused before a slot is taken
    prepared: list[Any] = []
    info = {"task_name": task.name, "instance": instance}

    def entry() -> str:
        prepared[:] = _prepare(task, app, args, kwargs, options)
        call_args, call_kwargs, call_options = prepared
        stored = {key: value for key, value in call_options.items() if key not in _LOCAL_OPTIONS}
        return dispatcher.encode(
            task.name,
            call_args,
            call_kwargs,
            {**stored, "task_id": task_id},
            info=info,
        )

    try:
        parking = publisher.park(instance, task_id, entry=entry, wait=wait or "", info=info)
    except (PoolBackendError, EncodeError) as exc:  # Redis unreachable, unserializable call
        logger.debug("celery-pools: publishing %s[%s] as usual: %s", task.name, task_id, exc)
        return None
    producer = options.get("producer")
    if parking.granted is not None:
        dispatcher.settle(parking.effects)
        signals.slot_handoff.send(
            sender=app,
            pool=parking.pool,
            instance=instance,
            task_id=task_id,
            handoff_id=parking.granted.handoff,
        )
        return parking.granted
    if not parking.parked:
        dispatcher.settle(parking.effects, producer)
        published = publisher.reckon(parking.pool) if parking.reason == "ample" else None
        return None if published is None else PublishedAsUsual(published)
    called = prepared[2] if prepared else options
    ignore_result = bool(called.get("ignore_result", task.ignore_result))
    with app.producer_or_acquire(producer) as connected:
        if not ignore_result:
            # As send_task does: be ready for the result before any worker can store it.
            app.backend.on_task_call(connected, task_id)
        dispatcher.settle(parking.effects, connected)
    if parking.position > 0 and all(h.token != task_id for h in parking.handoffs):
        signals.slot_waiting.send(
            sender=task,
            pool=parking.pool,
            instance=instance,
            task_id=task_id,
            waited=0.0,
            countdown=None,
            deadline=parking.deadline,
        )
    result = task.AsyncResult(task_id)
    result.ignored = ignore_result
    if options.get("add_to_parent", True):
        parent = app.current_worker_task
        if parent:
            parent.add_trail(result)
    return result


def withdraw_grant(task: Any, task_id: str, grant: Grant) -> None:
    """Give back the slot granted to a call whose message could not be published, at once
    rather than when the grant lapses (unless its task claimed it already). Best effort: it never
    raises, so the caller's own error is the one that reaches the application."""
    dispatcher = get_extension(task._get_app()).dispatcher
    try:
        _, effects = dispatcher.store.withdraw_grant(task_id, grant.pool, grant.handoff)
    except PoolBackendError as exc:
        logger.warning(
            "celery-pools: could not give back the slot granted to %s[%s] (%s); it comes back "
            "when its hand-off lease lapses",
            task.name,
            task_id,
            exc,
        )
        return
    dispatcher.settle(effects)


def _check(task: Any, args: Any, kwargs: Any) -> None:
    """What ``Task.apply_async`` refuses before sending: a soft time limit above the hard one,
    arguments that do not fit the task's signature."""
    if task.soft_time_limit and task.time_limit and task.soft_time_limit > task.time_limit:
        raise ValueError("soft_time_limit must be less than or equal to time_limit")
    if task.typing:
        check_arguments: Callable[..., Any] | None = getattr(task, "__header__", None)
        if check_arguments is not None:
            check_arguments(*(args or ()), **(kwargs or {}))


def _prepare(
    task: Any, app: Any, args: Any, kwargs: Any, options: dict[str, Any]
) -> tuple[Any, Any, dict[str, Any]]:
    """What ``Task.apply_async`` and ``send_task`` do to a call before it is sent (after
    :func:`_check`), done at parking time so that the message published later is the one that
    would have been sent now."""
    options = dict(task._get_exec_options(), **options)
    options["shadow"] = options.get("shadow") or task.shadow_name(args, kwargs, options)
    dump_pydantic = getattr(task, "_dump_pydantic_arguments", None)
    if dump_pydantic is not None and options.get("serializer") != "pickle":
        args, kwargs = dump_pydantic(args, kwargs)
    options.setdefault("ignore_result", task.ignore_result)
    # Where the call comes from, and when it expires, as of now rather than as of publication.
    parent = app.current_worker_task
    if parent:
        if not options.get("root_id"):
            options["root_id"] = parent.request.root_id or parent.request.id
        if not options.get("parent_id"):
            options["parent_id"] = parent.request.id
        if app.conf.task_inherit_parent_priority:
            options.setdefault("priority", parent.request.delivery_info.get("priority"))
    expires = options.get("expires")
    if isinstance(expires, int | float) and not isinstance(expires, bool):
        options["expires"] = (app.now() + timedelta(seconds=expires)).isoformat()
    if not options.get("reply_to"):
        options["reply_to"] = app.thread_oid
    return args, kwargs, options
