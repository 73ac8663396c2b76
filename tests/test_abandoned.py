"""Abandoned slots as an operator sees them: the status, `pools show`, the metrics and the
exporter, and freeing one early (`PoolManager.release`, `celery pools release`, the management
task). The endings that abandon a slot are in test_worker_processes.py, with real workers."""

from __future__ import annotations

import json

import pytest
from celery.bin.celery import CLIContext
from click.testing import CliRunner
from prometheus_client.core import CollectorRegistry
from prometheus_client.exposition import generate_latest

from celery_pools import PoolConfigError, SlotInUseError, SlotNotFoundError
from celery_pools.cli import pools
from celery_pools.exporter import collect_families
from celery_pools.store import AcquireStatus
from tests.workerapp import INSTANCE

HOLDER = {"task_name": "t.x", "instance": INSTANCE, "hostname": "w1@h", "pid": 4242, "thread": "1"}


@pytest.fixture
def manager(env):
    manager = env.manager()
    manager.create("api", limit=2)
    manager.assign(INSTANCE, "api")
    return manager


def _hold(manager, token, info=HOLDER):
    acq = manager.store.acquire(INSTANCE, token, lease=60, info=dict(info))
    assert acq.status is AcquireStatus.OK
    return acq


def _cli(env, *args):
    context = CLIContext(app=env.app(), no_color=True, workdir=None)
    return CliRunner().invoke(pools, list(args), obj=context, catch_exceptions=False)


def test_an_abandoned_slot_stays_in_use_and_is_shown(env, manager):
    _hold(manager, "dead")
    ended = manager.store.abandon("dead", grace=30, why="WorkerLostError", pid=4242)
    assert ended is not None
    assert ended.slot is not None
    status = manager.status("api")
    assert (status.in_use, status.free, status.holders) == (1, 1, [])
    (slot,) = status.abandoned
    assert (slot.task_id, slot.hostname, slot.pid, slot.why) == (
        "dead",
        "w1@h",
        4242,
        "WorkerLostError",
    )
    assert slot.until - slot.abandoned == pytest.approx(30, abs=0.01)
    # The task id may take a slot again (a copy is a new request): the abandoned one still counts.
    _hold(manager, "dead", {**HOLDER, "pid": 5151})
    assert manager.status("api").in_use == 2
    assert manager.store.acquire(INSTANCE, "third", lease=60).status is AcquireStatus.FULL
    shown = _cli(env, "show", "api").stdout
    assert "in use     2 (1 abandoned)" in shown
    row = next(
        line for line in shown.splitlines() if line.strip().startswith("dead") and "4242" in line
    )
    assert "WorkerLostError" in row
    assert "w1@h" in row
    details = json.loads(_cli(env, "show", "api", "--json").stdout)
    assert [a["task_id"] for a in details["abandoned"]] == ["dead"]
    assert details["metrics"]["abandoned"] == 1


def test_an_abandoned_slot_comes_free_when_its_grace_ends(env, manager):
    manager.update("api", limit=1)
    _hold(manager, "dead")
    manager.store.abandon("dead", grace=0.3, why="lost")
    assert manager.store.acquire(INSTANCE, "next", lease=60).status is AcquireStatus.FULL
    slot_until = manager.status("api").now + 0.3
    while manager.store.acquire(INSTANCE, "next", lease=60).status is not AcquireStatus.OK:
        assert manager.status("api").now < slot_until + 5, "the grace never ended"
    assert manager.status("api").now >= slot_until - 0.05
    metrics = manager.metrics("api")
    assert (metrics.abandoned, metrics.abandoned_expired, metrics.abandoned_released) == (1, 1, 0)


def test_abandon_acts_only_on_the_process_that_ended(manager):
    """Given a pid (and a worker's hostname), abandoning leaves alone a slot held by another
    process, or by a process of the same pid on another host (a copy of the task there)."""
    _hold(manager, "copy", {**HOLDER, "pid": 5151})
    assert manager.store.abandon("copy", grace=30, why="lost", pid=4242).slot is None
    elsewhere = manager.store.abandon("copy", grace=30, why="lost", pid=5151, hostname="w2@h")
    assert elsewhere is not None
    assert elsewhere.slot is None
    assert [h.task_id for h in manager.status("api").holders] == ["copy"]
    ended = manager.store.abandon("copy", grace=30, why="lost", pid=5151, hostname="w1@h")
    assert ended is not None
    assert ended.slot is not None
    assert manager.status("api").holders == []


def test_abandon_on_a_worker_or_before_the_start_leaves_another_execution_alone(manager):
    """Given only a worker's hostname, abandoning leaves alone a slot held on another worker;
    for a task revoked before it started (``unclaimed``), a slot its id holds as a running
    execution is left alone (an unclaimed hand-off is given back: test_handoff.py)."""
    _hold(manager, "copy")
    elsewhere = manager.store.abandon("copy", grace=30, why="lost", hostname="w2@h")
    assert (elsewhere.elsewhere, elsewhere.slot, elsewhere.released) == (True, None, False)
    revoked = manager.store.abandon("copy", grace=0, why="revoke", unclaimed=True)
    assert (revoked.elsewhere, revoked.slot, revoked.released) == (True, None, False)
    assert [h.task_id for h in manager.status("api").holders] == ["copy"]
    here = manager.store.abandon("copy", grace=30, why="lost", hostname="w1@h")
    assert (here.elsewhere, here.slot.task_id) == (False, "copy")
    assert manager.status("api").holders == []


def test_a_grace_of_zero_and_an_unclaimed_hand_off_give_the_slot_back(manager):
    _hold(manager, "dead")
    ended = manager.store.abandon("dead", grace=0, why="lost")
    assert (ended.released, ended.slot) == (True, None)
    assert manager.status("api").in_use == 0


def test_release_frees_an_abandoned_slot_and_refuses_a_running_one(env, manager):
    _hold(manager, "dead")
    manager.store.abandon("dead", grace=300, why="WorkerLostError")
    _hold(manager, "running")
    result = _cli(env, "release", "dead", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "task_id": "dead",
        "pool": "api",
        "abandoned": True,
        "task_name": "t.x",
        "hostname": "w1@h",
        "pid": 4242,
        "since": pytest.approx(manager.status("api").now, abs=30),
    }
    assert manager.status("api").abandoned == []
    assert manager.metrics("api").abandoned_released == 1
    with pytest.raises(SlotInUseError, match="'running' holds a slot of pool 'api' and is running"):
        manager.release("running")
    refused = _cli(env, "release", "running")
    assert refused.exit_code == 1
    assert "its call may be in flight" in refused.stderr
    assert [h.task_id for h in manager.status("api").holders] == ["running"]
    forced = _cli(env, "release", "running", "--force", "--yes")
    assert forced.exit_code == 0
    assert "its task was running" in forced.stdout
    assert manager.status("api").in_use == 0
    with pytest.raises(SlotNotFoundError, match="'nobody' holds no slot"):
        manager.release("nobody")
    with pytest.raises(PoolConfigError, match="invalid task_id ''"):
        manager.release("")


def test_the_management_task_releases_too(env, manager, run_worker):
    _hold(manager, "dead")
    manager.store.abandon("dead", grace=300, why="lost")
    app = env.app()
    with run_worker(app, concurrency=1):
        freed = app.send_task("celery_pools.release_slot", args=["dead"]).get(timeout=30)
        assert (freed["pool"], freed["abandoned"]) == ("api", True)
        with pytest.raises(SlotNotFoundError):
            app.send_task("celery_pools.release_slot", args=["dead"]).get(timeout=30)
    assert manager.status("api").in_use == 0


def test_the_exporter_counts_abandoned_slots(manager):
    _hold(manager, "dead")
    manager.store.abandon("dead", grace=300, why="lost")

    class Collector:
        def collect(self):
            return collect_families(manager.all_metrics())

    registry = CollectorRegistry()
    registry.register(Collector())
    text = generate_latest(registry).decode()
    assert 'celery_pools_abandoned_slots{pool="api"} 1.0' in text
    assert 'celery_pools_abandoned_slots_total{pool="api"} 1.0' in text
    assert 'celery_pools_in_use_slots{pool="api"} 1.0' in text
