"""Limits, crashes, kills and time limits with real ``celery worker`` subprocesses (prefork)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from bench.fake_api import FakeAPI
from tests.support.polling import wait_until
from tests.support.redis_server import RedisServer
from tests.support.worker_process import WorkerProcess
from tests.workerapp import INSTANCE

pytestmark = pytest.mark.slow


def _pool(env, limit, timeout=30.0):
    manager = env.manager()
    manager.create("api", limit=limit, timeout=timeout)
    manager.assign(INSTANCE, "api")
    return manager


def _started(env, label):
    return label in {name for name, _ in env.probe().starts()}


def _held_alone(env, label, seconds):
    """A pool of 1 (2 s leases) held by task ``label`` for ``seconds`` on a worker of one
    process that consumes a queue of its own (it cannot prefetch the other tasks' messages),
    once its body started: the pool's manager, the app, that worker and the task's result."""
    env.lease_seconds = 2.0
    manager = _pool(env, limit=1)
    app = env.app()
    worker = env.worker(concurrency=1, queues=f"{env.queue}-{label}")
    result = app.tasks["t.hold"].apply_async((label, seconds), queue=f"{env.queue}-{label}")
    wait_until(lambda: _started(env, label), 30, message=f"{label} never started")
    return manager, app, worker, result


def test_three_prefork_workers_never_exceed_the_limit(env):
    _pool(env, limit=3)
    for _ in range(3):
        env.worker(concurrency=4)
    app = env.app()
    results = [app.tasks["t.hold"].delay(f"t{i}", 0.2) for i in range(60)]
    assert [r.get(timeout=180) for r in results] == [f"t{i}" for i in range(60)]
    probe = env.probe()
    assert probe.count() == 60
    assert probe.max_concurrency() == 3


def test_sigkill_of_the_holder_frees_its_slot_after_the_lease(env):
    manager, app, doomed, _ = _held_alone(env, "doomed", 60)
    survivor = env.worker(concurrency=2)
    waiter = app.tasks["t.hold"].delay("waiter", 0)
    wait_until(lambda: waiter.state == "RETRY", 30, message="waiter never waited")
    assert len(manager.status("api").holders) == 1
    killed_at = time.monotonic()
    doomed.kill()
    assert waiter.get(timeout=30) == "waiter"
    freed_after = time.monotonic() - killed_at
    # Lease 2 s; the waiter retries at most every 0.5 s; allow for scheduling.
    assert freed_after <= 2.0 + 0.5 + 2.5, freed_after
    survivor.wait_for_log(r"reclaimed a slot of pool 'api' from task t\.hold", timeout=10)


def test_a_lease_lapsed_while_its_worker_was_frozen_is_taken_and_left_to_its_new_holder(env):
    """A worker whose main process is frozen (SIGSTOP) cannot renew its running task's lease:
    the lease lapses and a task on another worker takes the slot (the API then sees both calls:
    the lease bounds how long a holder that cannot be reached keeps its slot). When the frozen
    worker runs again and its task ends, neither its renewals nor its release take the slot
    back or free it: the next task waits for the new holder."""
    manager, app, frozen, first = _held_alone(env, "first", 5.0)
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        env.worker(concurrency=2)
        second = app.tasks["t.hold"].delay("second", 4.0)
        wait_until(lambda: _started(env, "second"), 30, message="the lapsed slot was never taken")
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    assert first.get(timeout=30) == "first"
    assert [h.task_id for h in manager.status("api").holders] == [second.id]
    third = app.tasks["t.hold"].delay("third", 0)
    assert second.get(timeout=30) == "second"
    assert third.get(timeout=30) == "third"
    ends = {label: at for kind, label, at, _ in env.probe().events() if kind == "end"}
    assert dict(env.probe().starts())["third"] >= ends["second"]
    assert manager.status("api").in_use == 0


def test_a_long_task_keeps_its_slot_past_the_lease(env):
    env.lease_seconds = 1.0
    manager = _pool(env, limit=1)
    app = env.app()
    env.worker(concurrency=2)
    long_task = app.tasks["t.hold"].delay("long", 4.0)
    wait_until(lambda: _started(env, "long"), 30, message="long task never started")
    other = app.tasks["t.hold"].delay("other", 0)
    assert long_task.get(timeout=30) == "long"
    assert other.get(timeout=30) == "other"
    events = env.probe().events()
    assert max(n for kind, _, _, n in events if kind == "start") == 1
    assert manager.status("api").in_use == 0


def test_soft_time_limit_releases_the_slot(env):
    manager = _pool(env, limit=1)
    app = env.app()
    env.worker(concurrency=2)
    soft = app.tasks["t.soft_limit"].apply_async(("soft", 10), soft_time_limit=1)
    with pytest.raises(SoftTimeLimitExceeded):
        soft.get(timeout=30)
    # Released by the task's own exit path, long before the 60 s lease could lapse.
    assert manager.status("api").in_use == 0
    assert app.tasks["t.hold"].delay("next", 0).get(timeout=30) == "next"


GRACE = 3.0


def _start_victim(env, app, ending):
    """Start the task each ending ends: a hard time limit of 3 s, or one to kill or terminate."""
    if ending == "time_limit":
        return app.tasks["t.sleep_hard_limit"].apply_async(("victim", 30), time_limit=3)
    return app.tasks["t.hold"].delay("victim", 30)


@pytest.mark.parametrize(
    ("ending", "why"),
    [
        ("sigkill", ("WorkerLostError",)),
        ("time_limit", ("TimeLimitExceeded",)),
        # Celery reports a terminated task both as revoked and, its process gone, as lost.
        ("terminate", ("revoke(terminate=True)", "WorkerLostError")),
    ],
)
def test_a_holder_that_ends_without_releasing_keeps_its_slot_through_the_grace(env, ending, why):
    """Its call may still be in flight: the slot stays taken (abandoned) until the grace ends,
    shown in the status and counted; then the next task takes it."""
    env.extra_worker_env["CP_ABANDONED_GRACE_SECONDS"] = str(GRACE)
    manager = _pool(env, limit=1)
    app = env.app()
    worker = env.worker(concurrency=2)
    victim = _start_victim(env, app, ending)
    wait_until(lambda: _started(env, "victim"), 30, message="victim never started")
    (holder,) = manager.status("api").holders
    if ending == "sigkill":
        worker.kill_child(holder.pid)
    elif ending == "terminate":
        app.control.revoke(victim.id, terminate=True, signal="SIGKILL")
    wait_until(lambda: manager.status("api").abandoned, 15, message="slot never abandoned")
    status = manager.status("api")
    (slot,) = status.abandoned
    assert (slot.task_id, slot.pid, slot.hostname) == (victim.id, holder.pid, holder.hostname)
    assert slot.why in why
    assert slot.until - slot.abandoned == pytest.approx(GRACE, abs=0.01)
    assert (status.in_use, status.free, status.holders) == (1, 0, [])
    nxt = app.tasks["t.hold"].delay("next", 0)
    assert nxt.get(timeout=30) == "next"
    # It started only once the grace had ended (both clocks are the same Redis server's).
    started = dict(env.probe().starts())["next"]
    assert started >= slot.until, (started, slot.until)
    metrics = manager.metrics("api")
    assert (metrics.abandoned, metrics.abandoned_expired) == (1, 1)
    assert metrics.status.abandoned == []
    worker.wait_for_log(
        rf"t\.\w+\[{victim.id}\] ended without releasing its slot \(.*\) on host .*, pid "
        rf"{holder.pid}: its call may "
        r"still be in flight",
        timeout=10,
    )


def _held_by_the_copy(manager, task_id):
    status = manager.status("api")
    holders = [(h.task_id, h.hostname) for h in status.holders]
    return holders == [(task_id, "copy@elsewhere")] and status.abandoned == []


def test_a_time_limit_leaves_alone_the_slot_a_copy_of_its_task_holds_elsewhere(env):
    """A hard time limit abandons only the slot of the process it killed: when the task's id
    holds a slot as a copy on another worker by then, that slot is the copy's (its call runs)."""
    manager = _pool(env, limit=2)
    app = env.app()
    worker = env.worker(concurrency=1)
    (child,) = worker.child_pids()
    victim = app.tasks["t.yield_to_copy"].apply_async(("victim", 30), time_limit=2)
    worker.wait_for_log(
        rf"t\.yield_to_copy\[{victim.id}\] ended \(TimeLimitExceeded\) holding no slot; its id "
        r"holds one of pool 'api' that this execution had not taken up",
        timeout=30,
    )
    # Its process, told to end (SIGTERM, then SIGKILL), does not release the copy's slot either.
    wait_until(lambda: child not in worker.child_pids(), 10, message="the child never ended")
    assert _held_by_the_copy(manager, victim.id)


def test_a_revoke_before_the_start_leaves_alone_the_slot_a_copy_holds_elsewhere(env):
    """A task revoked before it started made no call: only what was handed to it and never
    taken up is released, never the slot its id holds as a running copy on another worker."""
    manager = _pool(env, limit=2)
    app = env.app()
    worker = env.worker(concurrency=1)
    task_id = "revoked-with-a-running-copy"
    copy = {"task_name": "t.hold", "instance": INSTANCE, "hostname": "copy@elsewhere", "pid": 1}
    manager.store.acquire(INSTANCE, task_id, lease=60, info=copy)
    assert app.control.revoke(task_id, reply=True, timeout=10)
    app.tasks["t.hold"].apply_async(("revoked", 0), task_id=task_id)
    worker.wait_for_log(
        rf"t\.hold\[{task_id}\] ended \(revoke\) holding no slot; its id holds one of pool "
        r"'api' that this execution had not taken up",
        timeout=30,
    )
    assert _held_by_the_copy(manager, task_id)
    assert not _started(env, "revoked")


def test_release_frees_an_abandoned_slot_at_once(env):
    env.extra_worker_env["CP_ABANDONED_GRACE_SECONDS"] = "120"
    manager = _pool(env, limit=1)
    app = env.app()
    worker = env.worker(concurrency=2)
    victim = app.tasks["t.hold"].delay("victim", 30)
    wait_until(lambda: _started(env, "victim"), 30, message="victim never started")
    worker.kill_child(manager.status("api").holders[0].pid)
    wait_until(lambda: manager.status("api").abandoned, 15, message="slot never abandoned")
    nxt = app.tasks["t.hold"].delay("next", 0)
    wait_until(lambda: nxt.state == "RETRY", 30, message="next never waited")
    freed = manager.release(victim.id)
    assert (freed.pool, freed.abandoned) == ("api", True)
    # Far inside the 120 s grace.
    assert nxt.get(timeout=20) == "next"
    assert manager.metrics("api").abandoned_released == 1


def test_warm_shutdown_lets_the_task_finish_and_release(env):
    manager = _pool(env, limit=1)
    app = env.app()
    worker = env.worker(concurrency=1)
    task = app.tasks["t.hold"].delay("finishing", 1.5)
    wait_until(lambda: _started(env, "finishing"), 30, message="task never started")
    worker.stop(timeout=30)
    assert task.get(timeout=10) == "finishing"
    assert manager.status("api").in_use == 0


def test_a_warm_shutdown_keeps_the_slots_of_the_tasks_it_waits_for(env):
    """A worker told to stop lets its running tasks finish, and their slots stay theirs until
    then (their leases renewed): no task of another worker starts beside them."""
    manager, app, stopping, long_task = _held_alone(env, "long", 6.0)
    env.worker(concurrency=2)
    other = app.tasks["t.hold"].delay("other", 0)
    wait_until(lambda: manager.status("api").waiting == 1, 30, message="other never waited")
    stopper = threading.Thread(target=stopping.stop, kwargs={"timeout": 60})
    stopper.start()
    try:
        assert long_task.get(timeout=30) == "long"
        assert other.get(timeout=30) == "other"
    finally:
        stopper.join(60)
    assert env.probe().max_concurrency() == 1
    assert manager.status("api").in_use == 0


def test_solo_workers_share_one_limit(env):
    _pool(env, limit=1)
    for _ in range(2):
        env.worker(concurrency=1, pool="solo")
    app = env.app()
    results = [app.tasks["t.hold"].delay(f"s{i}", 0.2) for i in range(6)]
    assert [r.get(timeout=60) for r in results] == [f"s{i}" for i in range(6)]
    assert env.probe().max_concurrency() == 1


def test_redis_down_while_tasks_wait_runs_nothing_unthrottled(redis_server, private_env):
    env = private_env
    # A pools Redis that, like a production one, keeps its data across a crash.
    pools_redis = RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"])
    pools_redis.start()
    try:
        env.pools_url = pools_redis.url(3)
        manager = _pool(env, limit=1, timeout=120)
        app = env.app()
        env.worker(concurrency=4)
        blocker = app.tasks["t.hold"].delay("blocker", 2.0)
        wait_until(lambda: _started(env, "blocker"), 30, message="blocker never started")
        waiters = [app.tasks["t.hold"].delay(f"w{i}", 0.2) for i in range(3)]
        wait_until(lambda: manager.status("api").waiting == 3, 30, message="never waited")
        pools_redis.kill()
        # The blocker ends while Redis is down (its release fails); nobody else may start.
        assert blocker.get(timeout=30) == "blocker"
        down_since = time.monotonic()
        while time.monotonic() - down_since < 3:
            assert env.probe().count() == 1, "a task ran while the pools' Redis was down"
            time.sleep(0.2)
        pools_redis.restart()
        for waiter in waiters:
            assert waiter.get(timeout=90).startswith("w")
        assert env.probe().max_concurrency() == 1
    finally:
        pools_redis.cleanup()


def test_worker_refuses_to_start_without_a_redis_for_pools(env):
    worker = WorkerProcess(
        "tests.workerapp",
        env={**env.worker_env(), "CP_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//"}
        | {"CP_POOLS_URL": ""},
        concurrency=1,
        queues=env.queue,
    )
    worker.spawn()
    code = worker.wait_exit(timeout=60)
    assert code != 0
    assert "pools_redis_url" in worker.log_text()


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="needs Linux's smaps")
def test_a_childs_garbage_collection_does_not_copy_the_main_processs_memory(env):
    """Before forking, the main process's objects are frozen out of the collector: a full
    collection in a fresh child then writes to none of them, so it copies (almost) nothing."""
    frozen = env.worker(concurrency=1)
    copied = env.app().tasks["t.gc_copy"].delay().get(timeout=30)
    frozen.stop()
    env.extra_worker_env["CP_FREEZE_GC"] = "0"
    env.worker(concurrency=1)
    unfrozen = env.app().tasks["t.gc_copy"].delay().get(timeout=30)
    assert copied["frozen"] > 10_000  # the app, Celery, kombu... are left out
    assert unfrozen["frozen"] == 0
    # Without freezing, the collection touches every inherited object and copies its page.
    assert unfrozen["copied_kb"] > 8 * 1024, unfrozen
    assert copied["copied_kb"] < unfrozen["copied_kb"] / 4, (copied, unfrozen)


def test_a_child_killed_mid_call_with_acks_late_keeps_its_slot_and_its_copy_waits(env):
    """With acks_late and task_reject_on_worker_lost Celery sends no signal for a killed child
    and delivers its message again at once. The worker finds the slot its task left within a
    second or so, however long the lease (not at its next renewal, a third of the lease later),
    abandons it, and the copy waits out the grace: the API, which still serves the dead child's
    call, never sees two at once."""
    env.lease_seconds = 60.0
    env.extra_worker_env.update(CP_ACKS_LATE="1", CP_ABANDONED_GRACE_SECONDS="4")
    manager = _pool(env, limit=1)
    app = env.app()
    worker = env.worker(concurrency=2)
    with FakeAPI(cap=1) as api:
        victim = app.tasks["t.call_api"].delay("victim", api.url, 3000)
        wait_until(api.in_flight, 30, message="the call never started")
        (call,) = api.in_flight()
        worker.kill_child(call.pid)
        wait_until(
            lambda: manager.status("api").abandoned,
            5,
            message="the slot was not abandoned within 5 s of the kill (lease 60 s)",
        )
        (slot,) = manager.status("api").abandoned
        assert (slot.task_id, slot.pid, slot.why) == (victim.id, call.pid, "lost")
        assert victim.get(timeout=60) == "victim"
    calls = api.calls()
    assert [c.task for c in calls] == [victim.id, victim.id]  # the killed call, then the copy
    assert (api.max_in_flight, api.refused) == (1, 0)
    assert calls[1].started >= calls[0].ended  # the copy waited for the dead call to end
    worker.wait_for_log(rf"\[{victim.id}\] ended without releasing its slot \(lost\)", timeout=10)
