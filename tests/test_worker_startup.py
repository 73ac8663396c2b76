"""What a worker does when it starts: declared pools, nothing reverted by a restart, connections
opened ahead."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from celery_pools import PoolConfigError, PoolsSettings
from tests.support.polling import wait_until
from tests.workerapp import INSTANCE


def test_declared_pools_are_created_when_missing_and_never_reverted(env, run_worker):
    declare = {"api": {"limit": 2, "timeout": 12, "wait": "handoff", "instances": [INSTANCE]}}
    app = env.app(pools_declare=declare)
    manager = env.manager()
    assert manager.list() == []
    with run_worker(app, concurrency=1):
        pool = manager.get("api")
        assert (pool.limit, pool.timeout, pool.wait) == (2, 12.0, "handoff")
        assert manager.pool_of(INSTANCE) == "api"
    # Changed at run time, then a worker restarts: Redis stays the source of truth.
    manager.update("api", limit=7)
    manager.create("other", limit=1)
    manager.assign(INSTANCE, "other")
    with run_worker(env.app(pools_declare=declare), concurrency=1):
        assert manager.get("api").limit == 7
        assert manager.pool_of(INSTANCE) == "other"


def test_a_bad_declared_wait_mode_is_refused_naming_the_setting(env):
    app = env.app(pools_declare={"api": {"limit": 1, "wait": "later"}})
    with pytest.raises(PoolConfigError, match=r"invalid pools_declare\['api'\]\.wait 'later'"):
        PoolsSettings.from_app(app)


def _sockets_of(pid: int) -> set[str]:
    """The socket inodes process ``pid`` has open."""
    inodes = set()
    with contextlib.suppress(OSError):  # the process may have just ended
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    return inodes


def _connected_to(port: int) -> set[str]:
    """Inodes of the established TCP connections to local ``port`` (IPv4 and IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                remote_port, state, inode = (
                    int(fields[2].rsplit(":", 1)[1], 16),
                    fields[3],
                    fields[9],
                )
                if remote_port == port and state == "01":  # ESTABLISHED
                    inodes.add(inode)
    return inodes


@pytest.mark.slow
@pytest.mark.parametrize("server", ["pools", "broker"])
def test_each_prefork_child_connects_before_its_first_task(private_redis, env, server):
    # The pools' Redis, or the broker (to which a child publishes the hand-offs of the slots
    # it releases), is a Redis of this test alone. No task is ever sent: a child with a
    # connection of its own to it (not one inherited from the main process, which shares the
    # socket) opened it as it started.
    if server == "pools":
        env.pools_url = private_redis.url(3)
    else:
        env.broker = private_redis.url(1)
    worker = env.worker(concurrency=3)

    def children_connected() -> bool:
        children = worker.child_pids()
        own = _connected_to(private_redis.port) - _sockets_of(worker.pid)
        return len(children) == 3 and all(_sockets_of(pid) & own for pid in children)

    wait_until(
        children_connected,
        30,
        message=f"a prefork child has no connection to the {server} Redis before any task",
    )
