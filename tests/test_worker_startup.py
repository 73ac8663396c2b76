"""What a worker does when it starts: declared pools, nothing reverted by a restart, connections
opened ahead."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import pytest

from celery_pools import PoolConfigError, PoolsSettings
from celery_pools.context import get_extension
from celery_pools.store import AcquireStatus, Acquisition
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


@pytest.mark.slow
def test_pools_declared_while_redis_was_down_are_declared_when_it_is_back(
    private_redis, private_env
):
    """A worker started while the pools' Redis is unreachable declares its pools as soon as it
    is back (an empty Redis: nothing kept), before any task of a declared instance runs: never
    more at once than the declared limit, counted by the probe."""
    env = private_env
    env.extra_worker_env["CP_POOLS_DECLARE"] = json.dumps(
        {"api": {"limit": 1, "timeout": 120, "instances": [INSTANCE]}}
    )
    private_redis.kill()
    worker = env.worker(concurrency=4)
    assert "unreachable at start-up" in worker.log_text()
    app = env.app()
    results = [app.tasks["t.hold"].delay(f"t{i}", 0.3) for i in range(6)]
    private_redis.restart()
    assert [r.get(timeout=120) for r in results] == [f"t{i}" for i in range(6)]
    probe = env.probe()
    assert probe.count() == 6
    assert probe.max_concurrency() == 1
    manager = env.manager()
    assert manager.get("api").limit == 1
    assert manager.pool_of(INSTANCE) == "api"
    wait_until(
        lambda: "the pools of pools_declare are declared" in worker.log_text(),
        10,
        message="the worker's main process never declared its pools",
    )


def test_a_process_that_could_not_declare_declares_before_a_declared_instance_runs_unlimited(env):
    """``Declared.ask_again``: an answer that finds a declared instance with no pool, in a
    process that has not declared ``pools_declare``, declares them (once) and asks again; any
    other answer, instance or process that declared them goes on as it was."""
    declare = {"api": {"limit": 2, "instances": [INSTANCE]}}
    ext = get_extension(env.app(pools_declare=declare))
    unassigned = Acquisition(status=AcquireStatus.UNASSIGNED, now=0.0)
    full = Acquisition(status=AcquireStatus.FULL, now=0.0)
    manager = env.manager()
    assert not ext.declared.done
    assert not ext.declared_now(full, INSTANCE)
    assert not ext.declared_now(unassigned, "other-instance")
    assert manager.list() == []  # neither declared anything
    assert ext.declared_now(unassigned, INSTANCE)
    assert ext.declared.done
    assert manager.get("api").limit == 2
    assert manager.pool_of(INSTANCE) == "api"
    # Once declared, a pool deleted at run time stays deleted.
    manager.delete("api")
    assert not ext.declared_now(unassigned, INSTANCE)
    assert manager.list() == []


def test_a_process_forked_before_its_parent_declared_sees_it_declared(env):
    """A prefork child forked while Redis was down learns that its worker declared the pools
    once Redis is back (and so never declares them again, a deleted one included)."""
    ext = get_extension(env.app(pools_declare={"api": {"limit": 2, "instances": [INSTANCE]}}))
    pid = os.fork()
    if pid == 0:  # the child: waits to see its parent's declaration, at most 10 s
        deadline = time.monotonic() + 10
        while not ext.declared.done and time.monotonic() < deadline:
            time.sleep(0.01)
        os._exit(0 if ext.declared.done else 1)
    assert ext.declare_pools() == ["api"]
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


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
