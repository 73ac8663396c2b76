"""Fixtures: a private Redis for the session, one per test that kills Redis, and test apps.

Tests never touch the machine's shared Redis: the suite starts its own ``redis-server`` on a free
loopback port. Every test gets its own key prefix, queue and probe name, so tests sharing the
session server cannot see each other's pools, messages or counters.
"""

from __future__ import annotations

import gc
import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.signals import before_task_publish

from celery_pools import PoolManager
from tests.support.probe import ConcurrencyProbe
from tests.support.publications import Publications
from tests.support.redis_server import RedisServer
from tests.support.worker_process import WorkerProcess
from tests.workerapp import create_app

RABBITMQ_URL = os.environ.get("CP_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's private Redis server."""
    with RedisServer() as server:
        yield server
        # Results the tests let go of unsubscribe from the result backend when they are
        # collected: let that happen while the server still answers, not at pytest's exit,
        # where each one retried its reconnection for a while.
        gc.collect()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis server of this test alone, which it may kill and restart."""
    with RedisServer() as server:
        yield server


@dataclass
class Env:
    """Everything one test needs to build apps and workers that only it can see."""

    broker: str
    backend: str
    pools_url: str
    probe_url: str
    name: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    lease_seconds: float = 60.0
    workers: list[WorkerProcess] = field(default_factory=list)
    extra_worker_env: dict[str, str] = field(default_factory=dict)
    #: ``pools_redis_transport_options`` (a Sentinel's master_name, TLS files, ...).
    transport_options: dict[str, Any] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return f"cp-{self.name}"

    @property
    def queue(self) -> str:
        return f"q-{self.name}"

    def app(self, **conf: Any) -> Celery:
        """An in-process app on this test's prefix and queue."""
        lease = conf.pop("lease_seconds", self.lease_seconds)
        if self.transport_options:
            conf.setdefault("pools_redis_transport_options", self.transport_options)
        return create_app(
            broker=self.broker,
            backend=self.backend,
            pools_url=self.pools_url,
            prefix=self.prefix,
            queue=self.queue,
            probe_url=self.probe_url,
            probe_name=self.name,
            lease_seconds=lease,
            **conf,
        )

    def manager(self) -> PoolManager:
        """A PoolManager for this test's pools."""
        return PoolManager.from_url(
            self.pools_url, key_prefix=self.prefix, transport_options=self.transport_options
        )

    def probe(self) -> ConcurrencyProbe:
        """This test's independent concurrency probe."""
        import redis

        return ConcurrencyProbe(
            redis.Redis.from_url(self.probe_url, decode_responses=True), self.name
        )

    def worker_env(self) -> dict[str, str]:
        """Environment for a ``celery -A tests.workerapp worker`` subprocess of this test."""
        return {
            "CP_BROKER_URL": self.broker,
            "CP_BACKEND_URL": self.backend,
            "CP_POOLS_URL": self.pools_url,
            "CP_KEY_PREFIX": self.prefix,
            "CP_QUEUE": self.queue,
            "CP_PROBE_URL": self.probe_url,
            "CP_PROBE_NAME": self.name,
            "CP_LEASE_SECONDS": str(self.lease_seconds),
            **(
                {"CP_POOLS_TRANSPORT_OPTIONS": json.dumps(self.transport_options)}
                if self.transport_options
                else {}
            ),
            **self.extra_worker_env,
        }

    def worker(
        self, concurrency: int = 4, pool: str = "prefork", queues: str | None = None, **kwargs: Any
    ) -> WorkerProcess:
        """A real ``celery worker`` subprocess (started, stopped at the end of the test)."""
        worker = WorkerProcess(
            "tests.workerapp",
            env=self.worker_env(),
            concurrency=concurrency,
            pool=pool,
            queues=queues or self.queue,
            **kwargs,
        )
        self.workers.append(worker)
        return worker.start(timeout=60)


def _env(server_url: Callable[[int], str], broker: str | None = None) -> Env:
    return Env(
        broker=broker or server_url(1),
        backend=server_url(2),
        pools_url=server_url(3),
        probe_url=server_url(4),
    )


@pytest.fixture
def env(redis_server: RedisServer) -> Iterator[Env]:
    """A test environment on the session's private Redis (broker, backend, pools, probe)."""
    environment = _env(redis_server.url)
    yield environment
    _stop_workers(environment)


@pytest.fixture
def private_env(private_redis: RedisServer, redis_server: RedisServer) -> Iterator[Env]:
    """Pools on a Redis of this test alone; broker, backend and probe on the session Redis."""
    environment = _env(redis_server.url)
    environment.pools_url = private_redis.url(3)
    yield environment
    _stop_workers(environment)


def _stop_workers(environment: Env) -> None:
    for worker in environment.workers:
        try:
            worker.stop(timeout=20)
        except Exception:
            worker.kill()


@pytest.fixture
def run_worker() -> Callable[..., AbstractContextManager[Any]]:
    """Start an in-process worker (threads pool) for an app: ``with run_worker(app, 4): ...``."""

    @contextmanager
    def run(app: Celery, concurrency: int = 4, pool: str = "threads") -> Iterator[Any]:
        with start_worker(
            app,
            pool=pool,
            concurrency=concurrency,
            perform_ping_check=False,
            queues=[app.conf.task_default_queue],
            shutdown_timeout=30,
        ) as worker:
            yield worker

    return run


@pytest.fixture
def publications() -> Iterator[Publications]:
    """The task messages this test's process publishes (see :class:`Publications`)."""
    counter = Publications()
    before_task_publish.connect(counter, weak=False)
    try:
        yield counter
    finally:
        before_task_publish.disconnect(counter)
