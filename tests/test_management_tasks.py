"""The ``celery_pools.*`` management tasks, sent by name to real workers against a real Redis."""

from __future__ import annotations

import json
from typing import Any

import pytest
from celery import Celery, Task

from celery_pools import (
    PoolClearedError,
    PoolConfigError,
    PoolDeletedError,
    PooledTask,
    PoolExistsError,
    PoolNotFoundError,
)
from celery_pools.admin_tasks import TASK_NAMES
from tests.support.polling import wait_until
from tests.workerapp import INSTANCE

EXPECTED_NAMES = {
    "celery_pools.create_pool",
    "celery_pools.update_pool",
    "celery_pools.clear_pool",
    "celery_pools.delete_pool",
    "celery_pools.release_slot",
    "celery_pools.assign_instance",
    "celery_pools.unassign_instance",
    "celery_pools.list_pools",
    "celery_pools.pool_status",
    "celery_pools.set_rate_limit",
    "celery_pools.remove_rate_limit",
    "celery_pools.pause_instance",
    "celery_pools.resume_instance",
}


def _send(app: Celery, verb: str, **kwargs: Any) -> Any:
    """Send a management task by name, as a producer without the task code would."""
    return app.send_task(f"celery_pools.{verb}", kwargs=kwargs)


def _defined(pool: Any) -> tuple[str, int, float]:
    """A pool's name, limit and timeout, from a ``Pool`` or its JSON (other fields ignored)."""
    data = pool if isinstance(pool, dict) else pool.model_dump()
    return data["name"], data["limit"], data["timeout"]


def _errbacks(env: Any) -> list[str]:
    return list(env.probe().client.lrange(f"probe:{env.name}:errbacks", 0, -1))


def test_management_tasks_are_registered_when_the_app_is_finalized(env):
    assert set(TASK_NAMES) == EXPECTED_NAMES
    app = env.app()
    assert not app.finalized
    registered = {name for name in app.tasks if name.startswith("celery_pools.")}
    assert registered == EXPECTED_NAMES
    for name in EXPECTED_NAMES:
        task = app.tasks[name]
        assert isinstance(task, Task)
        assert not isinstance(task, PooledTask), name


def test_a_pooled_task_defined_after_finalization_also_registers_them():
    app = Celery("late", set_as_current=False)
    app.finalize()
    assert "celery_pools.create_pool" not in app.tasks

    @app.task(base=PooledTask, connector_instance="x", name="late.task", shared=False)
    def late() -> None: ...

    assert {name for name in app.tasks if name.startswith("celery_pools.")} == EXPECTED_NAMES
    # An app that uses no PooledTask gets none.
    plain = Celery("plain", set_as_current=False)
    plain.finalize()
    assert not [name for name in plain.tasks if name.startswith("celery_pools.")]


def test_every_management_task_changes_redis_and_returns_json(env, run_worker):
    manager = env.manager()
    app = env.app()
    with run_worker(app, concurrency=2):
        created = _send(app, "create_pool", name="api", limit=2, timeout=12.5).get(timeout=30)
        assert _defined(created) == ("api", 2, 12.5)
        assert manager.get("api").limit == 2

        assigned = _send(app, "assign_instance", instance=INSTANCE, pool="api").get(timeout=30)
        assert assigned == {"instance": INSTANCE, "pool": "api", "previous": None}
        assert manager.pool_of(INSTANCE) == "api"

        updated = _send(app, "update_pool", name="api", limit=5).get(timeout=30)
        assert _defined(updated) == ("api", 5, 12.5)
        assert manager.get("api").limit == 5
        retimed = _send(app, "update_pool", name="api", timeout=40).get(timeout=30)
        assert _defined(retimed) == ("api", 5, 40.0)

        status = _send(app, "pool_status", name="api").get(timeout=30)
        assert (status["name"], status["limit"], status["in_use"], status["free"]) == (
            "api",
            5,
            0,
            5,
        )
        assert status["instances"] == [INSTANCE]
        assert status["holders"] == []
        assert status["waiters"] == []

        _send(app, "create_pool", name="other", limit=1).get(timeout=30)
        listed = _send(app, "list_pools").get(timeout=30)
        assert [(s["name"], s["limit"]) for s in listed] == [("api", 5), ("other", 1)]
        json.dumps(listed)  # plain JSON all the way down

        moved = _send(app, "assign_instance", instance=INSTANCE, pool="other").get(timeout=30)
        assert moved["previous"] == "api"
        unassigned = _send(app, "unassign_instance", instance=INSTANCE).get(timeout=30)
        assert unassigned == {"instance": INSTANCE, "pool": None, "previous": "other"}
        assert manager.pool_of(INSTANCE) is None

        cleared = _send(app, "clear_pool", name="api").get(timeout=30)
        assert cleared == {"pool": "api", "waiters_dropped": 0, "holders_released": 0}

        deleted = _send(app, "delete_pool", name="other").get(timeout=30)
        assert deleted == {"pool": "other", "instances": 0, "holders": 0, "waiters": 0}
    assert [pool.name for pool in manager.list()] == ["api"]


BAD_ARGUMENTS = [
    ("create_pool", {"name": "bad name", "limit": 1}, "name"),
    ("create_pool", {"name": "new", "limit": 0}, "limit"),
    ("create_pool", {"name": "new", "limit": 1, "timeout": 301}, "timeout"),
    ("update_pool", {"name": "api", "limit": "3"}, "limit"),
    ("update_pool", {"name": "api", "limit": True}, "limit"),
    ("update_pool", {"name": "api"}, "limit/timeout"),
    ("clear_pool", {"name": "api", "release_held": "yes"}, "release_held"),
    ("assign_instance", {"instance": "", "pool": "api"}, "instance"),
    ("create_pool", {"name": "new", "limit": 1, "wait": "sometimes"}, "wait"),
    ("set_rate_limit", {"instance": INSTANCE, "rate": "60/x"}, "rate limit"),
    ("set_rate_limit", {"instance": INSTANCE, "rate": "60/m", "burst": -1}, "burst"),
    ("pause_instance", {"instance": INSTANCE, "seconds": -5}, "pause seconds"),
]


def test_bad_arguments_fail_the_task_with_pool_config_error_and_write_nothing(env, run_worker):
    manager = env.manager()
    manager.create("api", limit=2)
    before = (manager.list(), manager.associations(), manager.rate_limits())
    app = env.app()
    with run_worker(app, concurrency=2):
        results = [(_send(app, verb, **kwargs), field) for verb, kwargs, field in BAD_ARGUMENTS]
        for result, field in results:
            with pytest.raises(PoolConfigError) as caught:
                result.get(timeout=30)
            assert result.state == "FAILURE"
            assert f"invalid {field}" in str(caught.value)
    assert (manager.list(), manager.associations(), manager.rate_limits()) == before


def test_missing_and_duplicate_pools_fail_with_clear_errors(env, run_worker):
    env.manager().create("api", limit=1)
    app = env.app()
    with run_worker(app, concurrency=1):
        with pytest.raises(PoolNotFoundError, match="no pool named 'nope'"):
            _send(app, "update_pool", name="nope", limit=2).get(timeout=30)
        with pytest.raises(PoolNotFoundError, match="'nope'"):
            _send(app, "assign_instance", instance=INSTANCE, pool="nope").get(timeout=30)
        with pytest.raises(PoolExistsError, match="'api' already exists"):
            _send(app, "create_pool", name="api", limit=3).get(timeout=30)
    assert env.manager().get("api").limit == 1


def test_update_pool_task_growing_the_limit_admits_waiting_tasks_at_once(env, run_worker):
    manager = env.manager()
    manager.create("api", limit=1)
    manager.assign(INSTANCE, "api")
    app = env.app()
    with run_worker(app, concurrency=6):
        results = [app.tasks["t.hold"].delay(f"h{i}", 2.5) for i in range(3)]
        wait_until(lambda: manager.status("api").waiting == 2, 10, message="never waited")
        assert env.probe().current() == 1
        _send(app, "update_pool", name="api", limit=3).get(timeout=30)
        wait_until(lambda: env.probe().current() == 3, 5, message="waiters not admitted")
        assert [r.get(timeout=30) for r in results] == ["h0", "h1", "h2"]
    assert env.probe().max_concurrency() == 3


def test_delete_pool_task_fails_waiters_and_lets_the_holder_finish(env, run_worker):
    manager = env.manager()
    manager.create("api", limit=1)
    manager.assign(INSTANCE, "api")
    app = env.app()
    with run_worker(app, concurrency=3):
        blocker = app.tasks["t.hold"].delay("blocker", 2.5)
        wait_until(lambda: env.probe().current() == 1, 10, message="blocker never started")
        waiter = app.tasks["t.hold"].delay("waiter", 0)
        wait_until(lambda: manager.status("api").waiting == 1, 10, message="never waited")
        deleted = _send(app, "delete_pool", name="api").get(timeout=30)
        assert deleted == {"pool": "api", "instances": 1, "holders": 1, "waiters": 1}
        with pytest.raises(PoolDeletedError, match="'api' was deleted"):
            waiter.get(timeout=30)
        assert blocker.get(timeout=30) == "blocker"
    assert manager.list() == []
    assert manager.associations() == {}
    assert {label for label, _ in env.probe().starts()} == {"blocker"}


@pytest.mark.slow
def test_clear_pool_task_in_a_worker_process_fails_waiting_tasks_through_celery(env):
    manager = env.manager()
    manager.create("api", limit=1)
    manager.assign(INSTANCE, "api")
    worker = env.worker(concurrency=4)
    app = env.app()
    # The blocker outlives the test, however slow the machine; the worker is killed at the end.
    blocker = app.tasks["t.hold"].delay("blocker", 60.0)
    wait_until(lambda: env.probe().current() == 1, 20, message="blocker never started")
    waiters = [
        app.tasks["t.hold"].apply_async((f"w{i}", 0), link_error=app.tasks["t.record_error"].s())
        for i in range(2)
    ]
    wait_until(lambda: manager.status("api").waiting == 2, 20, message="never waited")
    cleared = _send(app, "clear_pool", name="api").get(timeout=30)
    assert cleared == {"pool": "api", "waiters_dropped": 2, "holders_released": 0}
    for waiter in waiters:
        with pytest.raises(PoolClearedError, match="'api' was cleared"):
            waiter.get(timeout=30)
        assert waiter.state == "FAILURE"
    # The holder kept its slot and is still running.
    assert [h.task_id for h in manager.status("api").holders] == [blocker.id]
    assert blocker.state == "STARTED"
    # The waiters' bodies never ran; their link_error callbacks did.
    assert {label for label, _ in env.probe().starts()} == {"blocker"}
    wait_until(lambda: len(_errbacks(env)) == 2, 10, message="link_error did not run")
    assert {line.split("|")[0] for line in _errbacks(env)} == {w.id for w in waiters}
    assert all("|PoolClearedError|" in line for line in _errbacks(env))
    worker.kill()


def test_wait_mode_and_rate_limit_tasks_change_redis_and_return_json(env, run_worker):
    manager = env.manager()
    app = env.app()
    with run_worker(app, concurrency=2):
        created = _send(app, "create_pool", name="api", limit=2, wait="handoff").get(timeout=30)
        assert created["wait"] == "handoff"
        assert manager.get("api").wait == "handoff"
        back = _send(app, "update_pool", name="api", wait="countdown").get(timeout=30)
        assert (back["wait"], manager.get("api").wait) == ("countdown", "countdown")

        limited = _send(app, "set_rate_limit", instance=INSTANCE, rate="60/m", burst=5)
        assert limited.get(timeout=30) == {
            "instance": INSTANCE,
            "count": 60,
            "period": 60.0,
            "burst": 5,
            "rate": "60/m (burst 5)",
        }
        assert str(manager.rate_limits()[INSTANCE]) == "60/m (burst 5)"

        paused = _send(app, "pause_instance", instance=INSTANCE, seconds=30).get(timeout=30)
        (rate,) = manager.rates([INSTANCE])
        assert 29 <= rate.paused_for <= 30
        assert paused["paused_until"] > 0
        _send(app, "resume_instance", instance=INSTANCE).get(timeout=30)
        assert manager.rates([INSTANCE])[0].paused_for == 0

        removed = _send(app, "remove_rate_limit", instance=INSTANCE).get(timeout=30)
        assert removed == {"instance": INSTANCE, "removed": True}
        assert manager.rate_limits() == {}
