"""The Celery app the tests run, in-process and as real ``celery worker`` subprocesses.

Subprocess workers build it from environment variables (``CP_*``); in-process tests call
:func:`create_app`. Every task reports what it does through an independent
:class:`~tests.support.probe.ConcurrencyProbe` (plain Redis counters, no pool code), so the tests
can count concurrency and body runs without trusting celery-pools.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import time
from typing import Any

import redis
from celery import Celery
from celery import signals as celery_signals
from celery.exceptions import Ignore, Reject

from bench import fake_api
from celery_pools import PooledTask, get_extension, signals
from tests.support.probe import ConcurrencyProbe

INSTANCE = "inst-a"


def create_app(  # noqa: PLR0915  (one test task after another)
    *,
    broker: str,
    backend: str,
    pools_url: str,
    prefix: str,
    queue: str,
    probe_url: str,
    probe_name: str,
    lease_seconds: float = 60.0,
    **conf: Any,
) -> Celery:
    """An app with all the test tasks, isolated by ``prefix`` (pool keys) and ``queue``."""
    app = Celery("cp_tests", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(
        {
            "pools_redis_url": pools_url,
            "pools_key_prefix": prefix,
            "pools_lease_seconds": lease_seconds,
            "pools_retry_backoff_min": 0.05,
            "pools_retry_backoff_max": 0.5,
            "task_default_queue": queue,
            "task_track_started": True,
            "result_extended": True,
            "worker_prefetch_multiplier": 1,
            "broker_connection_retry_on_startup": True,
            "worker_hijack_root_logger": False,
            **conf,
        }
    )
    probe_client = redis.Redis.from_url(probe_url, decode_responses=True)
    _connect_test_hooks(app, probe_client, probe_name)

    def probe() -> ConcurrencyProbe:
        return ConcurrencyProbe(probe_client, probe_name)

    app.probe = probe  # type: ignore[attr-defined]

    @app.task(base=PooledTask, connector_instance=INSTANCE, bind=True, name="t.hold", shared=False)
    def hold(self: Any, label: str, seconds: float = 0.0) -> str:
        with probe().track(label):
            time.sleep(seconds)
        return label

    @app.task(
        base=PooledTask,
        connector_instance=INSTANCE,
        bind=True,
        name="t.hold_late",
        acks_late=True,
        shared=False,
    )
    def hold_late(self: Any, label: str, seconds: float = 0.0) -> str:
        """``hold`` acknowledged after it runs; a redelivered message does not sleep."""
        redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
        with probe().track(label):
            time.sleep(0.0 if redelivered else seconds)
        return f"{label}:{'redelivered' if redelivered else 'first'}"

    @app.task(
        base=PooledTask,
        connector_instance=lambda args, kwargs: kwargs["instance"],
        name="t.hold_on",
        shared=False,
    )
    def hold_on(label: str, seconds: float = 0.0, *, instance: str) -> str:
        with probe().track(label):
            time.sleep(seconds)
        return label

    @app.task(
        base=PooledTask,
        connector_instance=INSTANCE,
        max_retries=0,
        name="t.no_retries",
        shared=False,
    )
    def no_retries(label: str) -> str:
        with probe().track(label):
            pass
        return label

    @app.task(base=PooledTask, connector_instance=INSTANCE, name="t.add", shared=False)
    def add(x: int, y: int) -> int:
        with probe().track(f"add:{x}+{y}"):
            time.sleep(0.05)
        return x + y

    @app.task(base=PooledTask, connector_instance=INSTANCE, name="t.total", shared=False)
    def total(values: list[int]) -> int:
        with probe().track("total"):
            pass
        return sum(values)

    @app.task(base=PooledTask, connector_instance=INSTANCE, name="t.boom", shared=False)
    def boom(label: str) -> None:
        with probe().track(label):
            pass
        raise RuntimeError(f"boom {label}")

    @app.task(
        base=PooledTask, connector_instance=INSTANCE, bind=True, name="t.self_retry", shared=False
    )
    def self_retry(self: Any, label: str) -> str:
        with probe().track(label):
            pass
        if self.request.retries < 1:
            raise self.retry(countdown=0.1, max_retries=1)
        return label

    @app.task(base=PooledTask, connector_instance=INSTANCE, name="t.sleep_hard_limit", shared=False)
    def sleep_hard_limit(label: str, seconds: float) -> str:
        with probe().track(label):
            time.sleep(seconds)
        return label

    @app.task(
        base=PooledTask,
        connector_instance=INSTANCE,
        bind=True,
        name="t.yield_to_copy",
        shared=False,
    )
    def yield_to_copy(self: Any, label: str, seconds: float) -> str:
        """Give this execution's slot to a copy of the task on another worker (as if its
        message had been delivered there again and taken the slot), then sleep: a hard time
        limit ends it without its own release."""
        store = get_extension(self.app).store
        task_id = self.request.id
        store.release(task_id, store.held_pools([task_id])[task_id])
        copy = {"task_name": self.name, "instance": INSTANCE, "hostname": "copy@elsewhere"}
        store.acquire(INSTANCE, task_id, lease=60, info={**copy, "pid": 1})
        with probe().track(label):
            time.sleep(seconds)
        return label

    @app.task(
        base=PooledTask, connector_instance=INSTANCE, bind=True, name="t.backoff", shared=False
    )
    def backoff(self: Any, label: str, seconds: float) -> float:
        """Like an API answering 429 Retry-After: pause the instance for every worker."""
        with probe().track(label):
            return self.pause_instance(seconds)

    @app.task(
        base=PooledTask, connector_instance=INSTANCE, bind=True, name="t.give_up", shared=False
    )
    def give_up(self: Any, label: str, how: str) -> None:
        """End the body with Celery's Ignore or Reject."""
        with probe().track(label):
            pass
        raise Ignore() if how == "ignore" else Reject("rejected on purpose", requeue=False)

    @app.task(base=PooledTask, connector_instance=INSTANCE, name="t.soft_limit", shared=False)
    def soft_limit(label: str, seconds: float) -> str:
        """Sleep past a soft time limit and let SoftTimeLimitExceeded end the body."""
        with probe().track(label):
            time.sleep(seconds)
        return label

    @app.task(
        base=PooledTask,
        connector_instance=INSTANCE,
        pool_wait="countdown",
        name="t.hold_countdown",
        shared=False,
    )
    def hold_countdown(label: str, seconds: float = 0.0) -> str:
        with probe().track(label):
            time.sleep(seconds)
        return label

    @app.task(base=PooledTask, connector_instance=INSTANCE, bind=True, name="t.spawn", shared=False)
    def spawn(self: Any, label: str, seconds: float) -> str:
        """Call t.hold from this task's body; record whether the call was parked in Redis."""
        child = hold.delay(label, seconds)
        store = get_extension(self.app).store
        parked = any(
            store.client.zscore(store.keys.pool(pool).queue, child.id) is not None
            for pool in store.pool_names()
        )
        probe_client.hset(f"probe:{probe_name}:spawned", child.id, "parked" if parked else "sent")
        return str(child.id)

    @app.task(
        base=PooledTask, connector_instance=INSTANCE, bind=True, name="t.call_api", shared=False
    )
    def call_api(self: Any, label: str, url: str, ms: int) -> str:
        """One call of ``ms`` milliseconds to the fake API (bench/fake_api.py), which
        counts the calls in flight itself; its 429 fails the task."""
        with probe().track(label):
            status = fake_api.call_api(url, ms, self.request.id)
        if status != 200:
            raise RuntimeError(f"the API answered {status}")
        return label

    @app.task(
        base=PooledTask, connector_instance=INSTANCE, bind=True, name="t.request", shared=False
    )
    def request_of(self: Any, value: int, label: str) -> int:
        """Record the request this execution runs with (ids, ETA, canvas) under ``label``."""
        request = self.request
        probe_client.hset(
            f"probe:{probe_name}:requests",
            label,
            json.dumps(
                {
                    "id": request.id,
                    "parent_id": request.parent_id,
                    "root_id": request.root_id,
                    "eta": None if request.eta is None else str(request.eta),
                    "expires": None if request.expires is None else str(request.expires),
                    "group": request.group,
                    "group_index": request.group_index,
                    "chord": request.chord is not None,
                    "chain": len(request.chain or ()),
                }
            ),
        )
        with probe().track(label):
            time.sleep(0.02)
        return value

    @app.task(name="t.gc_copy", shared=False)
    def gc_copy() -> dict[str, int]:
        """In a worker child: the private memory (kB) one full collection adds, and how many
        objects the collector leaves out as frozen."""
        before = _private_dirty_kb()
        gc.collect()
        return {"copied_kb": _private_dirty_kb() - before, "frozen": gc.get_freeze_count()}

    @app.task(name="t.record_error", shared=False)
    def record_error(request: Any, exc: BaseException, traceback: str) -> None:
        probe_client.rpush(
            f"probe:{probe_name}:errbacks", f"{request.id}|{type(exc).__name__}|{exc}"
        )

    return app


def _private_dirty_kb() -> int:
    """This process's private dirty memory (kB): pages it wrote, its own or copied on write."""
    with open("/proc/self/smaps_rollup", encoding="ascii") as rollup:
        for line in rollup:
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1])
    raise RuntimeError("no Private_Dirty in /proc/self/smaps_rollup")


def _connect_test_hooks(app: Celery, probe_client: redis.Redis, probe_name: str) -> None:
    """Signal receivers the tests drive through the probe's Redis."""
    crash_key = f"probe:{probe_name}:crash-on-handoff"

    @signals.slot_handoff.connect(weak=False)
    def crash_mid_handoff(sender: Any = None, task_id: str = "", **_: Any) -> None:
        """Die like a SIGKILLed worker between handing a slot over and publishing it, once."""
        if sender is app and probe_client.delete(crash_key):
            os.kill(os.getpid(), signal.SIGKILL)

    @celery_signals.task_prerun.connect(weak=False)
    def first_seen(sender: Any = None, task_id: str = "", **_: Any) -> None:
        """When each task first reached a worker (before any pool code), by the Redis clock."""
        if getattr(sender, "app", None) is app:
            seconds, micros = probe_client.time()
            probe_client.hsetnx(f"probe:{probe_name}:first_seen", task_id, seconds + micros / 1e6)


def _optional_conf(env: Any) -> dict[str, Any]:
    """Settings a test asks for only when it needs them."""
    conf: dict[str, Any] = {}
    if env.get("CP_ACKS_LATE") == "1":
        conf.update(task_acks_late=True, task_reject_on_worker_lost=True)
    if "CP_VISIBILITY_TIMEOUT" in env:
        visibility = float(env["CP_VISIBILITY_TIMEOUT"])
        conf["broker_transport_options"] = {
            "visibility_timeout": visibility,
            "unacked_restore_interval": visibility / 3,
        }
    if "CP_STANDBY_MAX" in env:
        conf["pools_standby_max"] = int(env["CP_STANDBY_MAX"])
    if "CP_STANDBY_SECONDS" in env:
        conf["pools_standby_seconds"] = float(env["CP_STANDBY_SECONDS"])
    if "CP_ABANDONED_GRACE_SECONDS" in env:
        conf["pools_abandoned_grace_seconds"] = float(env["CP_ABANDONED_GRACE_SECONDS"])
    if "CP_POOLS_TRANSPORT_OPTIONS" in env:
        conf["pools_redis_transport_options"] = json.loads(env["CP_POOLS_TRANSPORT_OPTIONS"])
    if "CP_WAIT_REPLICAS" in env:
        conf["pools_redis_wait_replicas"] = int(env["CP_WAIT_REPLICAS"])
    if "CP_POOLS_DECLARE" in env:
        conf["pools_declare"] = json.loads(env["CP_POOLS_DECLARE"])
    return conf


def _from_env() -> Celery:
    env = os.environ
    if "CP_POOLS_URL" not in env:
        # Imported without a test harness (by pytest collection, for instance): a placeholder
        # app that is never started.
        return Celery("cp_tests", set_as_current=False)
    return create_app(
        broker=env["CP_BROKER_URL"],
        backend=env["CP_BACKEND_URL"],
        pools_url=env["CP_POOLS_URL"],
        prefix=env["CP_KEY_PREFIX"],
        queue=env["CP_QUEUE"],
        probe_url=env["CP_PROBE_URL"],
        probe_name=env["CP_PROBE_NAME"],
        lease_seconds=float(env.get("CP_LEASE_SECONDS", "60")),
        pools_handoff_lease_seconds=float(env.get("CP_HANDOFF_LEASE_SECONDS", "10")),
        pools_suspicious_hold_seconds=float(env.get("CP_SUSPICIOUS_HOLD_SECONDS", "900")),
        worker_eta_task_limit=int(env["CP_ETA_TASK_LIMIT"]) if "CP_ETA_TASK_LIMIT" in env else None,
        pools_freeze_gc=env.get("CP_FREEZE_GC", "1") == "1",
        **_optional_conf(env),
    )


app = _from_env()
