"""PooledTask behaviour with a real Redis and an in-process worker (threads pool)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import pytest
from celery import chain, chord
from celery.result import AsyncResult

from celery_pools import (
    PoolClearedError,
    PoolDeletedError,
    PoolFullError,
    PoolTimeoutError,
    UnassignedInstanceError,
    signals,
)
from celery_pools.store import AcquireStatus
from tests.support.polling import wait_until
from tests.workerapp import INSTANCE


def _pool(env: Any, limit: int, timeout: float = 30.0, name: str = "api") -> Any:
    manager = env.manager()
    manager.create(name, limit=limit, timeout=timeout)
    manager.assign(INSTANCE, name)
    return manager


def _errbacks(env: Any) -> list[str]:
    client = env.probe().client
    return list(client.lrange(f"probe:{env.name}:errbacks", 0, -1))


def test_concurrency_never_exceeds_the_limit_and_reaches_it(env, run_worker):
    _pool(env, limit=2)
    app = env.app()
    with run_worker(app, concurrency=6):
        results = [app.tasks["t.hold"].delay(f"task-{i}", 0.3) for i in range(10)]
        assert [r.get(timeout=60) for r in results] == [f"task-{i}" for i in range(10)]
    probe = env.probe()
    assert probe.count() == 10
    assert probe.max_concurrency() == 2


def test_task_with_max_retries_zero_waits_for_a_slot_and_succeeds(env, run_worker):
    manager = _pool(env, limit=1)
    app = env.app()
    with run_worker(app, concurrency=3):
        blocker = app.tasks["t.hold"].delay("blocker", 1.5)
        wait_until(lambda: env.probe().current() == 1, 10, message="blocker never started")
        waiter = app.tasks["t.no_retries"].delay("patient")
        # While it waits its state is RETRY, with the pool as the reason.
        # State and reason read together: the next attempt may store STARTED at any moment.
        meta = wait_until(
            lambda: (m := app.backend.get_task_meta(waiter.id))["status"] == "RETRY" and m,
            10,
            message="waiter never went to RETRY",
        )
        reason = app.backend.exception_to_python(meta["result"])
        assert isinstance(reason, PoolFullError)
        assert "'api'" in str(reason)
        assert [w.task_id for w in manager.status("api").waiters] == [waiter.id]
        assert waiter.get(timeout=30) == "patient"
        assert blocker.get(timeout=30) == "blocker"
    # Waiting spent none of the task's retries: it ran once, as attempt 0.
    assert waiter.retries == 0
    assert env.probe().max_concurrency() == 1


def test_chain_and_chord_of_pooled_tasks_complete_with_the_right_results(env, run_worker):
    _pool(env, limit=1)
    app = env.app()
    add, total = app.tasks["t.add"], app.tasks["t.total"]
    with run_worker(app, concurrency=4):
        chained = chain(add.s(1, 2), add.s(3), add.s(4)).apply_async()
        chorded = chord([add.s(i, i) for i in range(5)], total.s()).apply_async()
        assert chained.get(timeout=60) == 10
        assert chorded.get(timeout=60) == 20
    assert env.probe().max_concurrency() == 1


def test_timeout_fails_with_pool_timeout_error_and_runs_link_error_not_the_body(env, run_worker):
    _pool(env, limit=1, timeout=2)
    app = env.app()
    with run_worker(app, concurrency=3):
        app.tasks["t.hold"].delay("blocker", 6)
        wait_until(lambda: env.probe().current() == 1, 10, message="blocker never started")
        started = time.monotonic()
        late = app.tasks["t.hold"].apply_async(
            ("late", 0), link_error=app.tasks["t.record_error"].s()
        )
        with pytest.raises(PoolTimeoutError) as caught:
            late.get(timeout=30)
        waited = time.monotonic() - started
    assert 1.8 <= waited <= 4.5, waited
    message = str(caught.value)
    assert "'api'" in message
    assert "limit 1" in message
    assert "waited 2." in message or "waited 1.9" in message
    assert "late" not in {label for label, _ in env.probe().starts()}
    wait_until(lambda: _errbacks(env), 10, message="link_error never ran")
    assert _errbacks(env)[0].startswith(f"{late.id}|PoolTimeoutError|")


def test_slot_is_released_when_the_body_raises_or_retries_itself(env, run_worker):
    manager = _pool(env, limit=1)
    app = env.app()
    with run_worker(app, concurrency=2):
        with pytest.raises(RuntimeError, match="boom b1"):
            app.tasks["t.boom"].delay("b1").get(timeout=30)
        assert manager.status("api").in_use == 0
        assert app.tasks["t.self_retry"].delay("r1").get(timeout=30) == "r1"
        assert manager.status("api").in_use == 0
        # The pool is usable afterwards: nothing leaked.
        assert app.tasks["t.hold"].delay("after", 0).get(timeout=30) == "after"
    assert manager.status("api").in_use == 0


def test_slot_is_released_when_the_body_ends_with_ignore_or_reject(env, run_worker):
    manager = _pool(env, limit=1)
    app = env.app()
    with run_worker(app, concurrency=2):
        ignored = app.tasks["t.give_up"].delay("ignored", "ignore")
        rejected = app.tasks["t.give_up"].delay("rejected", "reject")
        wait_until(lambda: env.probe().count() == 2, 15, message="bodies never ran")
        wait_until(lambda: manager.status("api").in_use == 0, 10, message="slot not released")
        # The pool is usable afterwards: both releases happened.
        assert app.tasks["t.hold"].delay("after", 0).get(timeout=30) == "after"
    assert "SUCCESS" not in {ignored.state, rejected.state}
    assert env.probe().max_concurrency() == 1


def test_raising_the_limit_at_run_time_lets_waiting_tasks_in(env, run_worker):
    manager = _pool(env, limit=1)
    app = env.app()
    with run_worker(app, concurrency=6):
        results = [app.tasks["t.hold"].delay(f"h{i}", 2.0) for i in range(4)]
        wait_until(lambda: manager.status("api").waiting == 3, 10, message="3 never waited")
        assert env.probe().max_concurrency() == 1
        manager.update("api", limit=4)
        wait_until(lambda: env.probe().current() == 4, 5, message="raise not obeyed")
        for result in results:
            result.get(timeout=30)
    assert env.probe().max_concurrency() == 4


def test_lowering_the_limit_never_stops_running_tasks_and_gates_new_ones(env, run_worker):
    manager = _pool(env, limit=3)
    app = env.app()
    with run_worker(app, concurrency=8):
        first = [app.tasks["t.hold"].delay(f"first{i}", 1.5) for i in range(3)]
        wait_until(lambda: env.probe().current() == 3, 10, message="first three never ran")
        manager.update("api", limit=1)
        lowered_at = manager.status("api").now
        later = [app.tasks["t.hold"].delay(f"later{i}", 0.2) for i in range(4)]
        assert [r.get(timeout=60) for r in first] == [f"first{i}" for i in range(3)]
        assert [r.get(timeout=60) for r in later] == [f"later{i}" for i in range(4)]
    # No start after the change happened while anything else was running.
    for kind, label, when, running in env.probe().events():
        if kind == "start" and when > lowered_at:
            assert label.startswith("later")
            assert running == 1, (label, running)


@pytest.mark.parametrize("wait", ["countdown", "handoff"])
def test_a_copy_of_a_running_task_waits_for_it_to_end(env, run_worker, wait):
    """One execution per slot: a second message with the id of a running task (a redelivery
    past the visibility timeout) waits, with a free slot beside it, until the first ends."""
    manager = _pool(env, limit=2)
    manager.update("api", wait=wait)
    app = env.app()
    hold = app.tasks["t.hold"]
    # An id of its own: a result stored under an id an earlier test used would answer get().
    task_id = f"same-{uuid.uuid4()}"
    with run_worker(app, concurrency=4):
        original = hold.apply_async(("original", 1.5), task_id=task_id)
        wait_until(lambda: env.probe().current() == 1, 10, message="original never started")
        hold.apply_async(("copy", 0.1), task_id=task_id)
        wait_until(
            lambda: [w.task_id for w in manager.status("api").waiters] == [task_id],
            10,
            message="the copy never waited",
        )
        status = manager.status("api")
        assert ([h.task_id for h in status.holders], status.in_use, status.free) == (
            [task_id],
            1,
            1,
        )
        assert original.get(timeout=30) == "original"
        wait_until(
            lambda: "copy" in {label for label, _ in env.probe().starts()},
            20,
            message="the copy never ran after the original",
        )
        wait_until(lambda: manager.status("api").in_use == 0, 10, message="slot kept")
    events = env.probe().events()
    assert [(kind, label) for kind, label, _, _ in events] == [
        ("start", "original"),
        ("end", "original"),
        ("start", "copy"),
        ("end", "copy"),
    ]
    assert env.probe().max_concurrency() == 1


def test_a_task_whose_lease_lapsed_leaves_its_slot_to_the_copy_that_took_it(
    env, run_worker, caplog
):
    """A running task's lease lapsed (its worker could not renew it in time) and a copy of it
    on another worker took the slot: when the first one ends, the slot stays the copy's, and
    the next task does not start beside the copy's call but waits for it to end."""
    manager = _pool(env, limit=1)
    store = manager.store
    app = env.app()
    hold = app.tasks["t.hold"]
    copy = {"hostname": "w2@elsewhere", "pid": 1, "started": 1, "thread": "1"}
    with caplog.at_level(logging.WARNING, logger="celery_pools"), run_worker(app, concurrency=2):
        # An id of its own: a result stored under an id an earlier test used would answer get().
        task_id = f"lapsed-{uuid.uuid4()}"
        original = hold.apply_async(("original", 3.0), task_id=task_id)
        wait_until(lambda: env.probe().current() == 1, 10, message="original never started")

        def copy_takes_the_slot() -> bool:
            # Its lease lapsed (scored as expired; the worker's keeper may renew it meanwhile,
            # then the copy waits and tries again).
            store.client.zadd(store.keys.pool("api").holders, {task_id: 0}, xx=True)
            taken = store.acquire(INSTANCE, task_id, lease=60, info=copy)
            return taken.status is AcquireStatus.OK

        wait_until(copy_takes_the_slot, 10, message="the copy never took the lapsed slot")
        assert env.probe().current() == 1, "the original ended before the copy took its slot"
        assert original.get(timeout=30) == "original"
        third = hold.delay("third", 0.0)
        wait_until(
            lambda: [w.task_id for w in manager.status("api").waiters] == [third.id],
            10,
            message="the next task did not wait for the copy's slot",
        )
        assert [(h.task_id, h.hostname) for h in manager.status("api").holders] == [
            (task_id, "w2@elsewhere")
        ]
        assert "third" not in {label for label, _ in env.probe().starts()}
        assert store.release(task_id, "api", execution=copy).released  # the copy's call ends
        assert third.get(timeout=30) == "third"
    assert any("held by another execution" in r.getMessage() for r in caplog.records)


def test_unassigned_instance_runs_unlimited_and_warns_once(env, run_worker, caplog):
    app = env.app()
    with caplog.at_level(logging.WARNING, logger="celery_pools"), run_worker(app, concurrency=3):
        results = [app.tasks["t.hold"].delay(f"u{i}", 0.3) for i in range(3)]
        assert [r.get(timeout=30) for r in results] == ["u0", "u1", "u2"]
    warnings = [r for r in caplog.records if "has no pool" in r.getMessage()]
    assert len(warnings) == 1
    assert INSTANCE in warnings[0].getMessage()
    assert env.probe().max_concurrency() == 3


def test_unassigned_instance_is_an_error_when_assignment_is_required(env, run_worker):
    app = env.app(pools_require_assignment=True)
    with run_worker(app, concurrency=1), pytest.raises(UnassignedInstanceError, match=INSTANCE):
        app.tasks["t.hold"].delay("x", 0).get(timeout=30)
    assert env.probe().count() == 0


def test_instance_can_come_from_the_call_and_pools_are_per_instance(env, run_worker):
    manager = env.manager()
    manager.create("one", limit=1)
    manager.create("two", limit=2)
    manager.assign("inst-one", "one")
    manager.assign("inst-two", "two")
    app = env.app()
    hold_on = app.tasks["t.hold_on"]
    with run_worker(app, concurrency=8):
        results = [hold_on.delay(f"one-{i}", 0.3, instance="inst-one") for i in range(3)]
        results += [hold_on.delay(f"two-{i}", 0.3, instance="inst-two") for i in range(4)]
        for result in results:
            result.get(timeout=60)
    events = env.probe().events()
    running = {"one": 0, "two": 0}
    peak = {"one": 0, "two": 0}
    for kind, label, _, _ in events:
        group = label.split("-")[0]
        running[group] += 1 if kind == "start" else -1
        peak[group] = max(peak[group], running[group])
    assert peak == {"one": 1, "two": 2}


def test_clear_ends_waiting_tasks_with_pool_cleared_error(env, run_worker):
    manager = _pool(env, limit=1)
    app = env.app()
    with run_worker(app, concurrency=4):
        blocker = app.tasks["t.hold"].delay("blocker", 2.0)
        wait_until(lambda: env.probe().current() == 1, 10, message="blocker never started")
        waiters = [
            app.tasks["t.hold"].apply_async(
                (f"w{i}", 0), link_error=app.tasks["t.record_error"].s()
            )
            for i in range(2)
        ]
        wait_until(lambda: manager.status("api").waiting == 2, 10, message="never waited")
        result = manager.clear("api")
        assert result.waiters_dropped == 2
        for waiter in waiters:
            with pytest.raises(PoolClearedError):
                waiter.get(timeout=30)
        assert blocker.get(timeout=30) == "blocker"
    assert {label for label, _ in env.probe().starts()} == {"blocker"}
    wait_until(lambda: len(_errbacks(env)) == 2, 10, message="errbacks did not run")


def test_delete_ends_waiters_with_pool_deleted_error_and_lets_holders_finish(env, run_worker):
    manager = _pool(env, limit=1)
    app = env.app()
    with run_worker(app, concurrency=3):
        blocker = app.tasks["t.hold"].delay("blocker", 1.5)
        wait_until(lambda: env.probe().current() == 1, 10, message="blocker never started")
        waiter = app.tasks["t.hold"].delay("waiter", 0)
        wait_until(lambda: manager.status("api").waiting == 1, 10, message="never waited")
        deleted = manager.delete("api")
        assert (deleted.instances, deleted.holders, deleted.waiters) == (1, 1, 1)
        assert manager.pool_of(INSTANCE) is None
        with pytest.raises(PoolDeletedError):
            waiter.get(timeout=30)
        assert blocker.get(timeout=30) == "blocker"


def test_signals_report_acquire_wait_timeout_and_release(env, run_worker):
    _pool(env, limit=1, timeout=1)
    app = env.app()
    seen: list[tuple[str, dict[str, Any]]] = []
    lock = threading.Lock()

    def recorder(name: str) -> Any:
        def receive(sender: Any = None, **kwargs: Any) -> None:
            with lock:
                seen.append((name, kwargs))

        return receive

    receivers = {
        "acquired": recorder("acquired"),
        "waiting": recorder("waiting"),
        "timeout": recorder("timeout"),
        "released": recorder("released"),
    }
    for name, receiver in receivers.items():
        getattr(signals, f"slot_{name}").connect(receiver, weak=False)
    try:
        with run_worker(app, concurrency=3):
            blocker = app.tasks["t.hold"].delay("blocker", 2.5)
            wait_until(lambda: env.probe().current() == 1, 10, message="blocker never started")
            late = app.tasks["t.hold"].delay("late", 0)
            with pytest.raises(PoolTimeoutError):
                late.get(timeout=30)
            blocker.get(timeout=30)
    finally:
        for name, receiver in receivers.items():
            getattr(signals, f"slot_{name}").disconnect(receiver)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for name, kwargs in seen:
        by_kind.setdefault(name, []).append(kwargs)
    acquired = by_kind["acquired"][0]
    assert (acquired["pool"], acquired["instance"], acquired["task_id"]) == (
        "api",
        INSTANCE,
        blocker.id,
    )
    assert acquired["waited"] == 0
    assert all(w["task_id"] == late.id and w["countdown"] > 0 for w in by_kind["waiting"])
    assert by_kind["timeout"][0]["task_id"] == late.id
    assert 0.9 <= by_kind["timeout"][0]["waited"] <= 2.5
    released = by_kind["released"][0]
    assert released["task_id"] == blocker.id
    assert 2.4 <= released["held"] <= 5


def test_eager_apply_takes_a_slot_and_waits_in_process(env):
    manager = _pool(env, limit=1, timeout=5)
    app = env.app()
    hold = app.tasks["t.hold"]
    done = threading.Event()

    def occupy() -> None:
        hold.apply(("eager-blocker", 1.0))
        done.set()

    thread = threading.Thread(target=occupy)
    thread.start()
    wait_until(lambda: env.probe().current() == 1, 10, message="eager blocker never started")
    result = hold.apply(("eager-waiter", 0))
    assert result.get() == "eager-waiter"
    assert done.is_set()
    thread.join()
    assert env.probe().max_concurrency() == 1
    assert manager.status("api").in_use == 0


def test_direct_call_runs_the_body_as_a_plain_function(env):
    _pool(env, limit=1)
    app = env.app()
    assert app.tasks["t.hold"]("direct", 0) == "direct"
    assert env.manager().status("api").in_use == 0


def test_retry_state_and_result_survive_for_the_caller(env, run_worker):
    _pool(env, limit=1)
    app = env.app()
    with run_worker(app, concurrency=2):
        app.tasks["t.hold"].delay("blocker", 1.0)
        wait_until(lambda: env.probe().current() == 1, 10, message="blocker never started")
        waiter = app.tasks["t.hold"].delay("kept-id", 0)
        wait_until(lambda: waiter.state == "RETRY", 10, message="never RETRY")
        # The caller's handle (same task id) sees the final result.
        assert AsyncResult(waiter.id, app=app).get(timeout=30) == "kept-id"
