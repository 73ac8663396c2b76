"""The admission decision (``celery_pools.admission``) on its own: the store's answers in, what a
pooled task does out. No Redis, no Celery."""

from __future__ import annotations

import random

import pytest

from celery_pools import (
    PoolBackendError,
    PoolBackendTimeoutError,
    PoolClearedError,
    PoolDeletedError,
    PoolTimeoutError,
    RateLimitTimeoutError,
    UnassignedInstanceError,
)
from celery_pools.admission import (
    Backoff,
    Caller,
    Fail,
    Park,
    Run,
    Stale,
    Unassigned,
    Wait,
    admit,
    backend_down,
    deleted_while_waiting,
    must_hand_off,
    parked_ending,
    parked_reason,
    pool_changed,
    unassigned_error,
)
from celery_pools.store import AcquireStatus, Acquisition
from celery_pools.waiting import WaitState

CALLER = Caller("t.push", "id-1", "netsuite-prod")
NOW = 1_000_000.0


def _backoff(seed: int = 1) -> Backoff:
    return Backoff(0.25, 2.0, random.Random(seed))


def _acq(status: AcquireStatus, **fields) -> Acquisition:
    values = {
        "now": NOW,
        "pool": "api",
        "first": NOW - 4.0,
        "limit": 3,
        "in_use": 3,
        "timeout": 30.0,
        "uid": "u1",
        **fields,
    }
    return Acquisition(status, **values)


def test_a_slot_taken_runs_the_body_having_waited_only_if_it_waited_before():
    fresh = admit(_acq(AcquireStatus.OK, first=NOW, granted=NOW), WaitState(), CALLER, _backoff())
    assert fresh == Run("api", handed=False, waited=0.0, first=NOW, granted=NOW)
    state = WaitState(first=NOW - 4.0)
    again = admit(_acq(AcquireStatus.OK, granted=NOW - 1.0), state, CALLER, _backoff())
    assert again == Run("api", handed=False, waited=4.0, first=NOW - 4.0, granted=NOW - 1.0)
    handed = admit(_acq(AcquireStatus.OK, reason="handoff"), WaitState(), CALLER, _backoff())
    assert isinstance(handed, Run)
    assert handed.handed
    granted = admit(_acq(AcquireStatus.OK, reason="granted"), WaitState(), CALLER, _backoff())
    assert isinstance(granted, Run)
    assert not granted.handed


def test_a_stale_copy_is_ignored_and_an_instance_without_a_pool_runs_unlimited():
    assert admit(_acq(AcquireStatus.STALE), WaitState(), CALLER, _backoff()) == Stale()
    assert admit(_acq(AcquireStatus.UNASSIGNED), WaitState(), CALLER, _backoff()) == Unassigned()


def test_a_full_countdown_pool_waits_with_backoff_and_never_past_its_deadline():
    state = WaitState(first=NOW - 4.0, pool="api", uid="u1", timeout=30.0, attempts=3)
    decision = admit(_acq(AcquireStatus.FULL, reason="countdown"), state, CALLER, _backoff())
    assert isinstance(decision, Wait)
    assert 1.0 <= decision.countdown <= 2.0  # the cap doubled past the 2 s maximum
    assert decision.state == state.next_attempt()
    assert decision.waiting is not None
    assert str(decision.reason).startswith("waiting for a slot of pool 'api': 3 of 3 in use;")
    near = admit(
        _acq(AcquireStatus.FULL, reason="countdown", first=NOW - 29.9), state, CALLER, _backoff()
    )
    assert isinstance(near, Wait)
    assert near.countdown == pytest.approx(0.1)


def test_a_waiter_comes_back_when_its_turn_is_likely_once_the_pool_knows_its_hold_time():
    """acquire.lua's retry_ms for a countdown waiter: its place among the waiters times the mean
    hold time over the limit. The countdown is that, give or take a fifth, bounded."""
    state = WaitState(first=NOW - 4.0, pool="api", uid="u1", timeout=30.0, attempts=5)
    countdowns = [
        admit(
            _acq(AcquireStatus.FULL, reason="countdown", retry_after=0.05),
            state,
            CALLER,
            _backoff(seed),
        )
        for seed in range(50)
    ]
    assert all(isinstance(d, Wait) for d in countdowns)
    values = [d.countdown for d in countdowns if isinstance(d, Wait)]
    assert 0.04 <= min(values) < max(values) <= 0.06  # not the backoff's 1-2 s at attempt 5
    # Bounded: at least 5 ms, at most the backoff's maximum, never past the deadline.
    tiny = admit(
        _acq(AcquireStatus.FULL, reason="countdown", retry_after=0.001), state, CALLER, _backoff()
    )
    assert isinstance(tiny, Wait)
    assert tiny.countdown == pytest.approx(0.005)
    long = admit(
        _acq(AcquireStatus.FULL, reason="countdown", retry_after=60.0), state, CALLER, _backoff()
    )
    assert isinstance(long, Wait)
    assert long.countdown == pytest.approx(2.0)
    late = admit(
        _acq(AcquireStatus.FULL, reason="countdown", retry_after=1.0, first=NOW - 29.9),
        state,
        CALLER,
        _backoff(),
    )
    assert isinstance(late, Wait)
    assert late.countdown == pytest.approx(0.1)


def test_a_copy_of_a_running_execution_waits_by_countdown_in_any_mode():
    """acquire.lua answers a copy with first = now: its wait starts when it found the first run."""
    state = WaitState(first=NOW - 500.0, handoff="id-1.3", attempts=0)
    decision = admit(_acq(AcquireStatus.FULL, reason="copy", first=NOW), state, CALLER, _backoff())
    assert isinstance(decision, Wait)
    assert 0.125 <= decision.countdown <= 0.25
    assert decision.state == WaitState(
        first=NOW, pool="api", uid="u1", timeout=30.0, attempts=1, handoff=""
    )
    assert str(decision.reason).startswith(
        "another execution of task t.push[id-1] holds its slot of pool 'api'"
    )


def test_a_full_handoff_pool_parks_and_forgets_the_hand_off_it_came_with():
    state = WaitState(handoff="id-1.7", attempts=1)
    decision = admit(_acq(AcquireStatus.FULL, reason="handoff"), state, CALLER, _backoff())
    assert isinstance(decision, Park)
    assert decision.state == WaitState(
        first=NOW - 4.0, pool="api", uid="u1", timeout=30.0, attempts=2, handoff=""
    )


def test_a_rate_limit_or_a_pause_waits_exactly_until_the_next_token():
    rate = admit(
        _acq(AcquireStatus.RATE, reason="rate", retry_after=0.75), WaitState(), CALLER, _backoff()
    )
    assert isinstance(rate, Wait)
    assert rate.countdown == 0.75
    assert "rate limit of instance 'netsuite-prod': next call in 0.75 s" in str(rate.reason)
    paused = admit(
        _acq(AcquireStatus.RATE, reason="paused", retry_after=90.0), WaitState(), CALLER, _backoff()
    )
    assert isinstance(paused, Wait)
    assert paused.countdown == pytest.approx(26.0)  # the deadline comes first
    assert "is paused for 90.0 s more" in str(paused.reason)


def test_a_timeout_fails_with_the_error_of_what_held_it_back():
    pool = admit(_acq(AcquireStatus.TIMEOUT, reason="pool"), WaitState(), CALLER, _backoff())
    assert isinstance(pool, Fail)
    assert (pool.timed_out, pool.pool, pool.waited) == (True, "api", 4.0)
    assert type(pool.error) is PoolTimeoutError
    assert str(pool.error) == (
        "no slot of pool 'api' (limit 3, 3 in use) became free for instance 'netsuite-prod' "
        "within its timeout of 30 s; task t.push[id-1] waited 4.0 s and did not run"
    )
    rate = admit(_acq(AcquireStatus.TIMEOUT, reason="rate"), WaitState(), CALLER, _backoff())
    assert isinstance(rate, Fail)
    assert isinstance(rate.error, RateLimitTimeoutError)
    assert "was held back by its rate limit until the timeout of 30 s" in str(rate.error)
    paused = admit(_acq(AcquireStatus.TIMEOUT, reason="paused"), WaitState(), CALLER, _backoff())
    assert isinstance(paused, Fail)
    assert "held back by a pause (back-off)" in str(paused.error)


def test_a_cleared_pool_fails_the_waiter_without_a_timeout():
    decision = admit(_acq(AcquireStatus.CLEARED), WaitState(), CALLER, _backoff())
    assert isinstance(decision, Fail)
    assert not decision.timed_out
    assert type(decision.error) is PoolClearedError
    assert str(decision.error) == (
        "pool 'api' was cleared while task t.push[id-1] waited for a slot for instance "
        "'netsuite-prod'; the task did not run"
    )


def test_only_a_task_that_gave_back_a_handed_slot_hands_it_on():
    handed = WaitState(handoff="id-1.3")
    assert must_hand_off(_acq(AcquireStatus.RATE), handed)
    assert must_hand_off(_acq(AcquireStatus.TIMEOUT), handed)
    assert not must_hand_off(_acq(AcquireStatus.OK), handed)
    assert not must_hand_off(_acq(AcquireStatus.RATE), WaitState())


@pytest.mark.parametrize(
    ("reason", "error", "text"),
    [
        ("deleted", PoolDeletedError, "pool 'api' was deleted while task t.push[id-1] was parked"),
        ("cleared", PoolClearedError, "pool 'api' was cleared while task t.push[id-1] was parked"),
    ],
)
def test_a_parked_task_ended_by_its_pool_fails_with_that_reason(reason, error, text):
    decision = parked_ending(WaitState(pool="api", fail={"reason": reason}), CALLER)
    assert type(decision.error) is error
    assert str(decision.error).startswith(text)
    assert not decision.timed_out


def test_a_parked_task_past_its_deadline_times_out_having_waited_until_then():
    fail = {"reason": "timeout", "limit": 3, "at": (NOW - 1.0) * 1000}
    state = WaitState(first=NOW - 31.0, pool="api", timeout=30.0, fail=fail)
    decision = parked_ending(state, CALLER)
    assert (decision.timed_out, decision.pool, decision.waited) == (True, "api", 30.0)
    assert type(decision.error) is PoolTimeoutError
    assert str(decision.error) == (
        "no slot of pool 'api' (limit 3) became free for instance 'netsuite-prod' within its "
        "timeout of 30 s; task t.push[id-1] waited 30.0 s and did not run"
    )


def test_an_unreachable_redis_waits_like_a_full_pool_then_fails_at_the_deadline():
    exc = PoolBackendError("connection refused")
    state = WaitState(first=NOW - 10.0, timeout=30.0)
    waiting = backend_down(state, CALLER, NOW, exc, _backoff())
    assert isinstance(waiting, Wait)
    assert 0.125 <= waiting.countdown <= 0.25
    assert waiting.state == state.next_attempt(first=NOW - 10.0, timeout=30.0)
    assert waiting.waiting is None  # no answer to wait on: no slot_waiting signal
    late = backend_down(WaitState(first=NOW - 30.0, timeout=30.0), CALLER, NOW, exc, _backoff())
    assert isinstance(late, Fail)
    assert type(late.error) is PoolBackendTimeoutError
    assert str(late.error) == (
        "no slot for instance 'netsuite-prod': the pools' Redis could not be reached "
        "(connection refused); task t.push[id-1] waited 30.0 s of 30 s and did not run"
    )
    first_try = backend_down(WaitState(), CALLER, NOW, exc, _backoff())
    assert isinstance(first_try, Wait)
    assert first_try.state.first == NOW  # the default timeout starts now


def test_the_remaining_messages_name_the_pool_the_task_and_the_instance():
    assert str(deleted_while_waiting("api", CALLER)) == (
        "pool 'api' was deleted while task t.push[id-1] waited for a slot for instance "
        "'netsuite-prod'; the task did not run"
    )
    error = unassigned_error(CALLER)
    assert isinstance(error, UnassignedInstanceError)
    assert error.instance == "netsuite-prod"
    assert str(parked_reason(_acq(AcquireStatus.FULL), 2)) == (
        "parked for a hand-off in pool 'api' (3 of 3 in use), position 2; waited 4.0 s of 30 s"
    )
    again = pool_changed(_acq(AcquireStatus.FULL), WaitState(attempts=4))
    assert (again.countdown, again.state) == (0.0, WaitState(attempts=4))
