"""RabbitMQ as the broker: pools still in Redis, waiting by countdown through AMQP."""

from __future__ import annotations

import os
import socket

import pytest

from tests.conftest import RABBITMQ_URL
from tests.support.polling import wait_until
from tests.workerapp import INSTANCE


def _rabbitmq_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def rabbit_env(env):
    if not _rabbitmq_reachable():
        if os.environ.get("CI"):
            pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672 (required in CI)")
        pytest.skip("RabbitMQ is not reachable on 127.0.0.1:5672")
    env.broker = RABBITMQ_URL
    return env


def test_pool_limit_and_waiting_work_with_rabbitmq_as_the_broker(rabbit_env, run_worker):
    env = rabbit_env
    manager = env.manager()
    manager.create("api", limit=2, timeout=60)
    manager.assign(INSTANCE, "api")
    app = env.app()
    with run_worker(app, concurrency=5):
        results = [app.tasks["t.hold"].delay(f"r{i}", 0.3) for i in range(8)]
        wait_until(lambda: manager.status("api").waiting > 0, 10, message="nobody waited")
        assert [r.get(timeout=60) for r in results] == [f"r{i}" for i in range(8)]
    assert env.probe().max_concurrency() == 2
    assert manager.status("api").in_use == 0
    _delete_queue(app, env.queue)


def _delete_queue(app, queue):
    with app.connection() as connection:  # leave nothing behind on the shared RabbitMQ
        connection.default_channel.queue_delete(queue)


def _pool(env, limit, wait):
    manager = env.manager()
    manager.create("api", limit=limit, timeout=120, wait=wait)
    manager.assign(INSTANCE, "api")
    return manager


@pytest.mark.slow
@pytest.mark.parametrize("wait", ["countdown", "handoff", "standby"])
def test_prefork_workers_keep_the_limit_with_rabbitmq_as_the_broker(rabbit_env, wait):
    """``standby``: a hand-off pool whose workers keep standbys, their messages published ahead
    of need through AMQP."""
    env = rabbit_env
    if wait == "standby":
        env.extra_worker_env.update(CP_STANDBY_MAX="2")
    manager = _pool(env, limit=2, wait="countdown" if wait == "countdown" else "handoff")
    for _ in range(2):
        env.worker(concurrency=3)
    app = env.app()
    results = [app.tasks["t.hold"].delay(f"r{i}", 0.2) for i in range(20)]
    assert [r.get(timeout=120) for r in results] == [f"r{i}" for i in range(20)]
    probe = env.probe()
    assert probe.count() == 20
    assert probe.max_concurrency() == 2
    status = manager.status("api")
    assert (status.in_use, status.waiting, status.standbys) == (0, 0, 0)
    if wait == "standby":
        assert manager.metrics("api").standbys_woken > 0
    _delete_queue(app, env.queue)


@pytest.mark.slow
def test_a_handed_off_task_redelivered_after_its_worker_died_waits_for_its_slot(rabbit_env):
    """``acks_late``: the worker running a task that was handed its slot is killed; RabbitMQ gives
    the same message to another worker at once, while the dead run's lease still holds the slot
    (its call may still be in flight). The copy is not dropped as a stale one and does not run
    beside the dead run: it waits until that lease lapses, then takes the slot."""
    env = rabbit_env
    env.lease_seconds = 3.0
    manager = _pool(env, limit=1, wait="handoff")
    doomed = env.worker(concurrency=1)
    app = env.app()
    app.tasks["t.hold"].delay("blocker", 0.5)  # granted the free slot at publication
    victim = app.tasks["t.hold_late"].delay("victim", 15)  # parked, then handed the slot
    assert manager.status("api").waiting == 1
    wait_until(
        lambda: "victim" in {label for label, _ in env.probe().starts()},
        30,
        message="the handed-off task never started",
    )
    env.worker(concurrency=1)
    killed_at = float(env.probe().client.time()[0])  # the Redis clock, as the probe's starts
    doomed.kill()
    # The copy waited by countdown: it runs from a message of its own, not the redelivered one.
    assert victim.get(timeout=60) == "victim:first"
    starts = [at for label, at in env.probe().starts() if label == "victim"]
    assert len(starts) == 2
    # Not before the dead run's lease lapsed: it was renewed at most a third of it before the kill.
    assert starts[1] >= killed_at + env.lease_seconds * 2 / 3 - 1, (starts, killed_at)
    status = manager.status("api")
    assert (status.in_use, status.waiting) == (0, 0)
    (metrics,) = manager.store.metrics(["api"])
    assert metrics.reclaimed == 1  # the dead run's slot, at its lease's end
    assert (metrics.acquired_immediate, metrics.acquired_waited) == (1, 2)
    _delete_queue(app, env.queue)
