"""A Redis shared with others: an ACL user limited to one prefix, TLS, prefixes kept apart.

The ACL user is what ``celery -A proj pools acl`` prints (:func:`~celery_pools.store.acl_setuser`):
the keys of one prefix and the commands celery-pools sends, nothing else. Redis's own ``ACL LOG``
is the witness that nothing celery-pools did was refused, but for the two refusals the design
expects: ``CONFIG GET maxmemory-policy`` (a check the worker skips without it) and, on a Redis
older than 7.2, ``CLIENT SETINFO`` (which redis-py sends on connecting and that Redis does not
know). TLS runs against a CA and a server
certificate the test makes; a client that does not trust that CA is refused.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import redis
from celery.bin.base import CLIContext
from celery.contrib.testing.worker import start_worker
from click.testing import CliRunner

from celery_pools import PoolBackendError, PoolManager
from celery_pools.cli import pools
from celery_pools.store import acl_setuser
from tests.support.redis_server import RedisServer, free_port
from tests.support.tls import make_certificates, tls_redis_server
from tests.workerapp import INSTANCE

PASSWORD = "pools-secret-0123456789"
# The commands an ACL user of acl_setuser() is refused by design (see the module's docstring),
# as Redis 6 names them in ACL LOG and as Redis 7 does (with the subcommand).
_EXPECTED_REFUSALS = {"config", "client", "config|get", "client|setinfo"}


def _user_url(server: RedisServer, user: str) -> str:
    return f"redis://{user}:{PASSWORD}@{server.host}:{server.port}/0"


def _add_user(server: RedisServer, user: str, prefix: str) -> None:
    version = PoolManager.from_url(server.url()).store.redis_version()
    assert version is not None
    line = acl_setuser(user, prefix, PASSWORD, redis_version=version)
    server.client().execute_command(*line.split())


def _run_a_bit_of_everything(env, app) -> None:
    """Every kind of operation: management, both waiting modes with waiters and standbys,
    rate limits and pauses, status, metrics, clear and delete."""
    manager = env.manager()
    manager.create("api", limit=2)
    manager.create("ho", limit=1, wait="handoff")
    manager.assign(INSTANCE, "api")
    manager.assign("inst-b", "ho")
    manager.set_rate_limit(INSTANCE, "600/m")
    manager.pause("inst-b", 0.2)
    manager.resume("inst-b")
    with start_worker(
        app,
        pool="threads",
        concurrency=6,
        perform_ping_check=False,
        queues=[app.conf.task_default_queue],
        shutdown_timeout=30,
    ):
        counted = [app.tasks["t.hold"].delay(f"a{i}", 0.1) for i in range(6)]
        handed = [app.tasks["t.hold_on"].delay(f"b{i}", 0.1, instance="inst-b") for i in range(4)]
        assert [r.get(timeout=60) for r in counted] == [f"a{i}" for i in range(6)]
        assert [r.get(timeout=60) for r in handed] == [f"b{i}" for i in range(4)]
    probe = env.probe()
    assert probe.max_concurrency() <= 3  # 2 of api + 1 of ho, counted by the probe
    assert manager.metrics("api").status.in_use == 0
    assert manager.status("ho").in_use == 0
    assert manager.rates([INSTANCE])[0].rate is not None
    manager.clear("api")
    manager.delete("ho")


def test_an_acl_user_of_one_prefix_runs_everything_and_touches_nothing_else(private_redis, env):
    # The command asks the Redis the user is for its version (CLIENT SETINFO or not).
    env.pools_url = private_redis.url(0)
    context = CLIContext(app=env.app(), no_color=True, workdir=None)
    printed = CliRunner().invoke(pools, ["acl", "--user", "pools-a"], obj=context).output
    assert printed.startswith(f"ACL SETUSER pools-a on ><password> resetkeys ~{{{env.prefix}}}:* ")
    line = printed.strip().replace("<password>", PASSWORD)
    private_redis.client().execute_command(*line.split())
    admin = private_redis.client(decode_responses=True)
    admin.set("someone-elses-key", "theirs")
    admin.execute_command("ACL", "LOG", "RESET")
    env.pools_url = _user_url(private_redis, "pools-a")

    _run_a_bit_of_everything(env, env.app())

    denied = [
        entry
        for entry in admin.execute_command("ACL", "LOG")
        if entry["object"] not in _EXPECTED_REFUSALS
    ]
    assert denied == [], f"Redis refused celery-pools' commands: {denied}"
    user = redis.Redis.from_url(env.pools_url, decode_responses=True)
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.get("someone-elses-key")
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.flushall()
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.hgetall("{other-prefix}:instances")


def test_two_prefixes_on_one_redis_never_see_each_others_pools(private_redis):
    _add_user(private_redis, "pools-a", "app-a")
    _add_user(private_redis, "pools-b", "app-b")
    a = PoolManager.from_url(_user_url(private_redis, "pools-a"), key_prefix="app-a")
    b = PoolManager.from_url(_user_url(private_redis, "pools-b"), key_prefix="app-b")
    a.create("api", limit=2)
    b.create("api", limit=7)
    b.create("only-b", limit=1)
    a.assign("netsuite", "api")
    assert [p.name for p in a.list()] == ["api"]
    assert (a.get("api").limit, b.get("api").limit) == (2, 7)
    assert a.pool_of("netsuite") == "api"
    assert b.pool_of("netsuite") is None
    b.clear("api")
    b.delete("api")
    assert a.get("api").limit == 2
    # Even asked to, user a cannot reach b's prefix.
    trespasser = PoolManager.from_url(_user_url(private_redis, "pools-a"), key_prefix="app-b")
    with pytest.raises(PoolBackendError, match="no permissions to access one of the keys"):
        trespasser.list()


@pytest.fixture
def tls_redis():
    binary = tls_redis_server()
    if binary is None:
        pytest.skip("no redis-server built with TLS (Debian's redis-server package is)")
    folder = Path(tempfile.mkdtemp(prefix="cp-tls-"))
    certs = make_certificates(folder)
    tls_port = free_port()
    server = RedisServer(
        binary=binary,
        extra_args=[
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(certs.cert),
            "--tls-key-file", str(certs.key),
            "--tls-ca-cert-file", str(certs.ca),
            "--tls-auth-clients", "no",
        ],
    ).start()  # fmt: skip
    yield server, tls_port, certs
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


def test_rediss_with_the_tests_ca_carries_pool_state_and_a_stranger_is_refused(tls_redis, env):
    server, tls_port, certs = tls_redis
    env.pools_url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={certs.ca}"
    _run_a_bit_of_everything(env, env.app())
    stranger = PoolManager.from_url(f"rediss://127.0.0.1:{tls_port}/0", key_prefix=env.prefix)
    with pytest.raises(PoolBackendError, match="certificate verify failed"):
        stranger.list()
    # The plain port saw none of it: every connection of the run was a TLS one.
    assert server.client(decode_responses=True).info("stats")["total_connections_received"] >= 1
