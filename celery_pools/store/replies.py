"""Decoding what Redis answers into results and models: the only code that reads a reply by
position.

Every script replies ``{STATUS, now, ...}`` (see :mod:`celery_pools.store.scripts`); the layout
after ``now`` is each script's own, documented in its header. Times come in milliseconds on the
Redis clock and leave as seconds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery_pools.models import AbandonedSlot, Holder, Pool, PoolStatus, Waiter
from celery_pools.ratelimit import InstanceRate, RateLimit

from .results import (
    AcquireStatus,
    Acquisition,
    Effects,
    Freed,
    Grant,
    Handoff,
    Parking,
    Reclaimed,
)

__all__ = [
    "Moved",
    "abandoned",
    "acquisition",
    "effects",
    "freed",
    "instance_rate",
    "parking",
    "pool",
    "position",
    "reclaimed",
    "release",
    "seconds",
    "status",
]


@dataclass(frozen=True)
class Moved:
    """A script's answer that another pool serves the instance ("" for none): ask again."""

    pool: str


def seconds(ms: Any) -> float:
    """Milliseconds on the Redis clock, as seconds."""
    return float(ms) / 1000


def reclaimed(flat: Sequence[Any]) -> tuple[Reclaimed, ...]:
    """Holders whose slots were taken back, from ``{task id, holder JSON, ...}``."""
    holders = []
    for index in range(0, len(flat), 2):
        info = json.loads(flat[index + 1]) if flat[index + 1] else {}
        holders.append(
            Reclaimed(
                task_id=str(flat[index]),
                task_name=info.get("task_name", ""),
                instance=info.get("instance", ""),
                hostname=info.get("hostname", ""),
                pid=info.get("pid"),
            )
        )
    return tuple(holders)


def acquisition(reply: Sequence[Any], pool: str) -> Acquisition | Moved:
    """acquire.lua's reply, for an attempt in ``pool``."""
    status, now = reply[0], seconds(reply[1])
    if status == "MOVED":
        return Moved(str(reply[2]))
    return Acquisition(
        AcquireStatus(status),
        now,
        pool=pool,
        first=seconds(reply[2]),
        limit=int(reply[3]),
        in_use=int(reply[4]),
        timeout=seconds(reply[5]),
        uid=str(reply[6]),
        reentrant=bool(reply[7]),
        retry_after=seconds(reply[8]),
        reason=str(reply[9]),
        reclaimed=reclaimed(reply[10]),
        granted=seconds(reply[11]),
    )


def release(reply: Sequence[Any]) -> tuple[str, float | None, int]:
    """release.lua's reply: its status (RELEASED, NOT_HELD, ELSEWHERE), how long the slot was
    held when given back (None if unknown or not given back) and how many tasks are parked in
    the pool."""
    status, now, info, parked = reply
    held = None
    if info and status == "RELEASED":
        since = json.loads(info).get("since")
        if isinstance(since, int | float):
            held = max(0.0, seconds(now - since))
    return str(status), held, int(parked)


def abandoned(token: str, raw: str | None) -> AbandonedSlot:
    """An abandoned slot from its holder JSON (abandon.lua adds abandoned, until and why)."""
    info, common = _described(token, raw)
    return AbandonedSlot(
        **common,
        hostname=info.get("hostname", ""),
        pid=info.get("pid"),
        abandoned=seconds(info.get("abandoned", 0)),
        until=seconds(info.get("until", 0)),
        why=info.get("why", ""),
    )


def freed(token: str, pool: str, abandoned: bool, raw: str | None) -> Freed:
    """An operator's release, from the freed slot's holder JSON."""
    info = json.loads(raw or "{}")
    since = info.get("since")
    return Freed(
        task_id=token,
        pool=pool,
        abandoned=abandoned,
        task_name=info.get("task_name", ""),
        hostname=info.get("hostname", ""),
        pid=info.get("pid"),
        since=seconds(since) if isinstance(since, int | float) else None,
    )


def effects(reply: Sequence[Any], pool: str) -> Effects:
    """handoff.lua's reply: the hand-offs and standbys to publish and the holders reclaimed."""
    _status, _now, handed, lapsed, promoted = reply
    handoffs = tuple(
        Handoff(
            token=str(flat[i]),
            handoff_id=str(flat[i + 1]),
            pool=pool,
            entry=json.loads(flat[i + 2]),
            standby=standby,
        )
        for flat, standby in ((handed, False), (promoted, True))
        for i in range(0, len(flat), 3)
    )
    return Effects(pool, handoffs, reclaimed(lapsed))


def parking(reply: Sequence[Any], pool: str) -> Parking | Moved:
    """park.lua's reply, for ``pool`` (hand-offs, if pipelined, are decoded apart)."""
    status, now = reply[0], seconds(reply[1])
    if status == "MOVED":
        return Moved(str(reply[2]))
    if status == "PARKED":
        deadline = seconds(reply[3])
        return Parking(parked=True, position=int(reply[2]), pool=pool, deadline=deadline, now=now)
    if status == "ALREADY":
        return Parking(parked=True, position=0, pool=pool, now=now)
    if status == "GRANTED":
        grant = Grant(
            pool=pool,
            uid=str(reply[3]),
            timeout=seconds(reply[4]),
            first=seconds(reply[1]),
            handoff=str(reply[2]),
        )
        free, arrived = int(reply[5]), int(reply[6])
        return Parking(parked=False, pool=pool, granted=grant, free=free, arrived=arrived, now=now)
    if status == "AS_USUAL":
        return Parking(parked=False, pool=pool, reason=str(reply[2]), now=now)
    if status == "CONTENDED":
        return Parking(parked=False, pool=pool, reason="contended", now=now)
    return Parking(parked=False, pool=pool, reason="gone", now=now)  # NOPOOL


def position(reply: Sequence[Any]) -> int:
    """park.lua's reply to a worker: the task's place in the FIFO (1 = next), 0 if it was parked
    or held a slot already, -1 if the pool no longer exists."""
    if reply[0] == "PARKED":
        return int(reply[2])
    return 0 if reply[0] == "ALREADY" else -1


def pool(name: str, row: Sequence[Any]) -> Pool | None:
    """A pool's definition from ``HMGET limit timeout wait``, or None when it has none."""
    limit, timeout, wait = row
    if limit is None:
        return None
    return Pool(name=name, limit=int(limit), timeout=seconds(timeout), wait=wait or "countdown")


def instance_rate(
    instance: str, now: float, spec: str | None, paused: str | None, tat: str | None
) -> InstanceRate:
    """What an instance's rate limit allows at ``now`` (every time in ms on the Redis clock)."""
    paused_for = max(0.0, seconds(float(paused) - now)) if paused else 0.0
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
        next_in=max(0.0, seconds(ahead - tolerance)),
        paused_for=paused_for,
    )


def _described(token: str, raw: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A holder's or waiter's JSON, and the fields both models take from it."""
    info = json.loads(raw or "{}")
    common = {
        "task_id": token,
        "task_name": info.get("task_name", ""),
        "instance": info.get("instance", ""),
        "since": seconds(info.get("since", 0)),
    }
    return info, common


def _reserved(raw: str | None, arrived: int, now: float) -> int:
    """How many free slots a pool's reservation (config field ``reserve``,
    "calls|arrived|until ms") keeps at ``now`` (seconds), its count of arrived calls being
    ``arrived``: as lib/reserve.lua's ``kept`` reckons it."""
    parts = (raw or "").split("|")
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        return 0
    calls, before, until_ms = (int(part) for part in parts)
    if until_ms <= now * 1000:
        return 0
    return max(0, calls - max(0, arrived - before))


def status(name: str, now: float, rows: Sequence[Any]) -> PoolStatus:
    """A pool's status at ``now`` (seconds) from the ten replies read for it:
    ``HGETALL config``, ``SMEMBERS pool_instances``, ``ZRANGE holders`` and ``HGETALL holder``,
    ``ZRANGE waiters`` and ``HGETALL waiter``, ``ZRANGE abandoned`` and
    ``HGETALL abandoned_holder`` (the ZSETs with their scores, in ms), ``ZCARD standby`` and
    the stats field ``as_usual_arrived``. Holders whose lease lapsed, waiters past their
    deadline and abandoned slots past their grace are left out: the next operation frees them.
    Abandoned slots count as in use; slots kept for calls on their way are not free."""
    config, instances, holders, holder_info, waiters, waiter_info, kept, kept_info = rows[:8]
    standbys, arrived = rows[8:]
    limit = int(config["limit"])
    live_holders = []
    for token, expiry in holders:
        if seconds(expiry) > now:
            info, common = _described(token, holder_info.get(token))
            live_holders.append(
                Holder(
                    **common,
                    hostname=info.get("hostname", ""),
                    pid=info.get("pid"),
                    lease_expires=seconds(expiry),
                )
            )
    live_holders.sort(key=lambda h: h.since)
    live_waiters = []
    for token, deadline in waiters:
        if seconds(deadline) > now:
            _, common = _described(token, waiter_info.get(token))
            live_waiters.append(Waiter(**common, deadline=seconds(deadline)))
    live_waiters.sort(key=lambda w: w.since)
    kept_slots = sorted(
        (abandoned(token, kept_info.get(token)) for token, until in kept if seconds(until) > now),
        key=lambda slot: slot.abandoned,
    )
    in_use = len(live_holders) + len(kept_slots)
    free = max(0, limit - in_use)
    reserved = min(free, _reserved(config.get("reserve"), int(arrived or 0), now))
    return PoolStatus(
        name=name,
        limit=limit,
        timeout=seconds(config["timeout"]),
        in_use=in_use,
        free=free - reserved,
        reserved=reserved,
        waiting=len(live_waiters),
        standbys=int(standbys),
        instances=sorted(instances),
        holders=live_holders,
        waiters=live_waiters,
        abandoned=kept_slots,
        oldest_wait=(now - live_waiters[0].since) if live_waiters else None,
        now=now,
    )
