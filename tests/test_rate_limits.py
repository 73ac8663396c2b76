"""Rate limits per connector instance, shared by every worker, composed with pools."""

from __future__ import annotations

import pytest

from celery_pools import PoolConfigError, RateLimit, RateLimitTimeoutError
from celery_pools.ratelimit import parse_rate
from celery_pools.store import AcquireStatus
from tests.support.polling import wait_until
from tests.workerapp import INSTANCE


@pytest.mark.parametrize(
    ("spec", "count", "period"),
    [
        ("60/m", 60, 60),
        ("10/s", 10, 1),
        ("1000/h", 1000, 3600),
        ("5/10s", 5, 10),
        ("5/1234567s", 5, 1234567),
        ("2/d", 2, 86400),
    ],
)
def test_rates_parse_in_the_forms_celery_users_know(spec, count, period):
    rate = parse_rate(spec, burst=3)
    assert (rate.count, rate.period, rate.burst) == (count, period, 3)
    assert RateLimit.decode(rate.encode()) == rate


@pytest.mark.parametrize("spec", ["", "abc", "0/m", "60/x", "60", "-1/s", "6O/m", None, 60])
def test_bad_rates_are_refused_naming_the_value_and_the_forms(spec):
    with pytest.raises(PoolConfigError) as caught:
        parse_rate(spec)
    assert str(caught.value).startswith(f"invalid rate limit {spec!r}:")
    assert "'60/m'" in str(caught.value)


def test_bad_burst_is_refused():
    with pytest.raises(PoolConfigError, match="invalid burst -1"):
        parse_rate("60/m", burst=-1)


@pytest.mark.parametrize("seconds", [-5, float("inf"), float("nan"), "30", True])
def test_a_bad_pause_is_refused_by_the_manager_and_the_task_alike_and_nothing_is_written(
    env, seconds
):
    manager = env.manager()
    task = env.app().tasks["t.backoff"]
    with pytest.raises(PoolConfigError) as by_manager:
        manager.pause(INSTANCE, seconds)
    with pytest.raises(PoolConfigError) as by_task:
        task.pause_instance(seconds, instance=INSTANCE)
    for caught in (by_manager, by_task):
        assert caught.value.field == "pause seconds"
        assert str(caught.value).startswith(f"invalid pause seconds {seconds!r}: a number of")
    assert manager.rates([INSTANCE])[0].paused_for == 0


def _setup(env, *, limit=100, timeout=30.0, rate="10/s", burst=0):
    pools = env.manager()
    pools.create("api", limit=limit, timeout=timeout)
    pools.assign(INSTANCE, "api")
    pools.set_rate_limit(INSTANCE, rate, burst=burst)
    return pools


def test_gcra_spaces_calls_and_allows_the_declared_burst(env):
    pools = _setup(env, rate="10/s", burst=2)
    store = pools.store
    granted = [store.acquire(INSTANCE, f"t{i}", lease=30) for i in range(5)]
    assert [a.status for a in granted] == [AcquireStatus.OK] * 3 + [AcquireStatus.RATE] * 2
    # The next call is due one interval (100 ms) after the burst, not at a window edge.
    assert 0.05 <= granted[3].retry_after <= 0.1
    assert granted[3].reason == "rate"
    (rate,) = pools.rates([INSTANCE])
    assert (rate.rate, rate.available) == ("10/s (burst 2)", 0)
    assert 0 < rate.next_in <= 0.1


def test_no_slot_is_held_while_waiting_for_a_token(env):
    pools = _setup(env, limit=5, rate="1/m")
    store = pools.store
    assert store.acquire(INSTANCE, "first", lease=30).status is AcquireStatus.OK
    waiting = store.acquire(INSTANCE, "second", lease=30)
    assert waiting.status is AcquireStatus.RATE
    assert 55 <= waiting.retry_after <= 60
    status = pools.status("api")
    assert [h.task_id for h in status.holders] == ["first"]
    assert [w.task_id for w in status.waiters] == ["second"]


def test_no_token_is_spent_while_no_slot_is_free(env):
    pools = _setup(env, limit=1, rate="10/s", burst=4)
    store = pools.store
    assert store.acquire(INSTANCE, "holder", lease=30).status is AcquireStatus.OK
    (before,) = pools.rates([INSTANCE])
    for i in range(10):
        assert store.acquire(INSTANCE, f"w{i}", lease=30).status is AcquireStatus.FULL
    (after,) = pools.rates([INSTANCE])
    assert before.available == 4  # burst 4 + 1, minus the holder's token
    assert after.available >= before.available  # tokens only accrue while everyone waits


def test_rate_limit_applies_to_an_instance_without_a_pool(env):
    pools = env.manager()
    pools.set_rate_limit("solo-inst", "1/m")
    store = pools.store
    assert store.acquire("solo-inst", "a", lease=30).status is AcquireStatus.UNASSIGNED
    held = store.acquire("solo-inst", "b", lease=30)
    assert (held.status, held.reason) == (AcquireStatus.RATE, "rate")


def test_waiting_for_the_rate_limit_times_out_with_a_rate_limit_error(env, run_worker):
    _setup(env, limit=5, timeout=2, rate="1/m")
    app = env.app()
    with run_worker(app, concurrency=2):
        assert app.tasks["t.hold"].delay("first", 0).get(timeout=30) == "first"
        late = app.tasks["t.hold"].apply_async(
            ("late", 0), link_error=app.tasks["t.record_error"].s()
        )
        with pytest.raises(RateLimitTimeoutError, match="held back by its rate limit"):
            late.get(timeout=30)
        # While it waited its state said why, and it held no slot.
    assert {label for label, _ in env.probe().starts()} == {"first"}
    client = env.probe().client
    wait_until(lambda: client.llen(f"probe:{env.name}:errbacks"), 10, message="no errback")


def test_changing_the_rate_at_run_time_takes_effect_without_a_restart(env, run_worker):
    pools = _setup(env, limit=10, rate="4/s")
    app = env.app()
    with run_worker(app, concurrency=8):
        slow = [app.tasks["t.hold"].delay(f"slow{i}", 0) for i in range(6)]
        for result in slow:
            result.get(timeout=30)
        pools.set_rate_limit(INSTANCE, "40/s")
        fast = [app.tasks["t.hold"].delay(f"fast{i}", 0) for i in range(6)]
        for result in fast:
            result.get(timeout=30)
    starts = dict(env.probe().starts())
    slow_span = max(starts[f"slow{i}"] for i in range(6)) - min(
        starts[f"slow{i}"] for i in range(6)
    )
    fast_span = max(starts[f"fast{i}"] for i in range(6)) - min(
        starts[f"fast{i}"] for i in range(6)
    )
    assert slow_span >= 5 * 0.25 - 0.01  # six calls at 4/s take at least 1.25 s
    assert fast_span < slow_span / 2


def test_a_pause_from_one_task_holds_every_workers_tasks(env):
    _setup(env, limit=10, rate="100/s")
    for _ in range(2):
        env.worker(concurrency=3)
    app = env.app()
    until = app.tasks["t.backoff"].delay("backoff", 3.0).get(timeout=30)
    others = [app.tasks["t.hold"].delay(f"o{i}", 0) for i in range(12)]
    for result in others:
        result.get(timeout=60)
    starts = dict(env.probe().starts())
    # No task of the instance started on any worker before the pause ended...
    assert min(starts[f"o{i}"] for i in range(12)) >= until - 0.001
    # ...and both workers had tasks held by it.
    assert len({result.worker for result in others}) == 2


@pytest.mark.slow
def test_seed_example_limit_10_and_60_per_minute_across_three_workers(env):
    """The product page's example, saturated for two minutes.

    Each task holds its slot 10 s, so ten slots at once make exactly one call a second: both
    limits bind. Starts are counted by the tasks themselves. A start is recorded a few
    milliseconds after its token was granted, so a rolling window is checked 0.25 s short of a
    minute; a fixed-window limiter would still show up to twice the rate across a window edge.

    The workers run as the README prescribes for saturated countdown pools: with
    ``worker_eta_task_limit`` at their prefetch count (4), so that a worker whose processes are
    all busy does not keep the retries another, idle worker could run.
    """
    pools = env.manager()
    pools.create("api", limit=10, timeout=300)
    pools.assign(INSTANCE, "api")
    pools.set_rate_limit(INSTANCE, "60/m")
    env.extra_worker_env["CP_ETA_TASK_LIMIT"] = "4"  # concurrency 4 x prefetch multiplier 1
    for _ in range(3):
        env.worker(concurrency=4)
    app = env.app()
    results = [app.tasks["t.hold"].delay(f"s{i}", 10.0) for i in range(125)]
    for result in results:
        assert result.get(timeout=400).startswith("s")
    starts = sorted(when for _, when in env.probe().starts())
    assert len(starts) == 125
    window = 60.0 - 0.25
    busiest = max(
        sum(1 for other in starts[i:] if other < start + window) for i, start in enumerate(starts)
    )
    assert busiest <= 60, busiest
    assert busiest >= 55, f"the rate limit was never saturated ({busiest} in a minute)"
    probe = env.probe()
    assert probe.max_concurrency() <= 10
    assert probe.max_concurrency() >= 9, "the pool was never saturated"
