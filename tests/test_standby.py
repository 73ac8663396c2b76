"""Standby waiters: the oldest parked tasks of a hand-off pool wait inside a worker, blocked on
Redis, and a freed slot wakes the oldest in one round trip. Counted by the probe, not the pool."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from celery_pools import PoolClearedError, PoolDeletedError, PoolTimeoutError
from celery_pools.store import AcquireStatus, RedisPoolStore, StandbyBlock
from tests.support.polling import wait_until
from tests.support.redis_server import commands_served
from tests.workerapp import INSTANCE


def _pool(env, limit, timeout=30.0):
    manager = env.manager()
    manager.create("api", limit=limit, timeout=timeout, wait="handoff")
    manager.assign(INSTANCE, "api")
    return manager


def _started(env, label):
    return label in {name for name, _ in env.probe().starts()}


def _standbys(manager):
    """The standby records in Redis: task id -> {id, ready, until, pid, ...}."""
    raw = manager.store.client.hgetall(manager.store.keys.pool("api").standby_entry)
    return {token: json.loads(record) for token, record in raw.items()}


def _errbacks(env):
    return env.probe().client.lrange(f"probe:{env.name}:errbacks", 0, -1)


def test_standbys_are_woken_in_fifo_order_and_never_exceed_the_limit(env, run_worker):
    manager = _pool(env, limit=2)
    app = env.app(pools_standby_max=2)
    with run_worker(app, concurrency=8):
        blocker = app.tasks["t.hold"].delay("blocker", 4.0)
        wait_until(lambda: _started(env, "blocker"), 10, message="blocker never started")
        app.tasks["t.hold"].delay("second", 4.0)
        wait_until(lambda: _started(env, "second"), 10, message="second never started")
        labels = [f"w{i}" for i in range(10)]
        results = []
        for label in labels:  # one at a time: a known FIFO order
            results.append(app.tasks["t.hold"].delay(label, 0.1))
            count = len(results)
            wait_until(lambda count=count: manager.status("api").waiting == count, 10)
        # The oldest stand by, blocked in the worker (one while no hold time was measured, at
        # most pools_standby_max); the others stay parked in Redis.
        wait_until(
            lambda: any(r.get("ready") for r in _standbys(manager).values()),
            10,
            message="no standby blocked",
        )
        ids = {r.id: i for i, r in enumerate(results)}
        standing = {ids.get(t, t) for t in _standbys(manager)}
        assert standing == set(range(len(standing)))
        assert manager.status("api").standbys == len(standing)
        blocker.get(timeout=30)
        assert [r.get(timeout=60) for r in results] == labels
    starts = [label for label, _ in env.probe().starts()]
    assert starts[2:] == labels
    assert env.probe().max_concurrency() == 2
    metrics = manager.metrics("api")
    assert metrics.standbys_woken >= 1
    assert metrics.standbys_woken <= metrics.standbys_promoted
    assert manager.status("api").standbys == 0


def test_a_standby_past_its_block_goes_back_to_its_place(env, run_worker):
    manager = _pool(env, limit=1)
    app = env.app(pools_standby_max=1, pools_standby_seconds=0.3)
    with run_worker(app, concurrency=4):
        blocker = app.tasks["t.hold"].delay("blocker", 2.0)
        wait_until(lambda: _started(env, "blocker"), 10, message="blocker never started")
        results = [app.tasks["t.hold"].delay(f"w{i}", 0.0) for i in range(3)]
        wait_until(
            lambda: manager.metrics("api").standbys_returned >= 2,
            15,
            message="no standby went back to the FIFO",
        )
        # Back in the FIFO, its run ended as a parked task's: it is not running its body.
        assert not any(_started(env, f"w{i}") for i in range(3))
        blocker.get(timeout=30)
        assert [r.get(timeout=30) for r in results] == ["w0", "w1", "w2"]
    assert [label for label, _ in env.probe().starts()] == ["blocker", "w0", "w1", "w2"]
    assert env.probe().max_concurrency() == 1


def test_growing_the_pool_wakes_its_standbys_at_once(env, run_worker):
    manager = _pool(env, limit=2)
    app = env.app(pools_standby_max=2)
    with run_worker(app, concurrency=6):
        blockers = [app.tasks["t.hold"].delay(f"blocker{i}", 5.0) for i in range(2)]
        wait_until(lambda: manager.status("api").in_use == 2, 10)
        waiters = [app.tasks["t.hold"].delay(f"w{i}", 0.0) for i in range(2)]
        wait_until(
            lambda: _standbys(manager).get(waiters[0].id, {}).get("ready"),
            10,
            message="the oldest waiter never stood by",
        )
        manager.update("api", limit=4)
        assert [w.get(timeout=3) for w in waiters] == ["w0", "w1"]  # long before the blockers
        assert not any(b.ready() for b in blockers)
        for blocker in blockers:
            blocker.get(timeout=30)
    assert 3 <= env.probe().max_concurrency() <= 4


def test_a_standby_whose_instance_is_paused_gives_its_slot_on_and_runs_after_the_pause(
    env, run_worker
):
    """Paused after its task stood by, an instance's standby is woken, finds the pause when it
    claims, and gives the slot back: the next parked task (another instance) gets it at once, and
    the standby waits by countdown until the pause ends. Standbys are never promoted from a
    paused instance meanwhile."""
    manager = _pool(env, limit=1)
    manager.assign("other", "api")
    app = env.app(pools_standby_max=1)
    hold_on = app.tasks["t.hold_on"]
    with run_worker(app, concurrency=4):
        blocker = hold_on.delay("blocker", 1.0, instance="other")
        wait_until(lambda: _started(env, "blocker"), 10, message="blocker never started")
        paused = hold_on.delay("paused", 0.0, instance=INSTANCE)
        wait_until(
            lambda: _standbys(manager).get(paused.id, {}).get("ready"),
            10,
            message="the paused instance's task never stood by",
        )
        later = hold_on.delay("later", 0.0, instance="other")
        pause_ends = manager.pause(INSTANCE, 2.0)
        assert later.get(timeout=30) == "later"
        assert paused.get(timeout=30) == "paused"
        blocker.get(timeout=30)
    starts = dict(env.probe().starts())
    assert starts["blocker"] < starts["later"] < starts["paused"]
    assert starts["later"] < pause_ends - 0.5  # not held up by the pause
    assert starts["paused"] >= pause_ends - 0.05  # Redis clock and the probe's: both Redis time
    assert env.probe().max_concurrency() == 1
    (metrics,) = manager.store.metrics(["api"])
    assert metrics.handoffs_returned >= 1


@pytest.mark.parametrize("how", ["deadline", "clear", "delete"])
def test_deadline_clear_and_delete_end_standbys_through_the_failure_path(env, run_worker, how):
    manager = _pool(env, limit=1, timeout=1.5 if how == "deadline" else 30.0)
    app = env.app(pools_standby_max=1, pools_standby_seconds=3.0)
    error = {"deadline": PoolTimeoutError, "clear": PoolClearedError, "delete": PoolDeletedError}
    with run_worker(app, concurrency=4):
        app.tasks["t.hold"].delay("blocker", 4.0)
        wait_until(lambda: _started(env, "blocker"), 10, message="blocker never started")
        standby = app.tasks["t.hold"].apply_async(
            ("standby", 0), link_error=app.tasks["t.record_error"].s()
        )
        wait_until(
            lambda: _standbys(manager).get(standby.id, {}).get("ready"),
            10,
            message="the task never stood by",
        )
        if how == "clear":
            manager.clear("api")
        elif how == "delete":
            manager.delete("api")
        with pytest.raises(error[how]):
            standby.get(timeout=30)
        wait_until(lambda: _errbacks(env), 10, message="link_error never ran")
    assert _errbacks(env)[0].startswith(f"{standby.id}|{error[how].__name__}|")
    assert not _started(env, "standby")


@pytest.mark.slow
def test_prefork_standbys_keep_the_limit_and_run_every_task_once(env):
    env.extra_worker_env.update(CP_STANDBY_MAX="3")
    _pool(env, limit=3)
    for _ in range(3):
        env.worker(concurrency=4)
    app = env.app()
    results = [app.tasks["t.hold"].delay(f"t{i}", 0.1) for i in range(60)]
    assert [r.get(timeout=180) for r in results] == [f"t{i}" for i in range(60)]
    probe = env.probe()
    assert probe.count() == 60
    assert probe.max_concurrency() == 3
    assert env.manager().metrics("api").standbys_woken > 0


def _blocked_standby(env, block, blocker):
    """A pool of 1 held by a task for ``blocker`` seconds, and a task blocked as its standby in
    a prefork worker (for ``block`` seconds at most): the pool's manager, the two results and
    the standby's record."""
    env.extra_worker_env.update(CP_STANDBY_MAX="1", CP_STANDBY_SECONDS=str(block))
    manager = _pool(env, limit=1)
    env.worker(concurrency=3)
    app = env.app()
    holding = app.tasks["t.hold"].delay("blocker", blocker)
    wait_until(lambda: _started(env, "blocker"), 30, message="blocker never started")
    standby = app.tasks["t.hold"].delay("standby", 0.0)
    record = wait_until(
        lambda: (
            _standbys(manager).get(standby.id, {}).get("ready") and _standbys(manager)[standby.id]
        ),
        30,
        message="the task never stood by",
    )
    return manager, holding, standby, record


@pytest.mark.slow
def test_sigkill_of_a_blocked_standbys_process_hands_it_on_and_it_runs_once(env):
    manager, blocker, standby, record = _blocked_standby(env, block=1.0, blocker=6.0)
    os.kill(int(record["pid"]), signal.SIGKILL)
    # Its record goes back to the FIFO (block over, 2 s grace), and the task is handed on.
    wait_until(lambda: manager.metrics("api").standbys_returned >= 1, 15)
    blocker.get(timeout=30)
    wait_until(lambda: standby.state == "SUCCESS", 60, message="the standby never ran")
    assert [label for label, _ in env.probe().starts()].count("standby") == 1
    assert env.probe().max_concurrency() == 1


@pytest.mark.slow
def test_a_standby_claims_its_slot_as_it_is_woken_before_its_process_runs_again(env):
    """The claim waits in Redis behind the standby's block: a freed slot handed to a standby
    whose process is stopped is claimed all the same, and the task runs once when it goes on."""
    manager, blocker, standby, record = _blocked_standby(env, block=4.0, blocker=2.0)
    pid = int(record["pid"])
    os.kill(pid, signal.SIGSTOP)
    try:
        blocker.get(timeout=30)
        holder = manager.store.keys.pool("api").holder
        claimed = wait_until(
            lambda: json.loads(manager.store.client.hget(holder, standby.id) or "{}").get(
                "claimed"
            ),
            15,
            message="the slot handed to the stopped standby was not claimed",
        )
        assert claimed == record["id"]
        assert not _started(env, "standby")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert standby.get(timeout=30) == "standby"
    assert [label for label, _ in env.probe().starts()].count("standby") == 1
    assert env.probe().max_concurrency() == 1


def test_a_solo_worker_whose_only_process_stands_by_does_not_deadlock(env, run_worker):
    manager = _pool(env, limit=2)
    app = env.app(pools_standby_max=2, pools_standby_seconds=0.5)
    with run_worker(app, concurrency=1, pool="solo"):
        results = [app.tasks["t.hold"].delay(f"t{i}", 0.05) for i in range(12)]
        assert [r.get(timeout=60) for r in results] == [f"t{i}" for i in range(12)]
    assert env.probe().max_concurrency() <= 2
    assert manager.status("api").in_use == 0


def test_a_revoked_standby_never_runs_and_leaves_no_slot_idle(env, run_worker):
    manager = _pool(env, limit=1)
    app = env.app(pools_standby_max=1)
    with run_worker(app, concurrency=3):
        blocker = app.tasks["t.hold"].delay("blocker", 2.0)
        wait_until(lambda: _started(env, "blocker"), 10, message="blocker never started")
        first = app.tasks["t.hold"].delay("first", 0.5)
        wait_until(lambda: _standbys(manager).get(first.id, {}).get("ready"), 10)
        revoked = app.tasks["t.hold"].delay("revoked", 0.0)  # parked behind the standby
        last = app.tasks["t.hold"].delay("last", 0.0)
        app.control.revoke(revoked.id)
        blocker.get(timeout=30)
        first.get(timeout=30)
        ended = time.monotonic()
        # The revoked task is promoted when first is woken; its message is discarded, and its
        # turn passes at once (not after a hand-off lease of 10 s).
        assert last.get(timeout=30) == "last"
        assert time.monotonic() - ended < 5
    assert not _started(env, "revoked")
    status = manager.status("api")
    assert (status.waiting, status.standbys, status.in_use) == (0, 0, 0)


@pytest.mark.parametrize("where", ["call", "app"])
def test_a_standby_blocks_at_most_a_tenth_of_its_time_limits(env, run_worker, where):
    """The block runs inside the task's execution, which its time limits count: the call's, or
    else the app's (``task_time_limit``, ``task_soft_time_limit``)."""
    manager = _pool(env, limit=1)
    limits = {"task_time_limit": 8, "task_soft_time_limit": 3} if where == "app" else {}
    app = env.app(pools_standby_max=1, pools_standby_seconds=2.0, **limits)
    with run_worker(app, concurrency=3):
        blocker = app.tasks["t.hold"].delay("blocker", 1.5)
        wait_until(lambda: _started(env, "blocker"), 10, message="blocker never started")
        options = {"time_limit": 8, "soft_time_limit": 3} if where == "call" else {}
        limited = app.tasks["t.hold"].apply_async(("limited", 0.0), **options)
        record = wait_until(
            lambda: (
                _standbys(manager).get(limited.id, {}).get("ready")
                and _standbys(manager)[limited.id]
            ),
            10,
            message="the task never stood by",
        )
        assert record["until"] - record["ready"] == 300  # a tenth of the soft limit (ms)
        blocker.get(timeout=30)
        assert limited.get(timeout=30) == "limited"


def _standing(manager):
    """A store, and task "s" standing by in pool "api" (limit 1, held by "holder"): its first
    ask and hand-off id."""
    store = RedisPoolStore(manager.store.client, manager.store.keys, standby_max=1)
    assert store.acquire(INSTANCE, "holder", lease=30).status is AcquireStatus.OK
    full = store.acquire(INSTANCE, "s", lease=30)
    _, parked = store.park("s", pool="api", first=full.first, entry='{"info": {}}')
    (promoted,) = [h for h in parked.handoffs if h.standby]
    standing = store.acquire(
        INSTANCE, "s", lease=30, first=full.first, handoff=promoted.handoff_id, standby=5
    )
    assert (standing.status, standing.reason) == (AcquireStatus.FULL, "standby")
    return store, full.first, promoted.handoff_id


def test_the_acquire_behind_a_block_claims_the_slot_handed_over_while_it_blocks(env):
    manager = _pool(env, limit=1)
    store, first, handoff = _standing(manager)
    answers = []

    def stand_by() -> None:
        answers.append(
            store.acquire(
                INSTANCE, "s", lease=30, first=first, handoff=handoff,
                block=StandbyBlock("api", 4.0),
            )
        )  # fmt: skip

    blocked = threading.Thread(target=stand_by)
    blocked.start()
    wait_until(
        lambda: any(c.get("cmd") == "blpop" for c in store.client.client_list()),
        10,
        message="the standby never blocked",
    )
    store.release("holder", "api", parked_likely=True)
    blocked.join(timeout=10)  # far short of the block's 4 s
    assert not blocked.is_alive()
    (answer,) = answers
    assert (answer.status, answer.reason) == (AcquireStatus.OK, "handoff")
    assert [h.task_id for h in manager.status("api").holders] == ["s"]


def test_the_acquire_behind_a_block_that_ends_sends_the_standby_back_to_its_place(env):
    manager = _pool(env, limit=1)
    store, first, handoff = _standing(manager)
    answer = store.acquire(
        INSTANCE, "s", lease=30, first=first, handoff=handoff, block=StandbyBlock("api", 0.05)
    )
    assert (answer.status, answer.reason) == (AcquireStatus.FULL, "requeued")
    assert store.client.zrange(store.keys.pool("api").queue, 0, -1) == ["s"]
    assert manager.status("api").standbys == 0


def test_an_acquire_behind_a_block_answered_moved_asks_the_right_pool_without_blocking_again(
    env,
):
    manager = _pool(env, limit=1)
    store, first, handoff = _standing(manager)
    manager.create("other", limit=1, wait="handoff")
    manager.assign(INSTANCE, "other")  # the instance moves while its task stands by in "api"
    before = commands_served(store.client, "blpop")
    answer = store.acquire(
        INSTANCE, "s", lease=30, first=first, handoff=handoff, block=StandbyBlock("api", 0.05)
    )
    assert answer.pool == "other"
    assert commands_served(store.client, "blpop") - before == 1


def test_a_block_redis_refuses_is_logged_and_the_acquire_behind_it_runs(env, caplog):
    manager = _pool(env, limit=1)
    store, first, handoff = _standing(manager)
    wake = store.keys.pool("api").wake + "s"
    store.client.set(wake, "not a list")  # BLPOP answers WRONGTYPE
    with caplog.at_level("WARNING", logger="celery_pools.store.wire"):
        answer = store.acquire(
            INSTANCE, "s", lease=30, first=first, handoff=handoff, block=StandbyBlock("api", 4.0)
        )
    assert (answer.status, answer.reason) == (AcquireStatus.FULL, "requeued")
    assert "refused to block" in caplog.text
