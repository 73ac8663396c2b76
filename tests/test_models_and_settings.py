"""Validation, settings and backoff: pure Python, no server."""

from __future__ import annotations

import random

import pytest
from celery import Celery

import celery_pools
from celery_pools import Pool, PoolConfigError, PoolsSettings, portable
from celery_pools.models import check_instance_name, check_limit, check_pool_name, check_timeout
from celery_pools.store.keys import KeySpace
from celery_pools.waiting import WaitState, due_here, next_countdown


def test_public_api_is_pinned():
    assert sorted(celery_pools.__all__) == [
        "AbandonedSlot",
        "DEFAULT_TIMEOUT",
        "Holder",
        "InstanceRate",
        "MAX_TIMEOUT",
        "Pool",
        "PoolBackendError",
        "PoolBackendTimeoutError",
        "PoolClearedError",
        "PoolConfigError",
        "PoolDeletedError",
        "PoolError",
        "PoolExistsError",
        "PoolFullError",
        "PoolManager",
        "PoolNotFoundError",
        "PoolStatus",
        "PoolTimeoutError",
        "PooledTask",
        "PoolsSettings",
        "RateLimit",
        "RateLimitTimeoutError",
        "SlotInUseError",
        "SlotNotFoundError",
        "UnassignedInstanceError",
        "Waiter",
        "__version__",
        "get_extension",
        "install",
        "signals",
    ]
    for name in celery_pools.__all__:
        assert getattr(celery_pools, name) is not None


def test_every_task_ending_error_is_a_pool_error_rebuildable_from_its_message():
    for cls in (
        celery_pools.PoolTimeoutError,
        celery_pools.PoolBackendTimeoutError,
        celery_pools.PoolClearedError,
        celery_pools.PoolDeletedError,
    ):
        assert issubclass(cls, celery_pools.PoolError)
        rebuilt = cls("the message")  # what a result backend does with exc_message
        assert str(rebuilt) == "the message"


@pytest.mark.parametrize(
    ("check", "value", "field", "allowed"),
    [
        (check_limit, 0, "limit", ">= 1"),
        (check_limit, -3, "limit", ">= 1"),
        (check_limit, 2.5, "limit", ">= 1"),
        (check_limit, True, "limit", ">= 1"),
        (check_limit, "10", "limit", ">= 1"),
        (check_timeout, 301, "timeout", "0 to 300"),
        (check_timeout, -1, "timeout", "0 to 300"),
        (check_timeout, float("nan"), "timeout", "0 to 300"),
        (check_pool_name, "", "pool name", "1-64 characters"),
        (check_pool_name, "has space", "pool name", "1-64 characters"),
        (check_pool_name, "a:b", "pool name", "1-64 characters"),
        (check_pool_name, "x" * 65, "pool name", "1-64 characters"),
        (check_instance_name, "", "connector instance", "1-200 characters"),
        (check_instance_name, None, "connector instance", "1-200 characters"),
    ],
)
def test_bad_values_are_refused_naming_field_value_and_what_is_allowed(
    check, value, field, allowed
):
    with pytest.raises(PoolConfigError) as caught:
        check(value)
    message = str(caught.value)
    assert message.startswith(f"invalid {field} {value!r}:")
    assert allowed in message
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)


def test_good_values_pass():
    assert check_limit(1) == 1
    assert check_timeout(300) == 300.0
    assert check_timeout(0) == 0.0
    assert check_pool_name("netsuite_prod-1.eu") == "netsuite_prod-1.eu"
    assert check_instance_name("netsuite:prod@eu/1") == "netsuite:prod@eu/1"
    assert Pool(name="p", limit=2) == Pool(name="p", limit=2, timeout=30.0)


def test_pool_parse_reports_the_first_bad_field():
    with pytest.raises(PoolConfigError, match=r"invalid timeout 301: .*0 to 300"):
        Pool.parse({"name": "p", "limit": 1, "timeout": 301})
    with pytest.raises(PoolConfigError, match=r"name"):
        Pool.parse({"limit": 1})


def _app(**conf):
    app = Celery("settings-test", broker=conf.pop("broker", "redis://h:1/0"), set_as_current=False)
    app.conf.update(conf)
    return app


def test_settings_defaults_and_broker_fallback():
    settings = PoolsSettings.from_app(_app())
    assert settings.lease_seconds == 60.0
    assert settings.require_assignment is False
    assert settings.resolve_redis_url(_app()) == "redis://h:1/0"
    assert settings.abandoned_grace == 60.0  # one lease
    assert PoolsSettings.from_app(_app(pools_lease_seconds=20)).abandoned_grace == 20.0
    assert PoolsSettings.from_app(_app(pools_abandoned_grace_seconds=0)).abandoned_grace == 0.0
    explicit = _app(pools_redis_url="redis://pools:2/3")
    assert PoolsSettings.from_app(explicit).resolve_redis_url(explicit) == "redis://pools:2/3"


def test_settings_without_any_redis_name_the_setting_to_set():
    app = _app(broker="amqp://guest:guest@localhost//")
    with pytest.raises(PoolConfigError, match="set the pools_redis_url setting"):
        PoolsSettings.from_app(app).resolve_redis_url(app)


@pytest.mark.parametrize(
    ("conf", "field"),
    [
        ({"pools_lease_seconds": 0}, "pools_lease_seconds"),
        ({"pools_key_prefix": "a:b"}, "pools_key_prefix"),
        ({"pools_declare": {"p": {"limit": 0}}}, "pools_declare['p'].limit"),
        ({"pools_declare": {"p": {"limit": 1, "size": 2}}}, "pools_declare['p']"),
        ({"pools_declare": {"p": {"timeout": 5}}}, "pools_declare['p'].limit"),
        (
            {"pools_declare": {"p": {"limit": 1, "instances": "abc"}}},
            "pools_declare['p'].instances",
        ),
        ({"pools_retry_backoff_min": 9, "pools_retry_backoff_max": 1}, "pools_retry_backoff_min"),
        ({"pools_retry_backoff_max": 0.1}, "pools_retry_backoff_max"),  # below the default min
        (
            {"pools_retry_backoff_min": "9", "pools_retry_backoff_max": "1"},
            "pools_retry_backoff_min",
        ),
        ({"pools_freeze_gc": "sometimes"}, "pools_freeze_gc"),
        ({"pools_abandoned_grace_seconds": -1}, "pools_abandoned_grace_seconds"),
        ({"pools_wait_in_process_seconds": -0.5}, "pools_wait_in_process_seconds"),
        ({"pools_wait_in_process_seconds": 61}, "pools_wait_in_process_seconds"),
    ],
)
def test_bad_settings_name_the_setting(conf, field):
    with pytest.raises(PoolConfigError) as caught:
        PoolsSettings.from_app(_app(**conf))
    assert caught.value.field == field, str(caught.value)


def test_backoff_bounds_out_of_order_are_refused_with_both_values():
    with pytest.raises(PoolConfigError) as caught:
        PoolsSettings.from_app(_app(pools_retry_backoff_max=0.1))
    assert str(caught.value) == (
        "invalid pools_retry_backoff_max 0.1: pools_retry_backoff_min (0.25 s) at most "
        "pools_retry_backoff_max (0.1 s)"
    )
    # Settings read from the environment are strings: compared as the numbers they are.
    settings = PoolsSettings.from_app(
        _app(pools_retry_backoff_min="0.5", pools_retry_backoff_max="3")
    )
    assert (settings.retry_backoff_min, settings.retry_backoff_max) == (0.5, 3.0)


def test_keys_share_one_hash_tag_and_pools_cannot_collide():
    keys = KeySpace("pfx")
    pool = keys.pool("api")
    every = [keys.pools, keys.instances, keys.held, *pool.all()]
    assert all(key.startswith("{pfx}:") for key in every)
    assert len(set(every)) == len(every)
    # Pool names cannot contain ':', so no name can produce another pool's keys.
    with pytest.raises(PoolConfigError):
        check_pool_name("api:holders")


def test_backoff_grows_with_jitter_and_never_passes_the_deadline():
    rng = random.Random(7)
    draws = [next_countdown(n, 100, minimum=0.25, maximum=2.0, rng=rng) for n in range(8)]
    assert 0.125 <= draws[0] <= 0.25
    assert all(1.0 <= d <= 2.0 for d in draws[3:])
    assert next_countdown(10, 0.3, minimum=0.25, maximum=2.0, rng=rng) == 0.3
    assert next_countdown(10, -1, minimum=0.25, maximum=2.0, rng=rng) == 0.0


def test_wait_state_round_trips_through_a_header_and_tolerates_garbage():
    state = WaitState(first=12.5, pool="api", uid="u", timeout=30.0, attempts=2)
    assert WaitState.from_headers({"celery_pools": state.to_header()}) == state
    assert WaitState.from_headers({"celery_pools": {"first": "x"}}) == WaitState()
    assert WaitState.from_headers(None) == WaitState()
    assert state.next_attempt(pool="b").attempts == 3


def test_a_countdowns_due_time_is_moved_to_the_receiving_hosts_clock():
    state = WaitState(first=12.5, attempts=2, due=1000.0)
    assert WaitState.from_headers({"celery_pools": state.to_header()}) == state
    # Redis is 300 s behind this host: due at Redis 1000 is due here at 1300.
    assert due_here(state, -300.0) == 1300.0
    assert due_here(state, None) is None  # this host has not seen the Redis clock
    assert due_here(WaitState(first=12.5), 0.0) is None  # not a countdown's message
    assert state.next_attempt().due is None  # a later message is due when its own says


def test_a_document_pool_without_a_limit_is_refused_naming_where_it_is():
    with pytest.raises(PoolConfigError) as caught:
        portable.loads('{"version": 1, "pools": {"api": {"timeout": 5}}}', source="pools.json")
    assert caught.value.field == "pools.api.limit"
    assert str(caught.value).startswith("pools.json: invalid pools.api.limit")
