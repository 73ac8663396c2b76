"""Hand-off waiting's side in Celery: parked messages, and publishing what the store hands out.

A task bound for a hand-off pool is parked in the pool's FIFO in Redis, by its producer at
publication (:mod:`celery_pools.producer`) or by the worker that found the pool full: its message
(task name, args, kwargs and every execution option: id, callbacks, chain, chord, headers) is
serialized with the task's serializer (:meth:`Dispatcher.encode`). Whoever frees a slot hands it
to the oldest parked task, and that task's message is published at once with a hand-off id in its
header; the task claims the slot when it starts.

Every store operation that may hand a slot on answers with its
:class:`~celery_pools.store.results.Effects`, and :meth:`Dispatcher.settle` is the one place that
finishes them: it reports the holders reclaimed and publishes the hand-offs. The worker's reaper
(:class:`celery_pools.keepers.HandoffReaper`) uses the same dispatcher to repair what a crash
leaves behind.
"""

from __future__ import annotations

import base64
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from celery._state import _task_stack
from kombu.serialization import dumps, loads

from . import signals
from .store import Effects, Handoff, Reclaimed, RedisPoolStore
from .waiting import HEADER

__all__ = ["Dispatcher", "outside_tasks"]

logger = logging.getLogger(__name__)


class Dispatcher:
    """Publishes the messages the store hands out, for ``app``, from ``store``'s pools."""

    def __init__(self, app: Any, store: RedisPoolStore) -> None:
        self.app = app
        self.store = store

    # -- the parked message ------------------------------------------------------------------

    def encode(
        self, task: str, args: Any, kwargs: Any, options: dict[str, Any], *, info: dict[str, Any]
    ) -> str:
        """The parked entry (JSON) for a task's message: what ``app.send_task`` needs to send it
        (task name, args, kwargs, execution options: id, callbacks, chain, chord, headers),
        serialized with the task's serializer, and ``info`` (``task_name``, ``instance``).

        Raises :class:`kombu.exceptions.EncodeError` when the serializer cannot encode it.
        """
        content_type, encoding, body = dumps(  # type: ignore[no-untyped-call]
            {
                "task": task,
                "args": list(args or ()),
                "kwargs": dict(kwargs or {}),
                "options": {key: value for key, value in options.items() if value is not None},
            },
            serializer=options.get("serializer") or self.app.conf.task_serializer,
        )
        raw = body.encode("utf-8") if isinstance(body, str) else body
        return json.dumps(
            {
                "info": info,
                "msg": {"ct": content_type, "ce": encoding, "body": base64.b64encode(raw).decode()},
            },
            separators=(",", ":"),
        )

    def _publish(self, entry: dict[str, Any], header: dict[str, Any], producer: Any = None) -> str:
        msg = entry["msg"]
        message: dict[str, Any] = loads(  # type: ignore[no-untyped-call]
            base64.b64decode(msg["body"]), msg["ct"], msg["ce"], accept={msg["ct"]}
        )
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
        with outside_tasks():
            self.app.send_task(
                message["task"], message["args"], message["kwargs"], add_to_parent=False, **options
            )
        return str(message["task"])

    # -- settling what the store left --------------------------------------------------------

    def settle(self, effects: Effects, producer: Any = None) -> int:
        """Finish a store operation: report the holders it reclaimed and publish the messages of
        the tasks it handed a slot (with ``producer``, a kombu producer, if given; else one of
        the app's pool). Returns how many messages were published.

        A message that cannot be published stays reserved in Redis: the reaper hands it out again
        when its hand-off lease lapses.
        """
        _log_reclaimed(effects.pool, effects.reclaimed)
        return self._publish_handoffs(effects.handoffs, producer)

    def hand_off(self, pool: str) -> int:
        """Run ``pool``'s hand-off now (free slots to its oldest parked tasks, lapsed hand-offs
        again) and settle it; returns how many messages were published."""
        return self.settle(self.store.hand_off(pool))

    def _publish_handoffs(self, handoffs: Iterable[Handoff], producer: Any) -> int:
        published = 0
        for handoff in handoffs:
            signals.slot_handoff.send(
                sender=self.app,
                pool=handoff.pool,
                instance=(handoff.entry.get("info") or {}).get("instance", ""),
                task_id=handoff.token,
                handoff_id=handoff.handoff_id,
            )
            try:
                self._publish(handoff.entry, {"handoff": handoff.handoff_id}, producer)
                published += 1
            except Exception:
                logger.exception(
                    "celery-pools: could not publish the hand-off of task %s in pool %r; it is "
                    "handed out again when its hand-off lease lapses",
                    handoff.token,
                    handoff.pool,
                )
        return published

    def publish_expired(self) -> int:
        """Publish parked tasks that must fail (deadline, clear, delete), and those sent back from
        the FIFO to wait by countdown because their instance is paused; returns how many.

        A record whose message cannot be published (the broker is down) goes back to its list,
        for the next round of any reaper: the task still ends through Celery's failure path, or
        waits, later. What a round did is logged in one line per pool and outcome, not one per
        task.
        """
        # (pool, what happened) -> tasks: published, and not published (tried again later).
        outcomes: Counter[tuple[str, str]] = Counter()
        failed: Counter[tuple[str, str]] = Counter()
        error: Exception | None = None
        try:
            for sent_back in (False, True):
                unpublished: list[dict[str, Any]] = []
                for record in self.store.pop_expired(sent_back=sent_back):
                    what = (
                        "sent to wait by countdown (paused)"
                        if sent_back
                        else str(record.get("reason"))
                    )
                    key = (str(record.get("pool")), what)
                    entry = record["entry"]
                    entry = json.loads(entry) if isinstance(entry, str) else entry
                    fail = {
                        name: record[name] for name in ("reason", "limit", "at") if name in record
                    }
                    try:
                        # Sent back: not an end; published without a slot, the task waits.
                        name = self._publish(entry, {} if sent_back else {"fail": fail})
                    except Exception as exc:
                        error = error or exc
                        failed[key] += 1
                        unpublished.append(record)
                        continue
                    outcomes[key] += 1
                    logger.debug("celery-pools: parked task %s of pool %r: %s", name, key[0], what)
                if unpublished:
                    self.store.return_expired(unpublished, sent_back=sent_back)
        finally:
            _log_outcomes(outcomes, failed, error)
        return sum(outcomes.values())


def _log_reclaimed(pool: str, holders: Iterable[Reclaimed]) -> None:
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


@contextmanager
def outside_tasks() -> Iterator[None]:
    """Hide this thread's running tasks from ``send_task``, which would make the running task the
    parent (``parent_id``, ``root_id``, result trail) of the message sent: the task that frees a
    slot of the task it hands the slot to, a waiting task of its own next attempt. The message sent
    already carries the parent and root of the call that sent it first."""
    hidden = []
    while len(_task_stack):
        hidden.append(_task_stack.pop())
    try:
        yield
    finally:
        for task in reversed(hidden):
            _task_stack.push(task)


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
