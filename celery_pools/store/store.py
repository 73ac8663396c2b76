"""``RedisPoolStore``: every atomic write of pool state, one Lua script each."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from typing import Any

from celery_pools.errors import PoolNotFoundError, SlotInUseError, SlotNotFoundError
from celery_pools.metrics import BUCKET_BOUNDS_ARG
from celery_pools.models import DEFAULT_TIMEOUT, Pool

from . import replies
from .base import compact_json, ms
from .connect import connect
from .keys import KeySpace
from .limits import StoreLimits
from .replies import Moved
from .results import (
    Abandonment,
    Acquisition,
    ClearResult,
    DeleteResult,
    Effects,
    Freed,
    Parking,
    Release,
    Reserve,
    StandbyBlock,
)
from .wire import ScriptCall

__all__ = ["RATE_PARKED_MAX", "STALE_HANDOFF_SECONDS", "RedisPoolStore"]

#: How long an ended (lapsed, cleared, deleted) hand-off's id is remembered, so that a copy of its
#: message arriving late never runs: longer than a broker keeps an unacknowledged message before
#: delivering it again (Redis transport's visibility timeout: 1 hour by default).
STALE_HANDOFF_SECONDS = 24 * 3600.0
#: How many tasks of one rate-limited instance may be parked in a hand-off pool's FIFO at a time.
#: A hand-off passes over those whose rate token is not due, so this keeps that pass short; the
#: instance's other tasks wait by countdown and park in their place (their first request) as
#: room comes.
RATE_PARKED_MAX = 10


class RedisPoolStore(StoreLimits):
    """Atomic operations on pool state in one Redis database.

    Thread-safe; share one store per process. ``client`` must decode responses (use
    :meth:`from_url`). Safe across fork: in a forked child the inherited connection pool is
    emptied under new locks before anything else runs. Operations that may hand a slot on answer
    with the :class:`~celery_pools.store.results.Effects` their caller must settle.
    """

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = "celery_pools",
        socket_timeout: float = 5.0,
        transport_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> RedisPoolStore:
        """A store on the Redis at ``url`` (a server, a Sentinel master or a Cluster: see
        :mod:`~celery_pools.store.connect`, which ``transport_options`` are for), with keys
        under ``key_prefix``; ``options`` are the store's own (``handoff_lease``,
        ``standby_max``, ``standby_block``, ``wait_replicas``, ``wait_timeout``: see
        :class:`~celery_pools.store.base.StoreBase`)."""
        keys = KeySpace(key_prefix)
        endpoint = connect(
            url, route_key=keys.pools, socket_timeout=socket_timeout, options=transport_options
        )
        return cls(endpoint.client, keys, endpoint=endpoint, **options)

    # -- pools ------------------------------------------------------------------------------

    def create_pool(self, pool: Pool) -> bool:
        """Create ``pool``; return False (and change nothing) if one of its name exists."""
        values = {
            "pool": pool.name,
            "limit": pool.limit,
            "timeout_ms": ms(pool.timeout),
            "uid": uuid.uuid4().hex,
            "wait": pool.wait,
        }
        return bool(self._run("create", values, pool.name)[0] == "CREATED")

    def update_pool(
        self, name: str, limit: int | None, timeout: float | None, wait: str | None
    ) -> bool:
        """Change a pool's limit, timeout and/or waiting mode (None keeps it); False if there is
        no such pool."""
        values = {
            "limit": "" if limit is None else limit,
            "timeout_ms": "" if timeout is None else ms(timeout),
            "wait": wait or "",
        }
        return bool(self._run("update", values, name)[0] == "UPDATED")

    def delete_pool(self, name: str) -> DeleteResult | None:
        """Delete a pool and its associations; None if there was no such pool."""
        reply = self._run("delete", {"pool": name, "stale_ms": ms(STALE_HANDOFF_SECONDS)}, name)
        self._pool_of.clear()
        if reply[0] != "DELETED":
            return None
        return DeleteResult(pool=name, instances=reply[2], holders=reply[3], waiters=reply[4])

    def clear_pool(self, name: str, *, release_held: bool = False) -> ClearResult | None:
        """Drop every waiter of a pool (and its holders' slots if asked); None if no such pool."""
        values = {
            "pool": name,
            "release_held": "1" if release_held else "0",
            "stale_ms": ms(STALE_HANDOFF_SECONDS),
        }
        reply = self._run("clear", values, name)
        if reply[0] != "CLEARED":
            return None
        return ClearResult(pool=name, waiters_dropped=reply[2], holders_released=reply[3])

    def reset_metrics(self, name: str) -> None:
        """Forget a pool's counters and histograms (they start again from zero)."""
        with self._backend(f"reset the metrics of pool {name!r}"):
            self.client.delete(self.keys.pool(name).stats)

    # -- associations -----------------------------------------------------------------------

    def assign(self, instance: str, pool: str, *, if_unassigned: bool = False) -> str | None:
        """Associate ``instance`` with ``pool``; return the pool it had before (None if none).
        With ``if_unassigned`` an instance that already has a pool keeps it. Raises
        :class:`PoolNotFoundError` if ``pool`` does not exist."""

        def attempt(believed: str) -> tuple[str, str] | Moved:
            values = {
                "instance": instance,
                "pool": pool,
                "believed": believed,
                "if_unassigned": "1" if if_unassigned else "0",
            }
            reply = self._run("assign", values, pool, believed)
            return Moved(reply[2]) if reply[0] == "MOVED" else (reply[0], believed)

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

        def attempt(believed: str) -> tuple[str, str] | Moved:
            values = {"instance": instance, "believed": believed}
            reply = self._run("unassign", values, old_pool=believed)
            if reply[0] == "MOVED":
                return Moved(reply[2])
            return reply[0], reply[2] if reply[0] == "OK" else ""

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
        standby: float | None = None,
        published: float | None = None,
        block: StandbyBlock | None = None,
    ) -> Acquisition:
        """Take a slot of the pool serving ``instance`` (and a rate token) for ``token``, held
        for ``lease`` seconds unless renewed.

        ``first`` is when the task first asked (Redis clock, seconds; None on its first attempt)
        and ``waited_uid`` the uid of the pool it last waited in; together they let a clear end
        the wait. ``unassigned_timeout`` bounds the wait of an instance with no pool that waits
        for its rate limit. ``wait`` overrides the pool's waiting mode ("countdown", "handoff");
        ``handoff`` is the hand-off id the task's message carries, to claim a slot handed to it.
        ``standby`` is how long this execution may block as a standby (None: the store's
        ``standby_block``); a standby answered FULL with reason "standby" asks again with
        ``block``. ``published``: when it was published as usual (Redis clock; first attempt
        only); a hand-off pool's free slot goes to it before tasks in line that asked after.
        ``block``: first block as ``token``'s standby (BLPOP on its wake LIST, for what its FULL
        "standby" answer said) in the same round trip: Redis runs the script as the standby is
        woken ("go": it claims the slot handed to it; "end": its message is stale) or its block
        ends (it goes back to the FIFO), before its process runs again. One script run, one
        round trip, unless the instance's pool changed.
        """
        values = {
            "instance": instance,
            "token": token,
            "lease_ms": ms(lease),
            "first_ms": "" if first is None else ms(first),
            "waited_uid": waited_uid,
            "info": compact_json(info or {}),
            "bounds": BUCKET_BOUNDS_ARG,
            "unassigned_timeout_ms": ms(unassigned_timeout),
            "wait": wait,
            "handoff_id": handoff,
            "rate_parked_max": RATE_PARKED_MAX,
            "standby_ms": ms(self.standby_block if standby is None else standby),
            "stale_ms": ms(STALE_HANDOFF_SECONDS),
            "handoff_lease_ms": ms(self.handoff_lease),
            "published_ms": "" if published is None else int(published * 1000),  # never later
        }

        # BLPOP's timeout is whole or fractional seconds; 0 would block for ever.
        blocks = (
            [(self.keys.pool(block.pool).wake + token, max(0.001, block.seconds))] if block else []
        )

        def attempt(believed: str) -> Acquisition | Moved:
            call = self._call("acquire", {**values, "believed": believed}, believed)
            # Blocked once: after a MOVED answer it asks the right pool at once.
            on = blocks.pop() if blocks else None
            (reply,) = self._pipeline([call], "run acquire.lua", on)
            return replies.acquisition(reply, believed)

        return self._moved(instance, attempt)

    def release(
        self,
        token: str,
        pool: str,
        *,
        parked_likely: bool = False,
        execution: Mapping[str, Any] | None = None,
    ) -> Release:
        """Give back ``token``'s slot of ``pool`` (and its waiter entry). Idempotent.

        ``execution`` (hostname, pid, started, thread, as its acquire's ``info`` named them):
        the slot is given back only if ``token`` holds it as that execution; held by another
        one (a copy that took it after this one's lease lapsed) it is left alone
        (``Release.elsewhere``). When tasks are parked in the pool, free slots then go to the
        oldest of them: the returned :class:`Release` lists the hand-offs the caller must
        publish. With ``parked_likely`` (the task was itself handed its slot) the hand-off runs
        in the same round trip; otherwise a second round trip runs it only when tasks are
        parked, so the countdown path stays at one.
        """
        named = compact_json(dict(execution)) if execution else ""
        values = {"token": token, "pool": pool, "bounds": BUCKET_BOUNDS_ARG, "execution": named}
        calls = [self._call("release", values, pool)]
        if parked_likely:
            calls.append(self._handoff_call(pool))
        answers = self._pipeline(calls, f"release a slot of pool {pool!r}")
        status, held, parked = replies.release(answers[0])
        if parked_likely:
            effects = replies.effects(answers[1], pool)
        elif parked:
            effects = self.hand_off(pool)
        else:
            effects = Effects(pool)
        return Release(
            released=status == "RELEASED",
            elsewhere=status == "ELSEWHERE",
            held=held,
            pool=pool,
            handoffs=effects.handoffs,
            reclaimed=effects.reclaimed,
        )

    def abandon(
        self,
        token: str,
        *,
        grace: float,
        why: str,
        pid: int | None = None,
        hostname: str = "",
        handoff: str = "",
        unclaimed: bool = False,
    ) -> Abandonment | None:
        """``token``'s execution ended without releasing its slot (killed, a hard time limit,
        ``revoke(terminate=True)``): keep the slot taken for ``grace`` seconds (its call may
        still be in flight), then free it; any slot when ``grace`` is 0 is given back at once.
        With ``pid`` and/or ``hostname``, only a slot held by that process and/or on that
        worker. With ``unclaimed`` (revoked before it started), only a hand-off, grant or
        standby not taken up, whose id its message carried (``handoff``), given back at once.
        None if it holds no slot."""
        pool = self.held_pools([token]).get(token)
        if not pool:
            return None
        values = {
            "token": token,
            "pool": pool,
            "grace_ms": ms(grace),
            "why": why,
            "pid": "" if pid is None else str(pid),
            "hostname": hostname,
            "handoff": handoff,
            "unclaimed": "1" if unclaimed else "",
            "bounds": BUCKET_BOUNDS_ARG,
            "stale_ms": ms(STALE_HANDOFF_SECONDS),
        }
        status, _now, info, parked, _until = self._run("abandon", values, pool)
        effects = self.hand_off(pool) if int(parked) and status != "ABANDONED" else Effects(pool)
        return Abandonment(
            pool=pool,
            handoffs=effects.handoffs,
            reclaimed=effects.reclaimed,
            slot=replies.abandoned(token, info) if status == "ABANDONED" else None,
            released=status == "RELEASED",
            elsewhere=status == "ELSEWHERE",
        )

    def free(self, token: str, *, force: bool = False) -> Freed:
        """Free ``token``'s slot now: its abandoned slot (the call it made is known to be over)
        or, with ``force``, the slot its running execution holds. Raises
        :class:`SlotNotFoundError` when it has neither, :class:`SlotInUseError` when it holds a
        slot with a live lease and ``force`` is not given. The freed slot is not handed on: the
        caller runs :meth:`hand_off` (or a reaper does)."""
        names = self.pool_names()
        with self._backend("find a task's slot"):
            pipe = self.client.pipeline(transaction=False)
            pipe.hget(self.keys.held, token)
            for name in names:
                pipe.zscore(self.keys.pool(name).abandoned, token)
            found = pipe.execute()
        held, kept = found[0], [name for name, at in zip(names, found[1:], strict=True) if at]
        for pool in kept:
            status, _now, info, _parked = self._run("free", {"token": token}, pool)
            if status == "FREED":
                return replies.freed(token, pool, True, info)
        if not held:
            raise SlotNotFoundError(
                f"task {token!r} holds no slot and has no abandoned slot", task_id=token
            )
        with self._backend("read a holder"):
            raw = self.client.hget(self.keys.pool(held).holder, token)
        holder = replies.freed(token, held, False, str(raw) if raw else None)
        if not force:
            raise SlotInUseError(
                f"task {token!r} holds a slot of pool {held!r} and is running (host "
                f"{holder.hostname or '?'}, pid {holder.pid or '?'}): its call may "
                "be in flight; release it anyway with force",
                task_id=token,
                pool=held,
            )
        values = {"token": token, "pool": held, "bounds": BUCKET_BOUNDS_ARG, "execution": ""}
        self._run("release", values, held)
        return holder

    def renew(self, held: dict[str, str], *, lease: float) -> int:
        """Extend the leases of ``held`` (token -> pool) to ``lease`` seconds from now; return how
        many were still held."""
        if not held:
            return 0
        tokens = list(held)
        call: ScriptCall = (
            "renew",
            [self.keys.pool(held[token]).holders for token in tokens],
            [ms(lease), *tokens],
        )
        (reply,) = self._pipeline([call], "renew leases")
        return int(reply[2])

    # -- hand-offs --------------------------------------------------------------------------

    def _handoff_call(self, pool: str) -> ScriptCall:
        values = {
            "pool": pool,
            "handoff_lease_ms": ms(self.handoff_lease),
            "stale_ms": ms(STALE_HANDOFF_SECONDS),
            "standby_max": self.standby_max,
            "standby_block_ms": ms(self.standby_block),
        }
        return self._call("handoff", values, pool)

    def hand_off(self, pool: str) -> Effects:
        """Hand free slots of ``pool`` to its oldest parked tasks, requeue lapsed hand-offs,
        expire parked tasks past their deadline; the hand-offs to publish."""
        (reply,) = self._pipeline([self._handoff_call(pool)], f"hand off slots of pool {pool!r}")
        return replies.effects(reply, pool)

    def _park_values(
        self, token: str, *, first: float | None, entry: str, pool: str, place: float | None = None
    ) -> dict[str, Any]:
        return {
            "token": token,
            "first_ms": "" if first is None else ms(first),
            "entry_json": entry,
            "instance": "",
            "pool": pool,
            "wait": "",
            "grant_lease_ms": ms(self.handoff_lease),
            "grant_info": "",
            "rate_parked_max": RATE_PARKED_MAX,
            "reserve": 0,
            "reserve_arrived": "",
            "reserve_ms": 0,
            "place_ms": "" if place is None else int(place * 1000),
        }

    def park(
        self, token: str, *, pool: str, first: float, entry: str, place: float | None = None
    ) -> tuple[int, Effects]:
        """Park ``token`` (a task a worker found waiting) in ``pool``'s hand-off FIFO with its
        serialized message ``entry`` (JSON) and, in the same round trip, hand any free slot to the
        oldest parked task. Its place in line is ``first`` (when it first asked), or ``place``
        if earlier (when it was published as usual); its deadline is from ``first``.

        Returns its position (1 = next, 0 if it was parked already, -1 if the pool is gone) and
        the effects to settle.
        """
        values = self._park_values(token, first=first, entry=entry, pool=pool, place=place)
        parked, handed = self._pipeline(
            [self._call("park", values, pool), self._handoff_call(pool)],
            f"park a task in pool {pool!r}",
        )
        return replies.position(parked), replies.effects(handed, pool)

    def park_at_publish(
        self,
        instance: str,
        token: str,
        *,
        entry: str | None,
        wait: str = "",
        info: dict[str, Any] | None = None,
        reserve: Reserve = (0, "", 0.0),
    ) -> Parking:
        """Park a task that is being published, instead of sending its message to the broker,
        when ``instance``'s pool waits by hand-off (``wait`` overrides the pool's mode) and the
        instance is not paused; see park.lua for every answer.

        With ``entry`` (the parked entry, JSON) free slots go to the oldest parked tasks in the
        same round trip, and this task may be one of them. Without it the store only asks: a
        free slot nobody waits for is granted at once (``granted``, with ``info`` describing the
        holder meanwhile), and a pool whose tasks must park answers ``reason`` "contended".
        An instance with no pool (read again from Redis, never trusted from the cache) answers
        ``parked`` False at once. Free slots kept for ``reserve`` (the producer's calls on their
        way, :data:`~celery_pools.store.results.Reserve`) are neither granted nor handed out.
        """
        if not self._pool_of.get(instance):
            self._pool_of.pop(instance, None)
        holder = compact_json(info or {"instance": instance})
        # The hand-off pipelined with each attempt runs even when the park is answered MOVED:
        # what every one of them handed out or reclaimed is this call's to settle.
        settled: list[Effects] = []

        def attempt(believed: str) -> Parking | Moved:
            if not believed:
                return Parking(parked=False)
            values = self._park_values(token, first=None, entry=entry or "", pool=believed)
            values.update(instance=instance, wait=wait, grant_info=holder)
            values.update(reserve=reserve[0], reserve_arrived=reserve[1], reserve_ms=ms(reserve[2]))
            calls = [self._call("park", values, believed)]
            if entry is not None:
                calls.append(self._handoff_call(believed))
            what = f"park a task in pool {believed!r}"
            answers = self._pipeline(calls, what)
            answer = replies.parking(answers[0], believed)
            if entry is not None:
                settled.append(replies.effects(answers[1], believed))
            return answer

        parking = self._moved(instance, attempt)
        if not settled:
            return parking
        effects = sum(settled[1:], settled[0])
        return dataclasses.replace(parking, handoffs=effects.handoffs, reclaimed=effects.reclaimed)

    def believed_pool(self, instance: str) -> str | None:
        """The pool this store last saw serve ``instance`` ("" for none, None if never seen):
        a first guess, no round trip."""
        return self._pool_of.get(instance)

    def withdraw_grant(self, token: str, pool: str, handoff_id: str) -> tuple[bool, Effects]:
        """Take back the slot granted to ``token`` at publication (hand-off id ``handoff_id``)
        when its message could not be published, unless the task claimed it already; in the same
        round trip the slot goes to the oldest parked task. Returns whether the grant was taken
        back, and the effects to settle."""
        values = {"token": token, "handoff_id": handoff_id, "pool": pool}
        withdrawn, handed = self._pipeline(
            [self._call("ungrant", values, pool), self._handoff_call(pool)],
            f"withdraw a slot granted in pool {pool!r}",
        )
        return withdrawn[0] == "WITHDRAWN", replies.effects(handed, pool)
