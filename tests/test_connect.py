"""Which Redis a URL names, and the errors a wrong one gets (no server needed but where said)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from celery import Celery

from celery_pools import PoolBackendError, PoolConfigError
from celery_pools.settings import PoolsSettings, redacted
from celery_pools.store import acl_setuser
from celery_pools.store.connect import connect


def _app(**conf):
    app = Celery("connect_tests", set_as_current=False)
    app.conf.update(**conf)
    return app


def test_redacted_hides_every_password_and_keeps_the_rest():
    url = "sentinel://:s3cret@h1:26379/2;sentinel://user:pw@h2:26380/2"
    assert redacted(url) == "sentinel://:***@h1:26379/2;sentinel://user:***@h2:26380/2"
    assert redacted("redis://h:6379/0") == "redis://h:6379/0"


def test_a_plain_url_gives_a_client_of_that_server_with_celerys_tls_spelling():
    endpoint = connect(
        "rediss://:pw@h:6380/3?ssl_cert_reqs=CERT_REQUIRED&ssl_ca_certs=/ca.pem", route_key="k"
    )
    kwargs = endpoint.client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("h", 6380, 3)
    assert kwargs["ssl_cert_reqs"] == "required"
    assert kwargs["ssl_ca_certs"] == "/ca.pem"
    assert "pw" not in endpoint.location
    assert endpoint.cluster is None


def test_a_sentinel_url_asks_every_sentinel_for_the_named_master():
    endpoint = connect(
        "sentinel://:master-pw@s1:26379/4;sentinel://s2:26380/4",
        route_key="k",
        options={"master_name": "pools", "sentinel_kwargs": {"password": "sentinel-pw"}},
    )
    pool = endpoint.client.connection_pool
    assert pool.service_name == "pools"
    assert [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
        for s in pool.sentinel_manager.sentinels
    ] == [("s1", 26379), ("s2", 26380)]
    assert (
        pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs["password"]
        == "sentinel-pw"
    )
    assert pool.connection_kwargs["password"] == "master-pw"
    assert pool.connection_kwargs["db"] == 4
    assert endpoint.location == "sentinel://:***@s1:26379/4;sentinel://s2:26380/4 (service 'pools')"


@pytest.mark.parametrize(
    ("url", "options", "field", "says"),
    [
        ("sentinel://s1:26379", {}, "master_name", "the name of the Sentinel service"),
        (
            "sentinel://s1:26379",
            {"master_name": "p", "sentinel_kwargs": 3},
            "sentinel_kwargs",
            "a mapping",
        ),
        (
            "sentinel://s1:26379;redis://h:1",
            {"master_name": "p"},
            "pools_redis_url",
            "every ';'-separated part a sentinel:// URL",
        ),
        ("sentinel://s1:26379/x", {"master_name": "p"}, "pools_redis_url", "a database number"),
        (
            "redis://h:1/0",
            {"master_name": "p"},
            "pools_redis_transport_options",
            "only with a sentinel://",
        ),
        ("redis://h:1/0", {"colour": "red"}, "pools_redis_transport_options", "one of master_name"),
        ("amqp://h:1//", {}, "pools_redis_url", "a URL of redis://"),
        ("sentinel://s1:port", {"master_name": "p"}, "pools_redis_url", "a port number"),
    ],
)
def test_a_wrong_url_or_option_names_the_field_the_value_and_what_is_allowed(
    url, options, field, says
):
    with pytest.raises(PoolConfigError) as caught:
        connect(url, route_key="k", options=options)
    message = str(caught.value)
    assert field in message
    assert says in message


def test_a_cluster_that_does_not_answer_is_a_backend_error_not_a_config_error():
    with pytest.raises(PoolBackendError, match=r"Redis Cluster at redis\+cluster://127.0.0.1:1"):
        connect("redis+cluster://127.0.0.1:1", route_key="k", socket_timeout=0.5)


def test_pool_state_on_a_sentinel_broker_takes_the_brokers_master_name():
    app = _app(
        broker_url="sentinel://s1:26379;sentinel://s2:26379",
        broker_transport_options={"master_name": "broker-master", "visibility_timeout": 60},
    )
    settings = PoolsSettings.from_app(app)
    assert settings.resolve_redis_url(app) == "sentinel://s1:26379;sentinel://s2:26379"
    assert settings.resolve_transport_options(app) == {"master_name": "broker-master"}

    own = _app(
        broker_url="sentinel://s1:26379",
        broker_transport_options={"master_name": "broker-master"},
        pools_redis_url="sentinel://p1:26379",
        pools_redis_transport_options={"master_name": "pools-master"},
    )
    settings = PoolsSettings.from_app(own)
    assert settings.resolve_transport_options(own) == {"master_name": "pools-master"}


def test_wait_settings_are_checked():
    with pytest.raises(PoolConfigError, match="pools_redis_wait_replicas"):
        PoolsSettings.from_app(_app(pools_redis_wait_replicas=-1))
    with pytest.raises(PoolConfigError, match="pools_redis_wait_timeout_seconds"):
        PoolsSettings.from_app(_app(pools_redis_wait_timeout_seconds=0))


def test_the_client_decodes_and_times_out_as_the_store_needs():
    endpoint = connect("redis://127.0.0.1:1/0", route_key="k", socket_timeout=0.3)
    kwargs = endpoint.client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.3
    assert kwargs["decode_responses"] is True
    with pytest.raises(redis.ConnectionError):
        endpoint.client.ping()


def test_a_wrong_pools_redis_url_is_named_without_its_password():
    app = _app(pools_redis_url="amqp://guest:hunter2-secret@h:5672//")
    with pytest.raises(PoolConfigError) as caught:
        PoolsSettings.from_app(app).resolve_redis_url(app)
    assert "hunter2" not in str(caught.value)
    assert "amqp://guest:***@h:5672//" in str(caught.value)


def test_the_acl_line_in_the_deployment_docs_is_what_the_code_prints():
    docs = (Path(__file__).parents[1] / "docs" / "deployment.md").read_text()
    assert acl_setuser("celery-pools") in docs


@pytest.mark.parametrize(
    ("version", "setinfo"),
    [(None, False), ((6, 2, 14), False), ((7, 0, 15), False), ((7, 1), False), ((7, 2, 0), True)],
)
def test_the_acl_line_allows_client_setinfo_only_where_redis_has_it(version, setinfo):
    # Redis 7.0 and 7.1 refuse an ACL SETUSER naming a subcommand they do not have.
    line = acl_setuser("celery-pools", redis_version=version)
    words = line.split()
    assert ("+client|setinfo" in words) is setinfo
    assert "+evalsha" in words
    if setinfo:  # with the connection's own commands
        assert words[words.index("+select") + 1] == "+client|setinfo"
