"""The peers benchmark's judgement of a SIGKILLed holder (``bench.peers.scenario.after_kill``) and
its verdicts (``bench.peers.report.verdict``), on call records written out by hand: what the API
would have recorded for a peer that holds the dead call's slot, one that frees it at once, and
one that never gets it back."""

from __future__ import annotations

from typing import Any

import pytest

from bench.fake_api import Call
from bench.peers.report import verdict
from bench.peers.scenario import after_kill

LIMIT = 2
KILLED_AT = 0.2


def _call(task: str, started: float, ended: float, refused: bool = False) -> Call:
    ms = round((ended - started) * 1000)
    return Call(task=task, pid=1, started=started, ms=ms, ended=ended, refused=refused)


def _kill(calls: list[Call]) -> dict[str, Any]:
    extra = {"killed_at": KILLED_AT, "killed_task": "victim", "killed_call_started": 0.0}
    return after_kill(extra, calls, LIMIT)


def _run(max_in_flight: int = LIMIT, refused: int = 0) -> dict[str, Any]:
    """A run's figures as the verdict reads them: nothing failed or lost."""
    return {"max_in_flight": max_in_flight, "refused": refused, "lost_tasks": 0, "failures": {}}


def test_a_slot_held_until_the_dead_call_could_be_over_comes_back_then() -> None:
    calls = [
        _call("victim", 0.0, 1.0),  # the API serves the dead client's call to its end
        _call("a", 0.0, 0.5),
        _call("b", 0.5, 1.4),  # takes a's slot at once
        _call("victim", 1.2, 1.3),  # the killed task, run again, in the freed slot
        _call("c", 1.4, 2.0),
    ]
    judged = _kill(calls)
    assert judged["slot_back_s"] == pytest.approx(1.0)
    assert judged["victim_calls"] == 2
    assert judged["last_start_s"] == pytest.approx(1.2)


def test_a_slot_never_given_back_is_not_back() -> None:
    calls = [_call("victim", 0.0, 1.0), _call("a", 0.0, 0.5)]
    calls += [_call(f"t{i}", 0.5 * i, 0.5 * i + 0.5) for i in range(1, 30)]
    judged = _kill(calls)
    assert judged["slot_back_s"] is None
    assert judged["last_start_s"] == pytest.approx(14.5 - KILLED_AT)
    assert judged["victim_calls"] == 1
    lease = 5.0
    kill = {**_run(), "killed_at": KILLED_AT, **judged}
    result = {"limit": LIMIT, "fixed": _run(), "varied": _run(), "kill": kill}
    assert verdict(result, lease) == "LOSES A SLOT"


def test_a_slot_freed_while_the_dead_call_runs_is_unsafe() -> None:
    calls = [
        _call("victim", 0.0, 1.0),
        _call("a", 0.0, 0.5),
        _call("b", 0.25, 0.6),  # the dead holder's slot, given out at once: 3 calls at the API
        _call("c", 0.5, 0.9),
    ]
    judged = _kill(calls)
    assert judged["slot_back_s"] == pytest.approx(0.05)
    kill = {**_run(max_in_flight=3), "killed_at": KILLED_AT, **judged}
    result = {"limit": LIMIT, "fixed": _run(), "varied": _run(), "kill": kill}
    assert verdict(result, lease=5.0).startswith("UNSAFE")


def test_a_refused_call_counts_as_unsafe_and_is_not_a_slot_in_use() -> None:
    calls = [_call("victim", 0.0, 1.0), _call("a", 0.0, 0.5), _call("b", 0.3, 0.3, refused=True)]
    assert _kill(calls)["slot_back_s"] is None  # a 429 is not a call served
    result = {"limit": LIMIT, "fixed": _run(refused=1), "varied": _run(), "kill": _run()}
    assert verdict(result, lease=5.0) == "UNSAFE (over the cap)"


def test_failed_and_lost_tasks_are_named_in_the_verdict() -> None:
    one = _run(max_in_flight=1)
    result = {
        "limit": 1,
        "fixed": one,
        "varied": {**one, "lost_tasks": 2},
        "kill": {**one, "failures": {"TimeoutError": 10}},
    }
    assert verdict(result, lease=5.0) == "LOSES TASKS, TASKS FAIL (10 x TimeoutError)"
    assert verdict({"limit": 1, "fixed": one, "varied": one, "kill": one}, lease=5.0) == "safe"
