"""The Celery app of the peers comparison: ``celery -A bench.peers.app worker``.

Two tasks make the same call to the fake API (:mod:`bench.fake_api`): ``peers.call`` holds a
slot of one of the other libraries (:data:`bench.peers.PEERS`) around it, ``peers.pooled_call``
is a ``PooledTask`` of celery-pools. Every task runs with ``acks_late`` and
``reject_on_worker_lost`` (Celery's way not to lose a task whose process is killed), the same
for every peer. Workers build the app from environment variables (:mod:`bench.workerenv`).
"""

from __future__ import annotations

import os
import random
from typing import Any

import redis
from celery import Celery

from bench.fake_api import call_api
from bench.peers import PEERS, SlotPeer
from bench.peers.base import RETRY_COUNTDOWN, Busy
from bench.peers.pools import POOLED_TASK
from bench.workerenv import ENV, LEASE_ENV, STANDBY_MAX_ENV
from celery_pools import PooledTask

__all__ = ["CALL_TASK", "create_app"]

#: The task that calls the API through another library's slot.
CALL_TASK = "peers.call"


def _key_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return str(kwargs["key"])


def create_app(
    *, broker: str, backend: str, pools_url: str, queue: str, lease: float, standby_max: int = 0
) -> Celery:
    """The peers app. ``lease`` is every limiter's expiry and celery-pools'
    ``pools_lease_seconds``; ``standby_max`` is ``pools_standby_max``."""
    app = Celery("peers", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(
        pools_redis_url=pools_url,
        pools_lease_seconds=lease,
        pools_standby_max=standby_max,
        task_default_queue=queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        broker_connection_retry_on_startup=True,
    )
    client = redis.Redis.from_url(pools_url)

    @app.task(name=CALL_TASK, bind=True, max_retries=None, shared=False)  # type: ignore[untyped-decorator, unused-ignore]
    def call(self: Any, *, peer: str, key: str, limit: int, ms: int, api: str) -> int:
        adapter = PEERS[peer]
        if not isinstance(adapter, SlotPeer):
            raise TypeError(f"peer {peer!r} has no slot of its own: use {POOLED_TASK!r}")
        try:
            with adapter.slot(client, key, limit, lease):
                return call_api(api, ms, self.request.id, keep_alive=True)
        except Busy as exc:
            raise self.retry(countdown=random.uniform(*RETRY_COUNTDOWN), exc=exc) from None

    @app.task(  # type: ignore[untyped-decorator, unused-ignore]
        name=POOLED_TASK, base=PooledTask, connector_instance=_key_of, bind=True, shared=False
    )
    def pooled_call(self: Any, *, key: str, ms: int, api: str) -> int:
        return call_api(api, ms, self.request.id, keep_alive=True)

    return app


def _from_env() -> Celery:
    if LEASE_ENV not in os.environ:
        # Imported outside a benchmark run (by a linter or a test's collection): a placeholder.
        return Celery("peers", set_as_current=False)
    return create_app(
        broker=os.environ[ENV["broker"]],
        backend=os.environ[ENV["backend"]],
        pools_url=os.environ[ENV["pools_url"]],
        queue=os.environ[ENV["queue"]],
        lease=float(os.environ[LEASE_ENV]),
        standby_max=int(os.environ.get(STANDBY_MAX_ENV) or 0),
    )


app = _from_env()
