"""The background threads of a worker's main process.

- :class:`LeaseKeeper` renews the leases of the slots held by the worker's running tasks, and
  abandons the slots of executions that ended without releasing and without a signal saying so
  (a child killed under ``acks_late`` + ``task_reject_on_worker_lost``).
- :class:`HandoffReaper` keeps hand-off pools moving: it hands out again a hand-off not taken up
  in time (the stale copy, if it ever arrives, is recognised by its hand-off id and never runs),
  and publishes parked tasks whose deadline passed, or whose pool was cleared or deleted, so
  that they fail through Celery's normal failure path.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, NamedTuple

from celery.worker import state as worker_state

from .background import Periodic
from .context import get_extension, is_pooled
from .errors import PoolBackendError
from .models import AbandonedSlot
from .processes import process_start
from .store import HolderProcess

__all__ = ["HandoffReaper", "LeaseKeeper", "report_abandoned", "slots_held_here"]

logger = logging.getLogger(__name__)

# How often the lease keeper looks for executions that ended without releasing (seconds).
_SWEEP_INTERVAL = 1.0
# How long it remembers where an execution it let go of ran, for Celery's ending signals, which
# come after the result backend has stored the failure and the task's on_failure has run.
_LET_GO_SECONDS = 10.0


class _Ended(NamedTuple):
    """An execution that ended (its request let go of): what abandoning its slot needs."""

    task_id: str
    pid: int
    hostname: str
    task_name: str
    ended: float  # when it was found ended (monotonic)


def _snapshot(items: Iterable[Any]) -> list[Any]:
    """A list of ``items``, which another thread may change as this reads."""
    while True:
        try:
            return list(items)
        except RuntimeError:  # "changed size during iteration": read again
            continue


def _active() -> list[Any]:
    """The worker's active requests now (Celery's consumer adds to them as this reads)."""
    return _snapshot(worker_state.active_requests)


def _starting() -> set[str]:
    """The task ids of the requests this worker has reserved that no process has accepted yet:
    one may be starting in the process where an earlier execution of its id ended (its next
    message: a hand-off, a retry), and take a slot there under the same pid before Celery
    records where it runs."""
    return {req.id for req in _snapshot(worker_state.reserved_requests) if req.worker_pid is None}


class LeaseKeeper(Periodic):
    """Renews, every third of the lease, the leases of slots held by this worker's running tasks,
    and abandons, within a second, the slots of those that ended without releasing and without
    a signal saying so (with ``acks_late`` and ``task_reject_on_worker_lost`` Celery sends none
    for a killed child).

    It follows each pooled request from its receipt to its end, and lets go of it within a
    second of its end, not at the next renewal: a request keeps its message alive, and a worker
    ends hundreds of tasks a second (where tasks run in this process, a solo pool, keeping them
    for a third of the lease made its garbage collections take 1.8 times as long)."""

    activity = "lease renewal"

    def __init__(self, app: Any) -> None:
        self.lease_interval = get_extension(app).settings.lease_seconds / 3
        super().__init__("celery-pools-leases", min(_SWEEP_INTERVAL, self.lease_interval))
        self.app = app
        self._reported: set[str] = set()
        self._renew_at = time.monotonic() + self.lease_interval
        # Requests received (by the consumer) and not yet taken up by this thread.
        self._received: deque[tuple[Any, float]] = deque()
        # The pooled requests this worker received and has not seen end (this thread's own):
        # id(request) -> (request, when received, monotonic).
        self._watched: dict[int, tuple[Any, float]] = {}
        # Ended executions whose slots Redis could not be asked about: asked again every
        # second for a third of the lease (by then their lease has lapsed on its own).
        self._unsettled: list[_Ended] = []
        # The executions let go of in the last _LET_GO_SECONDS, for ended_processes (this
        # thread may let go of one before Celery's signal about it asks): task id -> their
        # last let go of (monotonic) and their processes, and the ids in that order, with when.
        self._let_go: dict[str, tuple[float, tuple[tuple[int, str], ...]]] = {}
        self._let_go_order: deque[tuple[float, str]] = deque()

    def watch(self, request: Any) -> None:
        """Follow ``request`` (a pooled task this worker received) until it ends. Any thread."""
        self._received.append((request, time.monotonic()))

    def ended_processes(self, task_id: str) -> list[tuple[int, str]]:
        """The processes, as (pid, worker hostname), where executions of ``task_id`` that this
        worker received ran and have ended (their requests are no longer active, and no request
        of that id runs there now), each request's ``worker_pid`` first, then this process
        (threads, solo, gevent and eventlet pools run tasks here; the last two name a greenlet
        as ``worker_pid``). Any thread: Celery's ending signals ask as a request ends, which
        this thread may have let go of already (it remembers those for ten seconds)."""
        # This thread adds a request to _let_go before it stops watching it, and moves it to
        # _watched before it takes it off _received: read in the other order, none is missed.
        requests = _snapshot(self._received) + _snapshot(self._watched.values())
        found = list(self._let_go.get(task_id, (0.0, ()))[1])
        active = worker_state.active_requests
        for request, _ in requests:
            if request.id == task_id and request.worker_pid is not None and request not in active:
                found.append((request.worker_pid, request.hostname or ""))
        here = os.getpid()
        running = {req.worker_pid for req in _active() if req.id == task_id}
        ordered = found + [(here, hostname) for _, hostname in found]
        return [where for where in dict.fromkeys(ordered) if where[0] not in running]

    def tick(self) -> int:
        """Abandon the slots of executions that ended without releasing; every third of the
        lease, renew the leases of the running pooled tasks. Return how many were renewed.

        A renewal also reports, once per task, a holder running longer than
        ``pools_suspicious_hold_seconds`` (a likely hang or leak); it keeps its slot.
        """
        renewed = 0
        if time.monotonic() >= self._renew_at:
            self._renew_at = time.monotonic() + self.lease_interval
            renewed = self._renew()
        self._abandon_ended()
        return renewed

    def _renew(self) -> int:
        ext = get_extension(self.app)
        running = [req for req in _active() if is_pooled(req.task)]
        requests = {req.id: req for req in running}
        held = ext.store.held_pools(list(requests))
        held = slots_held_here(running, held, ext.store.holder_processes(held))
        renewed = ext.store.renew(held, lease=ext.settings.lease_seconds)
        self._report_suspicious(requests, held, ext.settings.suspicious_hold_seconds)
        return renewed

    def _ended(self) -> list[Any]:
        """The watched requests that started in a process of this worker and have ended since;
        they are no longer watched. The others stay watched (an ETA task not started yet, for
        an hour at most). A request is itself, not its task id: a copy of the task running or
        waiting here in another process (its message delivered again) does not hide that the
        execution before it ended; one in the same process does (it may hold the slot now,
        under the same pid), until it ends too. One that ran in this process (threads and solo
        pools) is let go of without being returned: its own release ran, and a later request of
        its id here has the same pid, whose slot must not be taken for its."""
        while self._received:
            request, since = self._received[0]
            self._watched[id(request)] = (request, since)
            self._received.popleft()
        active, reserved = worker_state.active_requests, worker_state.reserved_requests
        running = {(req.id, req.worker_pid) for req in _active()}
        now, here, ended = time.monotonic(), os.getpid(), []
        for key, (req, since) in list(self._watched.items()):
            if req in active or req in reserved or (req.id, req.worker_pid) in running:
                continue
            if req.worker_pid is not None:
                where = (req.worker_pid, req.hostname or "")
                before = self._let_go.get(req.id, (now, ()))[1]
                self._let_go[req.id] = (now, (*before, where))
                self._let_go_order.append((now, req.id))
                del self._watched[key]
                if req.worker_pid != here:
                    ended.append(req)
            elif now - since >= 3600:  # not started (an ETA task, revoked or expired?)
                del self._watched[key]
        while self._let_go_order and now - self._let_go_order[0][0] >= _LET_GO_SECONDS:
            task_id = self._let_go_order.popleft()[1]
            if now - self._let_go.get(task_id, (now, ()))[0] >= _LET_GO_SECONDS:
                del self._let_go[task_id]
        return ended

    def _abandon_ended(self) -> None:
        """Abandon the slots that ended executions still hold in their process: they ended
        without releasing (an execution that released holds none; a copy holding a slot in
        another process is left alone). Celery sends no signal for a killed child with
        ``acks_late`` and ``task_reject_on_worker_lost``: this is how its slot is found."""
        now = time.monotonic()
        ended = self._unsettled + [
            _Ended(req.id, req.worker_pid, req.hostname or "", req.task_name, now)
            for req in self._ended()
        ]
        self._unsettled = []
        if not ended:
            return
        ext = get_extension(self.app)
        try:
            still = ext.store.held_pools(list({end.task_id for end in ended}))
            # A request of the same id that started in that process since (a retry) holds it;
            # one not placed yet may be starting there: asked about again next second, for a
            # third of the lease (a request that waits longer waits for a free process).
            running = {(req.id, req.worker_pid) for req in _active()}
            starting = _starting()
            for end in ended:
                if end.task_id not in still or (end.task_id, end.pid) in running:
                    continue
                if end.task_id in starting and now - end.ended < self.lease_interval:
                    self._unsettled.append(end)
                    continue
                outcome = ext.store.abandon(
                    end.task_id,
                    grace=ext.settings.abandoned_grace,
                    why="lost",
                    pid=end.pid,
                    hostname=end.hostname,
                )
                if outcome is not None:
                    ext.dispatcher.settle(outcome.effects)
                    if outcome.slot is not None:
                        report_abandoned(end.task_name, outcome.pool, outcome.slot)
        except PoolBackendError as exc:
            # The renewal warns about an unreachable Redis every third of the lease; these are
            # asked about again next second while their lease runs (a slot already abandoned
            # is no longer held, and is skipped).
            self._unsettled = [end for end in ended if now - end.ended < self.lease_interval]
            logger.debug("celery-pools: could not abandon the slots of ended tasks: %s", exc)

    def _report_suspicious(
        self, requests: dict[str, Any], held: dict[str, str], limit: float
    ) -> None:
        now = time.time()
        for task_id, pool in held.items():
            started = getattr(requests[task_id], "time_start", None)
            if task_id in self._reported or not started or now - started <= limit:
                continue
            self._reported.add(task_id)
            logger.warning(
                "celery-pools: suspicious holder: task %s[%s] has held a slot of pool %r for "
                "%.0f s (over pools_suspicious_hold_seconds = %g); it keeps the slot",
                requests[task_id].task_name,
                task_id,
                pool,
                now - started,
                limit,
            )
        self._reported &= set(requests)


class HandoffReaper(Periodic):
    """Keeps hand-off pools moving: every ``interval`` seconds it runs each one's hand-off
    (free slots to parked tasks, lapsed hand-offs again, parked tasks past their deadline out)
    and publishes what that hands out, and publishes parked tasks that must fail."""

    activity = "hand-off reaping"
    unreachable_level = logging.DEBUG  # the lease keeper already warns about it

    def __init__(self, app: Any, interval: float) -> None:
        super().__init__("celery-pools-handoff", interval)
        self.app = app
        self._pools: list[str] = []
        self._pools_read = 0.0

    def tick(self) -> int:
        """One round: returns how many messages it published."""
        dispatcher = get_extension(self.app).dispatcher
        if time.monotonic() - self._pools_read > 5:
            self._pools = dispatcher.store.handoff_pools()
            self._pools_read = time.monotonic()
        published = dispatcher.publish_expired()
        for pool in self._pools:
            published += dispatcher.hand_off(pool)
        return published


def slots_held_here(
    running: list[Any], held: dict[str, str], holders: dict[str, HolderProcess]
) -> dict[str, str]:
    """The slots of ``held`` (token -> pool) held by executions running in this worker.

    ``running`` are the worker's active pooled requests; ``holders`` names the process each slot
    was taken in, as its holder recorded it. A slot is this worker's when some running request
    of its task id has the holder's hostname and runs in the holder's process: the request's
    ``worker_pid`` (a prefork child), or this process (threads and solo pools, and gevent and
    eventlet, whose ``worker_pid`` is a greenlet's id), and that process started when the
    holder's did (a restarted container with the same hostname counts its pids the same way
    again). A slot held under a running task's id by another execution of it (one that died
    elsewhere, its message delivered here again and waiting as a copy) is not this worker's:
    its lease lapses and the copy goes on. A slot whose holder recorded no process is kept, and
    a start that either side cannot tell is taken to match.
    """
    processes: dict[str, set[tuple[str, int | None]]] = {}
    here = os.getpid()
    for req in running:
        where = processes.setdefault(req.id, set())
        where.update({(req.hostname or "", req.worker_pid), (req.hostname or "", here)})
    starts: dict[int, int | None] = {}

    def same_start(holder: HolderProcess) -> bool:
        if holder.started is None or holder.pid is None:
            return True
        if holder.pid not in starts:
            starts[holder.pid] = process_start(holder.pid)
        return starts[holder.pid] in (None, holder.started)

    def here_now(token: str) -> bool:
        holder = holders[token]
        return (holder.hostname, holder.pid) in processes.get(token, ()) and same_start(holder)

    return {token: pool for token, pool in held.items() if token not in holders or here_now(token)}


def report_abandoned(task_name: str, pool: str, slot: AbandonedSlot) -> None:
    """Log that ``task_name``'s execution left its slot of ``pool`` abandoned (``slot``)."""
    logger.warning(
        "celery-pools: %s[%s] ended without releasing its slot (%s) on host %s, pid %s: its call "
        "may still be in flight, so its slot of pool %r stays taken until %s (for %g s; "
        "'celery -A <app> pools release %s' frees it now)",
        task_name,
        slot.task_id,
        slot.why,
        slot.hostname or "?",
        slot.pid or "?",
        pool,
        time.strftime("%H:%M:%S", time.localtime(slot.until)),
        slot.until - slot.abandoned,
        slot.task_id,
    )
