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
    with app.connection() as connection:  # leave nothing behind on the shared RabbitMQ
        connection.default_channel.queue_delete(env.queue)
