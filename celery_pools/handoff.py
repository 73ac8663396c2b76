"""Hand-off waiting: parked messages, their publication, and the reaper that keeps them moving.

A task bound for a hand-off pool is parked in the pool's FIFO in Redis, by its producer at
publication (:mod:`celery_pools.publishing`) or by the worker that found the pool full: its
message (task name, args, kwargs and every execution option: id, callbacks, chain, chord, headers)
is serialized with the task's serializer. Whoever frees a slot hands it to the oldest parked task
and publishes that task's message at once, with a hand-off id in its header; the task claims the
slot when it starts. A task parked at publication costs one broker message; one parked by a
worker, two.

Every worker runs a :class:`HandoffReaper` that repairs what a crash can leave behind: a hand-off
not taken up in time is handed out again (the stale copy, if it ever arrives, is recognised by its
hand-off id and never runs), and parked tasks whose deadline passed, or whose pool was cleared or
deleted, are published so that they fail through Celery's normal failure path.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from celery._state import _task_stack
from kombu.serialization import dumps, loads

from . import signals
from .background import Periodic
from .store import Handoff, Reclaimed, RedisPoolStore
from .waiting import HEADER

__all__ = [
    "HandoffReaper",
    "encode_message",
    "log_reclaimed",
    "publish_expired",
    "publish_handoffs",
]

logger = logging.getLogger(__name__)


def log_reclaimed(pool: str, holders: Iterable[Reclaimed]) -> None:
    """Log, at warning level, slots taken back from holders whose lease lapsed (leaks)."""
    for holder in holders:
        logger.warning(
            "celery-pools: reclaimed a slot of pool %r from task %s[%s] on %s (pid %s): its lease "
            "lapsed, so its process died or stopped renewing",
            pool,
            holder.task_name or "?",
            holder.task_id,
            holder.hostname or "?",
            holder.pid,
        )


def encode_message(
    app: Any,
    task: str,
    args: Any,
    kwargs: Any,
    options: dict[str, Any],
    *,
    info: dict[str, Any],
) -> str:
    """The parked entry (JSON) for a task's message: what ``app.send_task`` needs to send it
    (task name, args, kwargs, execution options: id, callbacks, chain, chord, headers),
    serialized with the task's serializer.

    Raises :class:`kombu.exceptions.EncodeError` when the serializer cannot encode it.
    """
    content_type, encoding, body = dumps(  # type: ignore[no-untyped-call]
        {
            "task": task,
            "args": list(args or ()),
            "kwargs": dict(kwargs or {}),
            "options": {key: value for key, value in options.items() if value is not None},
        },
        serializer=options.get("serializer") or app.conf.task_serializer,
    )
    raw = body.encode("utf-8") if isinstance(body, str) else body
    return json.dumps(
        {
            "info": info,
            "msg": {"ct": content_type, "ce": encoding, "body": base64.b64encode(raw).decode()},
        },
        separators=(",", ":"),
    )


def _decode(entry: dict[str, Any]) -> dict[str, Any]:
    msg = entry["msg"]
    raw = base64.b64decode(msg["body"])
    message: dict[str, Any] = loads(  # type: ignore[no-untyped-call]
        raw, msg["ct"], msg["ce"], accept={msg["ct"]}
    )
    return message


def _publish(app: Any, entry: dict[str, Any], header: dict[str, Any], producer: Any = None) -> str:
    message = _decode(entry)
    options = dict(message["options"])
    headers = dict(options.get("headers") or {})
    # The wait state: as park.lua recorded it, then as the task carried it (a task parked by a
    # worker has waited before), then this publication's hand-off id or failure.
    state = dict(entry.get("state") or {})
    if isinstance(entry.get("first"), int | float):
        state["first"] = entry["first"] / 1000
    headers[HEADER] = {**state, **(headers.get(HEADER) or {}), **header}
    options["headers"] = headers
    if producer is not None:
        options["producer"] = producer
    with _outside_tasks():
        app.send_task(
            message["task"], message["args"], message["kwargs"], add_to_parent=False, **options
        )
    return str(message["task"])


@contextmanager
def _outside_tasks() -> Iterator[None]:
    """Hide this thread's running tasks from ``send_task``, which would make the task that frees a
    slot the parent (``parent_id``, ``root_id``, result trail) of the task it hands the slot to.
    The parked message already carries the parent and root of the call that sent it."""
    hidden = []
    while len(_task_stack):
        hidden.append(_task_stack.pop())
    try:
        yield
    finally:
        for task in reversed(hidden):
            _task_stack.push(task)


def publish_handoffs(app: Any, handoffs: Iterable[Handoff], producer: Any = None) -> int:
    """Publish the messages of tasks just handed a slot; returns how many were published.

    A message that cannot be published stays reserved in Redis: the reaper hands it out again when
    its hand-off lease lapses. ``producer`` is a kombu producer to publish with (default: one of
    the app's pool).
    """
    published = 0
    for handoff in handoffs:
        signals.slot_handoff.send(
            sender=app, pool=handoff.pool, task_id=handoff.token, handoff_id=handoff.handoff_id
        )
        try:
            _publish(app, handoff.entry, {"handoff": handoff.handoff_id}, producer)
            published += 1
        except Exception:
            logger.exception(
                "celery-pools: could not publish the hand-off of task %s in pool %r; it is "
                "handed out again when its hand-off lease lapses",
                handoff.token,
                handoff.pool,
            )
    return published


def hand_off(app: Any, store: RedisPoolStore, pool: str, lease: float) -> int:
    """Run ``pool``'s hand-off now (free slots to its oldest parked tasks, lapsed hand-offs
    again) and publish what it hands out; returns how many messages were published."""
    handoffs, reclaimed = store.handoff(pool, lease=lease)
    log_reclaimed(pool, reclaimed)
    return publish_handoffs(app, handoffs)


def publish_expired(app: Any, store: RedisPoolStore) -> int:
    """Publish parked tasks that must fail (deadline, clear, delete), and those sent back from
    the FIFO to wait by countdown because their instance is paused; returns how many.

    A record whose message cannot be published (the broker is down) goes back to its list, for
    the next round of any reaper: the task still ends through Celery's failure path, or waits,
    later. What a round did is logged in one line per pool and outcome, not one per task.
    """
    # (pool, what happened) -> tasks: published, and not published (tried again later).
    outcomes: Counter[tuple[str, str]] = Counter()
    failed: Counter[tuple[str, str]] = Counter()
    error: Exception | None = None
    try:
        for sent_back in (False, True):
            unpublished: list[dict[str, Any]] = []
            for record in store.pop_expired(sent_back=sent_back):
                what = (
                    "sent to wait by countdown (paused)" if sent_back else str(record.get("reason"))
                )
                key = (str(record.get("pool")), what)
                entry = record["entry"]
                entry = json.loads(entry) if isinstance(entry, str) else entry
                fail = {name: record[name] for name in ("reason", "limit", "at") if name in record}
                try:
                    # Sent back: not an end; published without a slot, the task waits.
                    name = _publish(app, entry, {} if sent_back else {"fail": fail})
                except Exception as exc:
                    error = error or exc
                    failed[key] += 1
                    unpublished.append(record)
                    continue
                outcomes[key] += 1
                logger.debug("celery-pools: parked task %s of pool %r: %s", name, key[0], what)
            if unpublished:
                store.return_expired(unpublished, sent_back=sent_back)
    finally:
        _log_outcomes(outcomes, failed, error)
    return sum(outcomes.values())


def _log_outcomes(
    outcomes: Counter[tuple[str, str]], failed: Counter[tuple[str, str]], error: Exception | None
) -> None:
    for (pool, what), count in sorted(outcomes.items()):
        logger.info(
            "celery-pools: published %d parked task%s of pool %r: %s",
            count,
            "" if count == 1 else "s",
            pool,
            what if what.startswith("sent") else f"ended ({what})",
        )
    for index, ((pool, what), count) in enumerate(sorted(failed.items())):
        logger.error(
            "celery-pools: could not publish %d parked task%s of pool %r (%s); they are tried "
            "again: %s",
            count,
            "" if count == 1 else "s",
            pool,
            what,
            error,
            exc_info=error if index == 0 else None,  # one traceback per round
        )


class HandoffReaper(Periodic):
    """Keeps hand-off pools moving: runs ``handoff.lua`` on each of them every ``interval``
    seconds and publishes what it returns, and publishes parked tasks that must fail."""

    activity = "hand-off reaping"
    unreachable_level = logging.DEBUG  # the lease keeper already warns about it

    def __init__(self, app: Any, interval: float, lease: float) -> None:
        super().__init__("celery-pools-handoff", interval)
        self.app = app
        self.lease = lease
        self._pools: list[str] = []
        self._pools_read = 0.0

    def tick(self) -> int:
        """One round: returns how many messages it published."""
        from .extension import get_extension

        store = get_extension(self.app).store
        if time.monotonic() - self._pools_read > 5:
            self._pools = store.handoff_pools()
            self._pools_read = time.monotonic()
        published = publish_expired(self.app, store)
        for pool in self._pools:
            published += hand_off(self.app, store, pool, self.lease)
        return published
