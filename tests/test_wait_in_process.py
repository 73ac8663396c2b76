"""Countdown waiters near their turn wait in their worker process instead of being sent again
(``pools_wait_in_process_seconds``): one message for the whole wait, within a bound per execution
and a tenth of the task's time limits. Real Redis, in-process worker (threads pool)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
from celery.exceptions import TaskRevokedError
from celery.worker import state as worker_state

from celery_pools import PoolFullError, signals
from celery_pools.admission import Caller
from celery_pools.execution import Execution
from celery_pools.keepers import LeaseKeeper, slots_held_here
from celery_pools.processes import process_start
from celery_pools.store import HolderProcess
from celery_pools.waiting import WaitState
from tests.support.polling import wait_until
from tests.support.redis_server import free_port
from tests.workerapp import INSTANCE


@pytest.fixture
def waits() -> Any:
    """The ``slot_waiting`` signals of this test: (task id, countdown)."""
    seen: list[tuple[str, float]] = []

    def record(sender: Any = None, task_id: str = "", countdown: Any = None, **_: Any) -> None:
        seen.append((task_id, countdown))

    signals.slot_waiting.connect(record, weak=False)
    try:
        yield seen
    finally:
        signals.slot_waiting.disconnect(record)


def _full_pool(env: Any) -> Any:
    manager = env.manager()
    manager.create("api", limit=1, timeout=30)
    manager.assign(INSTANCE, "api")
    return manager


@contextmanager
def _behind_a_holder(env: Any, run_worker: Any, in_process: float, hold: float) -> Iterator[Any]:
    """An in-process worker on a pool of 1 whose slot a task holds for ``hold`` seconds (started
    when this yields the app), countdowns of 0.1 s at most and ``in_process`` seconds of waiting
    in the process per execution; the holder's result is checked on the way out."""
    _full_pool(env)
    app = env.app(pools_wait_in_process_seconds=in_process, pools_retry_backoff_max=0.1)
    with run_worker(app, concurrency=3):
        blocker = app.tasks["t.hold"].delay("blocker", hold)
        wait_until(lambda: env.probe().current() == 1, 10, message="blocker never started")
        yield app
        assert blocker.get(timeout=30) == "blocker"


@pytest.mark.parametrize("in_process", [2.0, 0.0])
def test_a_countdown_near_its_turn_is_waited_in_the_worker_process(
    env, run_worker, publications, waits, in_process
):
    """With countdowns of 0.1 s at most and a budget of 2 s, the waiter never leaves its process
    while a 0.8 s holder runs: its one message is all the broker sees (with the budget at 0, every
    countdown is a new message). Either way it waits several times, its state says RETRY while it
    waits, and it runs after the holder, never beside it."""
    with _behind_a_holder(env, run_worker, in_process, hold=0.8) as app:
        waiter = app.tasks["t.hold"].delay("waiter", 0)
        meta = wait_until(
            lambda: (m := app.backend.get_task_meta(waiter.id))["status"] == "RETRY" and m,
            10,
            message="the waiter's state never said it waits",
        )
        assert isinstance(app.backend.exception_to_python(meta["result"]), PoolFullError)
        assert waiter.get(timeout=30) == "waiter"
    countdowns = [countdown for task_id, countdown in waits if task_id == waiter.id]
    assert len(countdowns) >= 2
    assert all(0 < countdown <= 0.1 for countdown in countdowns)
    sent = publications.count_id(waiter.id)
    assert sent == 1 if in_process else sent >= 2
    assert [label for label, _ in env.probe().starts()] == ["blocker", "waiter"]
    assert env.probe().max_concurrency() == 1


@pytest.mark.parametrize(
    ("in_process", "options"),
    [(0.3, {}), (10.0, {"time_limit": 3})],
    ids=["setting", "time-limit"],
)
def test_waiting_in_the_process_is_bounded_per_execution(
    env, run_worker, publications, in_process, options
):
    """A waiter spends at most ``pools_wait_in_process_seconds`` in all in its process (0.3 s),
    and at most a tenth of its time limit (a 3 s limit: 0.3 s of a 10 s budget), then is sent
    again: during a 2 s hold it is sent again several times, where an unbounded wait would have
    kept its one message."""
    with _behind_a_holder(env, run_worker, in_process, hold=2.0) as app:
        waiter = app.tasks["t.hold"].apply_async(("waiter", 0), **options)
        assert waiter.get(timeout=30) == "waiter"
    assert publications.count_id(waiter.id) >= 3
    assert env.probe().max_concurrency() == 1


def test_a_task_whose_expiry_comes_first_is_sent_again_and_expires(env, run_worker):
    """A waiter with ``expires`` 1 s ahead, behind a 2 s holder, with a budget that would keep
    it in its process until the holder ends: it is sent again before its expiry instead, and
    the worker that receives it revokes it as expired, as Celery does; its body never runs."""
    with _behind_a_holder(env, run_worker, 5.0, hold=2.0) as app:
        waiter = app.tasks["t.hold"].apply_async(("waiter", 0), expires=1.0)
        with pytest.raises(TaskRevokedError):
            waiter.get(timeout=30)
    assert waiter.state == "REVOKED"
    assert [label for label, _ in env.probe().starts()] == ["blocker"]


def test_a_copy_waiting_in_its_process_does_not_keep_a_dead_holders_slot(env, run_worker):
    """A slot held under a task's id by an execution that died on another host (its message then
    delivered here again) is not renewed by this worker, where the copy waits in its process as
    a running task of that id: the slot's lease lapses and the copy runs, as it does when it
    waits in the broker."""
    manager = _full_pool(env)
    app = env.app(lease_seconds=1.5)  # this worker renews its running tasks' slots every 0.5 s
    with run_worker(app, concurrency=2):
        manager.store.acquire(
            INSTANCE,
            "the-id",
            lease=2,
            info={"task_name": "t.hold", "instance": INSTANCE, "hostname": "gone", "pid": 1},
        )
        copy = app.tasks["t.hold"].apply_async(("copy", 0), task_id="the-id")
        assert copy.get(timeout=25) == "copy"
    assert [label for label, _ in env.probe().starts()] == ["copy"]


def test_a_worker_renews_the_slots_its_own_processes_hold_and_no_others():
    """Which held slots a worker renews, by the process each holder recorded: a prefork child's
    pid, this process for threads, solo and green pools (whose ``worker_pid`` is a greenlet's
    id), any one of two running requests of one id; not a slot held under a running task's id in
    another child or on another host (a copy waits here for a dead execution's slot)."""
    here = os.getpid()

    def running(task_id: str, pid: int) -> Any:
        return SimpleNamespace(id=task_id, hostname="w1@h", worker_pid=pid)

    requests = [
        running("prefork", 101),
        running("green", 140_001),  # gevent / eventlet: id(greenlet)
        running("copy-in-another-child", 202),
        running("elsewhere", 303),
        running("twice", 404),
        running("twice", 505),
        running("unrecorded", 606),
    ]
    held = {request.id: "api" for request in requests}
    holders = {
        "prefork": HolderProcess("w1@h", 101),
        "green": HolderProcess("w1@h", here),
        "copy-in-another-child": HolderProcess("w1@h", 999),
        "elsewhere": HolderProcess("w2@h", 303),
        "twice": HolderProcess("w1@h", 505),
    }
    assert slots_held_here(requests, held, holders) == {
        "prefork": "api",
        "green": "api",
        "twice": "api",
        "unrecorded": "api",
    }


def test_a_worker_does_not_renew_a_slot_taken_by_an_earlier_process_of_the_same_pid():
    """A holder record names the process that took the slot by hostname, pid and start: a
    running process of that pid that started at another time (a restarted container counts its
    pids the same way again) is not the holder, so the dead holder's slot is not renewed."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = process_start(child.pid)
        assert started is not None, "this test reads /proc/<pid>/stat"
        requests = [
            SimpleNamespace(id=task_id, hostname="w1@h", worker_pid=child.pid)
            for task_id in ("this-process", "an-earlier-one", "unknown-start")
        ]
        held = {request.id: "api" for request in requests}
        holders = {
            "this-process": HolderProcess("w1@h", child.pid, started),
            "an-earlier-one": HolderProcess("w1@h", child.pid, started - 1),
            "unknown-start": HolderProcess("w1@h", child.pid, None),
        }
        assert slots_held_here(requests, held, holders) == {
            "this-process": "api",
            "unknown-start": "api",
        }
    finally:
        child.kill()
        child.wait()


class _Request:
    """A running request as the lease keeper sees it (hashable, as Celery's are)."""

    def __init__(self, task_id: str, pid: int | None) -> None:
        self.id, self.worker_pid = task_id, pid
        self.hostname, self.task_name = "w1@h", "t.call_api"


@pytest.mark.parametrize(("copy_pid", "ended"), [(202, True), (101, False)])
def test_an_ended_execution_is_found_beside_a_copy_of_its_task(env, copy_pid, ended):
    """A watched execution that ended is found ended (so the slot it left is abandoned) though a
    copy of its task runs here in another process; with the copy in the same process, which may
    hold the slot now under the same pid, it stays watched until the copy ends."""
    keeper = LeaseKeeper(env.app())
    first, copy = _Request("t", 101), _Request("t", copy_pid)
    keeper.watch(first)
    worker_state.active_requests.add(copy)
    try:
        assert keeper._ended() == ([first] if ended else [])
    finally:
        worker_state.active_requests.discard(copy)
    assert keeper._ended() == ([] if ended else [first])


@pytest.mark.parametrize(("next_pid", "ended"), [(202, True), (101, False)])
def test_an_ended_execution_waits_while_the_next_of_its_id_is_being_placed(env, next_pid, ended):
    """The next message of a task (its hand-off, its retry) may start in the process where the
    execution before it ended, and claim a slot there under the same pid before Celery records
    where it runs: while a request of its id is reserved and no process has accepted it, the
    slot of the ended execution is not abandoned (it is asked about again next second). Once
    the request is placed in another process, it is; placed in that process, it is its own."""
    manager = env.manager()
    manager.create("api", limit=1)
    manager.assign(INSTANCE, "api")
    holder = {"task_name": "t.call_api", "instance": INSTANCE, "hostname": "w1@h", "pid": 101}
    manager.store.acquire(INSTANCE, "t", lease=60, info=holder)  # as the next one claims it
    keeper = LeaseKeeper(env.app())
    first, following = _Request("t", 101), _Request("t", None)
    keeper.watch(first)
    worker_state.reserved_requests.add(following)
    try:
        keeper._abandon_ended()
        assert [h.task_id for h in manager.status("api").holders] == ["t"]
        assert keeper._unsettled  # asked about again next second
        following.worker_pid = next_pid
        worker_state.active_requests.add(following)
        keeper._abandon_ended()
    finally:
        worker_state.reserved_requests.discard(following)
        worker_state.active_requests.discard(following)
    status = manager.status("api")
    assert [h.task_id for h in status.holders] == ([] if ended else ["t"])
    assert [a.task_id for a in status.abandoned] == (["t"] if ended else [])


def test_an_execution_that_ended_in_the_workers_own_process_is_let_go_of(env):
    """In threads and solo pools a task runs in the worker's own process, where its release
    always runs: the keeper lets go of it without abandoning anything, so a retry of the same id
    (same pid) that takes a slot meanwhile keeps it."""
    keeper = LeaseKeeper(env.app())
    keeper.watch(_Request("retried", os.getpid()))
    assert keeper._ended() == []
    assert keeper._watched == {}


def test_an_ended_execution_is_asked_about_again_while_redis_is_unreachable(env):
    """With the pools' Redis unreachable, an execution found ended is asked about again each
    second while its lease runs, and let go of after a third of the lease (its lease lapses
    on its own by then)."""
    env.pools_url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    keeper = LeaseKeeper(env.app())
    keeper.watch(_Request("t", 101))
    keeper._abandon_ended()
    assert [(end.task_id, end.pid, end.hostname) for end in keeper._unsettled] == [
        ("t", 101, "w1@h")
    ]
    keeper._abandon_ended()  # still unreachable, still within the lease
    assert [end.task_id for end in keeper._unsettled] == ["t"]
    keeper.lease_interval = 0.0
    keeper._abandon_ended()
    assert keeper._unsettled == []


def test_where_an_ended_execution_ran_is_known_before_and_after_the_keeper_lets_go(env):
    """Celery's ending signals ask where an execution ran after its request has left the active
    ones: the keeper answers whether or not it has let go of the request yet (it remembers for
    ten seconds), its process first, then the worker's own (threads and green pools), and
    never a process where a request of that id runs now (a retry there takes its own slot)."""
    keeper = LeaseKeeper(env.app())
    here = os.getpid()
    keeper.watch(_Request("t", 101))
    assert keeper.ended_processes("t") == [(101, "w1@h"), (here, "w1@h")]
    assert keeper._ended()  # let go of: remembered
    assert keeper._watched == {}
    assert keeper.ended_processes("t") == [(101, "w1@h"), (here, "w1@h")]
    assert keeper.ended_processes("other") == []
    retry = _Request("t", 101)
    worker_state.active_requests.add(retry)
    try:
        assert keeper.ended_processes("t") == [(here, "w1@h")]
    finally:
        worker_state.active_requests.discard(retry)
    when, processes = keeper._let_go["t"]
    keeper._let_go["t"] = (when - 10.0, processes)
    keeper._let_go_order[0] = (when - 10.0, "t")
    keeper._ended()
    assert keeper.ended_processes("t") == []


@pytest.mark.parametrize(
    ("first", "retries", "expected"),
    [(None, 0, 12.5), (11.0, 0, None), (None, 1, None)],
    ids=["first run", "asked before", "a retry"],
)
def test_only_the_first_run_of_a_call_published_as_usual_keeps_its_publication(
    first, retries, expected
):
    """A call published as usual passes tasks parked after its publication (acquire.lua) and
    parks at its publication's place (park.lua) only as it first runs: a later attempt asked
    already, and a retry (Task.retry copies the headers) is a new request."""
    execution = Execution(SimpleNamespace(retries=retries), Caller("t", "id", INSTANCE), (), {})
    state = WaitState(first=first, published=12.5)
    assert execution.published(state) == expected
