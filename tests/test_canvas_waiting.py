"""Waiting leaves no trace in the canvas: a task that waited for a slot runs with the request it
would have had without waiting (parent and root ids, ETA, group, chord, chain, result tree)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from celery import chain, chord, group

from tests.support.polling import wait_until
from tests.workerapp import INSTANCE

LABELS = ("root", "c1", "c2", "g0", "g1", "h0", "h1")
#: The tasks sent while the pool's only slot is held: each of them waits (the blocker's slot
#: goes to one of them, the others wait for it in turn).
WAITERS = ("root", "c1", "g0", "g1", "h0", "h1")


def _send_canvas(app: Any, tag: str, eta: datetime) -> dict[str, Any]:
    """A root task, a chain, a group sent with an ETA and a chord; results by label."""
    r = app.tasks["t.request"]
    return {
        "root": r.apply_async((0, f"{tag}root")),
        "chain": chain(r.si(0, f"{tag}c1"), r.si(0, f"{tag}c2")).apply_async(),
        "group": group(r.si(0, f"{tag}g0"), r.si(0, f"{tag}g1")).apply_async(eta=eta),
        "chord": chord([r.si(1, f"{tag}h0"), r.si(2, f"{tag}h1")], app.tasks["t.total"].s())(),
    }


def _shape(env: Any, app: Any, tag: str, eta: datetime) -> dict[str, dict[str, Any]]:
    """What each task's request said, its ids replaced by labels and its ETA by whether it is
    the one the group was sent with; plus the labels of its result's children."""
    raw = env.probe().client.hgetall(f"probe:{env.name}:requests")
    records = {label: json.loads(raw[f"{tag}{label}"]) for label in LABELS}
    by_id = {record["id"]: label for label, record in records.items()}
    group_labels: dict[str, str] = {}
    shape = {}
    for label, record in records.items():
        group_id = record["group"]
        shape[label] = {
            "parent": by_id.get(record["parent_id"], record["parent_id"] and "?"),
            "root": by_id.get(record["root_id"], record["root_id"] and "?"),
            "eta": None if record["eta"] is None else datetime.fromisoformat(record["eta"]) == eta,
            "expires": record["expires"],
            "group": group_id and group_labels.setdefault(group_id, label),
            "group_index": record["group_index"],
            "chord": record["chord"],
            "chain": record["chain"],
            "children": sorted(
                by_id.get(child.id, "?") for child in app.AsyncResult(record["id"]).children or ()
            ),
        }
    return shape


def _run(env: Any, run_worker: Any, *, limit: int, tag: str, wait: str) -> dict[str, Any]:
    """The canvas through a pool of ``limit`` waiting in ``wait`` ("standby": by hand-off, with
    standbys; "countdown-sent": by countdown, every countdown a new message, none waited in the
    worker process)."""
    manager = env.manager()
    mode = {"standby": "handoff", "countdown-sent": "countdown"}.get(wait, wait)
    manager.create(f"api{tag}", limit=limit, wait=mode)
    manager.assign(INSTANCE, f"api{tag}")
    conf = {
        "standby": {"pools_standby_max": 2},
        "countdown-sent": {"pools_wait_in_process_seconds": 0},
    }.get(wait, {})
    app = env.app(**conf)
    eta = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=1)
    with run_worker(app, concurrency=4):
        blocker = app.tasks["t.hold"].delay(f"{tag}blocker", 1.5 if limit == 1 else 0.0)
        wait_until(lambda: manager.status(f"api{tag}").in_use == 1 or blocker.ready(), 15)
        sent = _send_canvas(app, tag, eta)
        assert sent["chord"].get(timeout=60) == 3
        for result in (sent["root"], sent["chain"].parent, sent["chain"]):
            result.get(timeout=60)
        assert sent["group"].get(timeout=60) == [0, 0]
        blocker.get(timeout=60)
    (metrics,) = manager.store.metrics([f"api{tag}"])
    manager.delete(f"api{tag}")
    return {
        "shape": _shape(env, app, tag, eta),
        "waited": metrics.acquired_waited,
        "standbys_woken": metrics.standbys_woken,
    }


@pytest.mark.parametrize("wait", ["countdown", "countdown-sent", "handoff", "standby"])
def test_a_task_that_waited_runs_with_the_request_it_would_have_had(env, run_worker, wait):
    free = _run(env, run_worker, limit=50, tag="free-", wait=wait)
    full = _run(env, run_worker, limit=1, tag="full-", wait=wait)
    assert free["waited"] == 0  # the reference run never waited
    assert full["waited"] >= len(WAITERS)
    if wait == "standby":  # some of them ran as standbys woken by a release
        assert full["standbys_woken"] >= 1
    # The reference is the canvas Celery builds: checked, so that the comparison means something.
    reference = free["shape"]
    assert reference["root"]["parent"] is None
    assert reference["root"]["root"] == "root"
    assert (reference["c1"]["parent"], reference["c2"]["parent"]) == (None, "c1")
    assert reference["c1"]["chain"] == 1
    assert reference["g0"]["eta"] is True
    assert reference["g0"]["group"] == "g0"
    assert reference["h0"]["chord"] is True
    assert full["shape"] == reference
