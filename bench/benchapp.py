"""The Celery app of the benchmark: its worker subprocesses run ``celery -A bench.benchapp``.

Workers build it from environment variables (see :data:`bench.workerenv.ENV`); the driver calls
:func:`create_app` with the same values. Apart from the URLs and the default queue, every
setting is Celery's and celery-pools' default, the same for every scenario and waiting mode.

Tasks take their connector instance as the keyword argument ``instance``. Instances whose name
starts with :data:`TRACE_PREFIX` are traced: their bodies record start and end, and the pool's
signals (slot acquired, waiting, released) are recorded, all through :class:`Recorder` on the
benchmark's own Redis; a slot's acquisition is recorded with its release, so that no record
lies between a hand-off and the next body's start. Other instances (the overhead scenario's)
record only a finished count, so the measurement does not weigh on what it measures.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery
from celery.signals import task_failure, task_success

from bench.fake_api import call_api
from bench.recorder import Recorder
from bench.workerenv import ENV, ETA_TASK_LIMIT_ENV, STANDBY_MAX_ENV
from celery_pools import PooledTask, get_extension, signals

__all__ = ["TRACE_PREFIX", "create_app"]

#: Connector instances with this prefix are traced (body start/end and pool signals).
TRACE_PREFIX = "trace."


class _Records:
    """This process's client of the benchmark's Redis, a recorder per instance, and the
    acquisitions of the slots its tasks hold, recorded when they are released."""

    client: redis.Redis | None = None
    recorders: dict[str, Recorder] = {}  # noqa: RUF012  (one per process, never shared)
    # task id -> waited, first asked, granted
    holding: dict[str, tuple[float, float | None, float | None]] = {}  # noqa: RUF012


def _recorder(instance: str) -> Recorder:
    recorder = _Records.recorders.get(instance)
    if recorder is None:
        if _Records.client is None:
            raise RuntimeError("the benchmark app was not created with a record URL")
        recorder = _Records.recorders[instance] = Recorder(_Records.client, instance)
    return recorder


def _instance_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return str(kwargs["instance"])


def create_app(
    *,
    broker: str,
    backend: str,
    pools_url: str,
    record_url: str,
    queue: str,
    eta_task_limit: int | None = None,
    standby_max: int = 0,
) -> Celery:
    """The benchmark app: plain and pooled no-op tasks (and a plain one that runs a pooled
    task's two scripts in its body), a pooled task that works a while, and
    a pooled task that calls a fake API (:mod:`bench.fake_api`); the last two also as plain
    tasks (``bench.work_plain``, ``bench.call_plain``).

    ``eta_task_limit`` is Celery's ``worker_eta_task_limit`` (unlimited by default),
    ``standby_max`` celery-pools' ``pools_standby_max`` (no standbys by default).
    """
    _Records.client = redis.Redis.from_url(record_url, decode_responses=True)
    app = Celery("bench", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(
        pools_redis_url=pools_url,
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
        worker_eta_task_limit=eta_task_limit,
        pools_standby_max=standby_max,
    )

    @app.task(name="bench.noop_plain", shared=False)  # type: ignore[untyped-decorator, unused-ignore]
    def noop_plain(*, instance: str) -> None:
        _recorder(instance).done()

    @app.task(  # type: ignore[untyped-decorator, unused-ignore]
        base=PooledTask, name="bench.noop_pooled", connector_instance=_instance_of, shared=False
    )
    def noop_pooled(*, instance: str) -> None:
        _recorder(instance).done()

    @app.task(name="bench.noop_scripts", bind=True, shared=False)  # type: ignore[untyped-decorator, unused-ignore]
    def noop_scripts(self: Any, *, instance: str) -> None:
        # A plain task whose body runs the two scripts of a pooled one, as the overhead
        # scenario's bare pair does: what the round trips cost inside a worker's process.
        store = get_extension(app).store
        token = self.request.id
        store.release(token, store.acquire(instance, token, lease=60).pool)
        _recorder(instance).done()

    # A pooled task bound to its request, its instance from the call.
    pooled_bound: dict[str, Any] = {
        "base": PooledTask,
        "connector_instance": _instance_of,
        "bind": True,
        "shared": False,
    }

    def work(self: Any, *, instance: str, seconds: float) -> None:
        recorder = _recorder(instance)
        recorder.start(self.request.id)
        try:
            time.sleep(seconds)  # the work itself: a call to a slow external system
        finally:
            recorder.end(self.request.id)

    def call(self: Any, *, instance: str, api: str, ms: int) -> int:
        # The API counts it, not the task; the call is recorded done once its slot is given
        # back (on_success), so that the record is not part of the hand-off the API sees.
        return call_api(api, ms, self.request.id, keep_alive=True)

    # Each body twice: pooled, and as a plain task for the reference without a pool
    # (``unpooled``), whose slot is its worker process, given back as its body ends (its end
    # record is its release).
    plain_bound: dict[str, Any] = {"bind": True, "shared": False}
    for name, body in (("bench.work", work), ("bench.call", call)):
        app.task(name=name, **pooled_bound)(body)
        app.task(name=f"{name}_plain", **plain_bound)(body)

    _connect_signals()
    return app


def _connect_signals() -> None:
    def traced(instance: Any) -> bool:
        return isinstance(instance, str) and instance.startswith(TRACE_PREFIX)

    def on_released(instance: Any = None, task_id: Any = None, **_: Any) -> None:
        if traced(instance):
            acquired = _Records.holding.pop(str(task_id), None)
            if acquired is None:
                _recorder(instance).released(str(task_id))
            else:
                _recorder(instance).held(str(task_id), *acquired)

    def on_acquired(
        instance: Any = None,
        task_id: Any = None,
        waited: Any = 0,
        first: Any = None,
        granted: Any = None,
        **_: Any,
    ) -> None:
        # Recorded with the release: a record here would lie between the slot's hand-off and
        # the body's start, which the reference without a pool does not pay.
        if traced(instance):
            asked = float(first) if isinstance(first, int | float) else None
            given = float(granted) if isinstance(granted, int | float) else None
            _Records.holding[str(task_id)] = (float(waited or 0.0), asked, given)

    def on_waiting(instance: Any = None, **_: Any) -> None:
        if traced(instance):
            _recorder(instance).waited()

    def on_failure(kwargs: Any = None, **_: Any) -> None:
        instance = (kwargs or {}).get("instance") if isinstance(kwargs, dict) else None
        if isinstance(instance, str):
            _recorder(instance).failed()

    def on_success(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "name", None) in ("bench.call", "bench.call_plain"):
            _recorder(str(sender.request.kwargs["instance"])).done()

    signals.slot_released.connect(on_released, weak=False, dispatch_uid="bench.released")
    signals.slot_acquired.connect(on_acquired, weak=False, dispatch_uid="bench.acquired")
    signals.slot_waiting.connect(on_waiting, weak=False, dispatch_uid="bench.waiting")
    task_failure.connect(on_failure, weak=False, dispatch_uid="bench.failure")
    task_success.connect(on_success, weak=False, dispatch_uid="bench.success")


def _from_env() -> Celery:
    if ENV["pools_url"] not in os.environ:
        # Imported outside a benchmark run (by a linter or a test's collection): a placeholder.
        return Celery("bench", set_as_current=False)
    limit = os.environ.get(ETA_TASK_LIMIT_ENV)
    return create_app(
        **{name: os.environ[variable] for name, variable in ENV.items()},
        eta_task_limit=int(limit) if limit else None,
        standby_max=int(os.environ.get(STANDBY_MAX_ENV) or 0),
    )


app = _from_env()
