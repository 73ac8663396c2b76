"""``celery -A proj pools ...`` through click's runner and as real subprocesses, with real
Redis servers and real workers (in-process threads, and ``celery worker`` subprocesses)."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result

from celery_pools import PoolClearedError, PoolDeletedError, PoolManager
from celery_pools.cli import pools
from tests.support.polling import wait_until
from tests.support.worker_process import REPO_ROOT
from tests.workerapp import INSTANCE, create_app


def _cli(env: Any, *args: str, app: Any = None, input: str | None = None) -> Result:
    """Run ``pools ARGS`` through click's runner with the test's app."""
    context = CLIContext(app=app or env.app(), no_color=True, workdir=None)
    return CliRunner().invoke(pools, list(args), obj=context, input=input, catch_exceptions=False)


def _defined(pool: Any) -> tuple[str, int, float]:
    """A pool's name, limit and timeout, from a ``Pool`` or its JSON (other fields ignored)."""
    data = pool if isinstance(pool, dict) else pool.model_dump()
    return data["name"], data["limit"], data["timeout"]


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "tests.workerapp", *args]


def _environ(env: Any) -> dict[str, str]:
    return {**os.environ, **env.worker_env(), "PYTHONPATH": str(REPO_ROOT)}


def _run(command: list[str], environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``command`` from the repository with ``environ``, no input, its output captured."""
    return subprocess.run(
        command,
        env=environ,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def _celery(env: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``celery -A tests.workerapp ARGS`` as a real subprocess."""
    return _run(_command(*args), _environ(env))


def _spawn(env: Any, *args: str) -> subprocess.Popen[str]:
    """Start ``celery -A tests.workerapp ARGS`` as a real subprocess (read it with communicate)."""
    return subprocess.Popen(
        _command(*args),
        env=_environ(env),
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _in_terminal(env: Any, *args: str, answer: str | None = None) -> tuple[int, str]:
    """Run ``celery -A tests.workerapp ARGS`` on a pseudo-terminal; answer a [y/N] prompt."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        _command(*args), stdin=slave, stdout=slave, stderr=slave, env=_environ(env), cwd=REPO_ROOT
    )
    os.close(slave)
    output = bytearray()
    pending_answer = answer
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            readable, _, _ = select.select([master], [], [], 0.1)
            if readable:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the process closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            if pending_answer is not None and b"[y/N]" in output:
                os.write(master, pending_answer.encode() + b"\n")
                pending_answer = None
            if not readable and proc.poll() is not None:
                break
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, output.decode(errors="replace")


def _pool(env: Any, limit: int, timeout: float = 30.0, name: str = "api") -> PoolManager:
    manager = env.manager()
    manager.create(name, limit=limit, timeout=timeout)
    manager.assign(INSTANCE, name)
    return manager


# -- writing and reading, no task involved ----------------------------------------------------


def test_create_assign_update_unassign_and_delete_change_redis_and_say_so(env):
    manager = env.manager()
    app = env.app()

    result = _cli(env, "create", "api", "--limit", "3", "--timeout", "12.5", app=app)
    assert result.exit_code == 0, result.output
    assert result.stdout == "Created pool api (limit 3, timeout 12.5s).\n"
    assert _defined(manager.get("api")) == ("api", 3, 12.5)

    assert _cli(env, "create", "other", "--limit", "1", app=app).exit_code == 0
    assert manager.get("other").timeout == 30.0

    result = _cli(env, "assign", INSTANCE, "api", app=app)
    assert result.stdout == f"Assigned instance {INSTANCE} to pool api.\n"
    result = _cli(env, "assign", INSTANCE, "other", app=app)
    assert result.stdout == f"Assigned instance {INSTANCE} to pool other (was api).\n"
    assert manager.pool_of(INSTANCE) == "other"

    result = _cli(env, "update", "api", "--limit", "5", app=app)
    assert result.stdout == "Updated pool api: limit 3 -> 5.\n"
    result = _cli(env, "update", "api", "--timeout", "40", "--json", app=app)
    assert _defined(json.loads(result.stdout)) == ("api", 5, 40.0)
    assert _defined(manager.get("api")) == ("api", 5, 40.0)

    result = _cli(env, "unassign", INSTANCE, app=app)
    assert result.stdout == f"Unassigned instance {INSTANCE} from pool other.\n"
    assert manager.pool_of(INSTANCE) is None
    result = _cli(env, "unassign", INSTANCE, "--json", app=app)
    assert json.loads(result.stdout) == {"instance": INSTANCE, "pool": None, "previous": None}

    manager.assign("inst-b", "other")
    result = _cli(env, "delete", "other", "--yes", app=app)
    assert result.exit_code == 0
    assert result.stdout.startswith("Deleted pool other: 1 instance unassigned; 0 waiting tasks")
    assert [pool.name for pool in manager.list()] == ["api"]
    assert manager.associations() == {}


def test_list_shows_a_table_of_every_pool_and_json_for_scripts(env):
    app = env.app()
    assert _cli(env, "list", app=app).stdout == "No pools.\n"
    assert json.loads(_cli(env, "list", "--json", app=app).stdout) == []
    manager = _pool(env, limit=2, timeout=12.5)
    manager.assign("inst-b", "api")
    manager.create("zeta", limit=10)
    # A slot taken through the store, as a running task would.
    manager.store.acquire(INSTANCE, "task-1", lease=60, info={"task_name": "t.x"})

    lines = _cli(env, "list", app=app).stdout.splitlines()
    assert lines[0].split() == [
        "NAME",
        "LIMIT",
        "IN",
        "USE",
        "FREE",
        "WAITING",
        "TIMEOUT",
        "WAIT",
        "INSTANCES",
    ]
    assert lines[1].split() == [
        "api",
        "2",
        "1",
        "1",
        "0",
        "12.5s",
        "countdown",
        f"{INSTANCE},",
        "inst-b",
    ]
    assert lines[2].split() == ["zeta", "10", "0", "10", "0", "30s", "countdown", "-"]
    # Columns are aligned; numbers to the right.
    assert lines[1].index("12.5s") + len("12.5s") == lines[0].index("TIMEOUT") + len("TIMEOUT")

    listed = json.loads(_cli(env, "list", "--json", app=app).stdout)
    assert [(s["name"], s["limit"], s["in_use"], s["instances"]) for s in listed] == [
        ("api", 2, 1, [INSTANCE, "inst-b"]),
        ("zeta", 10, 0, []),
    ]
    assert listed[0]["holders"][0]["task_id"] == "task-1"


def test_errors_go_to_stderr_with_a_non_zero_exit_status(env):
    app = env.app()
    env.manager().create("api", limit=1)
    cases = [
        (("create", "api", "--limit", "2"), 1, "Error: a pool named 'api' already exists"),
        (("create", "new", "--limit", "0"), 1, "Error: invalid limit 0: a limit is a whole"),
        (("create", "new", "--limit", "1", "--timeout", "301"), 1, "Error: invalid timeout"),
        (("create", "bad/name", "--limit", "1"), 1, "Error: invalid name 'bad/name'"),
        (("create", "new", "--limit", "many"), 2, "'many' is not a valid integer"),
        (("create", "new"), 2, "Missing option '--limit'"),
        (("show", "nope"), 1, "Error: no pool named 'nope'"),
        (("update", "nope", "--limit", "2"), 1, "Error: no pool named 'nope'"),
        (("update", "api"), 2, "Error: give --limit, --timeout, --wait or several of them"),
        (("assign", INSTANCE, "nope"), 1, "no pool named 'nope' exists"),
        (("delete", "nope", "--yes"), 1, "Error: no pool named 'nope'"),
        (("clear", "nope", "--yes"), 1, "Error: no pool named 'nope'"),
        (("watch", "nope", "--iterations", "1"), 1, "Error: no pool named 'nope'"),
        (("import", "/nonexistent/pools.json"), 1, "Error: cannot read /nonexistent/pools.json"),
    ]
    for args, code, message in cases:
        result = _cli(env, *args, app=app)
        assert result.exit_code == code, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
        assert result.stdout == "", args
    assert env.manager().list() == [env.manager().get("api")]
    assert env.manager().get("api").limit == 1


# -- with tasks running in a real worker ------------------------------------------------------


def test_show_lists_holder_and_waiters_oldest_first_then_clear_fails_the_waiters(env, run_worker):
    manager = _pool(env, limit=1)
    app = env.app()
    hold = app.tasks["t.hold"]
    with run_worker(app, concurrency=4):
        blocker = hold.delay("blocker", 3.0)
        wait_until(lambda: env.probe().current() == 1, 10, message="blocker never started")
        first = hold.apply_async(("first", 0), link_error=app.tasks["t.record_error"].s())
        wait_until(lambda: manager.status("api").waiting == 1, 10, message="first never waited")
        second = hold.apply_async(("second", 0), link_error=app.tasks["t.record_error"].s())
        wait_until(lambda: manager.status("api").waiting == 2, 10, message="never 2 waiting")

        text = _cli(env, "show", "api", app=app).stdout
        assert "  limit      1\n" in text
        assert "  in use     1\n" in text
        assert "  waiting    2 (oldest " in text
        assert f"  instances  {INSTANCE}\n" in text
        holders, waiters = text.split("Holders (1)\n")[1].split("Waiters (2)\n")
        holder_row = holders.splitlines()[1].split()
        assert holder_row[:2] == [blocker.id, "t.hold"]
        assert "ago)" in holders
        assert "(in " in holders  # the lease expires in the future
        assert waiters.index(first.id) < waiters.index(second.id)

        shown = json.loads(_cli(env, "show", "api", "--json", app=app).stdout)
        assert [h["task_id"] for h in shown["holders"]] == [blocker.id]
        # The WORKER column is the host the task reported (a subprocess test checks that it
        # is the worker's node name).
        assert shown["holders"][0]["hostname"]
        assert holder_row[2] == shown["holders"][0]["hostname"]
        assert [w["task_id"] for w in shown["waiters"]] == [first.id, second.id]
        assert shown["waiters"][0]["deadline"] > shown["now"]

        result = _cli(env, "clear", "api", "--yes", app=app)
        assert result.exit_code == 0
        assert result.stdout == (
            "Cleared pool api: 2 waiting tasks will fail with PoolClearedError.\n"
        )
        for waiter in (first, second):
            with pytest.raises(PoolClearedError):
                waiter.get(timeout=30)
        assert blocker.get(timeout=30) == "blocker"
    assert {label for label, _ in env.probe().starts()} == {"blocker"}
    errbacks = env.probe().client.lrange(f"probe:{env.name}:errbacks", 0, -1)
    wait_until(
        lambda: len(env.probe().client.lrange(f"probe:{env.name}:errbacks", 0, -1)) == 2,
        10,
        message=f"link_error did not run for both waiters: {errbacks}",
    )


def test_clear_release_held_frees_running_slots_and_its_help_warns_about_the_limit(env, run_worker):
    help_text = " ".join(_cli(env, "clear", "--help").stdout.split())
    assert "--release-held" in help_text
    assert "can admit more tasks than the limit while they finish" in help_text
    manager = _pool(env, limit=1)
    app = env.app()
    with run_worker(app, concurrency=3):
        blocker = app.tasks["t.hold"].delay("blocker", 2.5)
        wait_until(lambda: env.probe().current() == 1, 10, message="blocker never started")
        result = _cli(env, "clear", "api", "--release-held", "--yes", "--json", app=app)
        assert json.loads(result.stdout) == {
            "pool": "api",
            "waiters_dropped": 0,
            "holders_released": 1,
        }
        assert manager.status("api").in_use == 0
        # The freed slot admits a second task while the first still runs: above the limit.
        extra = app.tasks["t.hold"].delay("extra", 0.2)
        assert extra.get(timeout=30) == "extra"
        assert blocker.get(timeout=30) == "blocker"
    assert env.probe().max_concurrency() == 2


def test_update_growing_admits_waiters_and_shrinking_interrupts_nothing(env, run_worker):
    manager = _pool(env, limit=1)
    app = env.app()
    with run_worker(app, concurrency=6):
        results = [app.tasks["t.hold"].delay(f"h{i}", 2.5) for i in range(3)]
        wait_until(lambda: manager.status("api").waiting == 2, 10, message="never waited")
        assert _cli(env, "update", "api", "--limit", "3", app=app).exit_code == 0
        wait_until(lambda: env.probe().current() == 3, 5, message="waiters not admitted")
        result = _cli(env, "update", "api", "--limit", "1", app=app)
        assert result.stdout.splitlines() == [
            "Updated pool api: limit 3 -> 1.",
            "3 running tasks hold slots; they finish normally, and no new task starts until "
            "fewer than 1 are running.",
        ]
        assert [r.get(timeout=30) for r in results] == ["h0", "h1", "h2"]
    ends = [label for kind, label, _, _ in env.probe().events() if kind == "end"]
    assert sorted(ends) == ["h0", "h1", "h2"]
    assert manager.status("api").in_use == 0


def test_delete_fails_waiters_with_pool_deleted_error_and_the_holder_finishes(env, run_worker):
    manager = _pool(env, limit=1)
    app = env.app()
    with run_worker(app, concurrency=3):
        blocker = app.tasks["t.hold"].delay("blocker", 2.5)
        wait_until(lambda: env.probe().current() == 1, 10, message="blocker never started")
        waiter = app.tasks["t.hold"].delay("waiter", 0)
        wait_until(lambda: manager.status("api").waiting == 1, 10, message="never waited")
        result = _cli(env, "delete", "api", "--yes", app=app)
        assert result.stdout == (
            "Deleted pool api: 1 instance unassigned; 1 waiting task will fail with "
            "PoolDeletedError; 1 running task finish normally.\n"
        )
        with pytest.raises(PoolDeletedError):
            waiter.get(timeout=30)
        assert blocker.get(timeout=30) == "blocker"
    assert manager.list() == []
    assert manager.pool_of(INSTANCE) is None


# -- confirmation -----------------------------------------------------------------------------


def test_clear_and_delete_need_yes_when_stdin_is_not_a_terminal(env):
    manager = _pool(env, limit=1)
    manager.store.acquire(INSTANCE, "holder", lease=60)
    manager.store.acquire(INSTANCE, "waiter", lease=60)
    app = env.app()
    for args in (("clear", "api"), ("clear", "api", "--release-held"), ("delete", "api")):
        result = _cli(env, *args, app=app, input="y\n")
        assert result.exit_code == 1, args
        assert "needs --yes when stdin is not a terminal" in result.stderr
    status = manager.status("api")
    assert (status.in_use, status.waiting) == (1, 1)
    assert manager.pool_of(INSTANCE) == "api"


def test_clear_and_delete_ask_for_confirmation_on_a_terminal(env):
    manager = _pool(env, limit=1)
    manager.store.acquire(INSTANCE, "holder", lease=60)
    manager.store.acquire(INSTANCE, "waiter", lease=60)

    code, output = _in_terminal(env, "pools", "delete", "api", answer="n")
    assert code == 1, output
    assert "Delete pool 'api' (instances left without a pool: inst-a; 1 waiting task" in output
    assert "Aborted" in output
    assert [pool.name for pool in manager.list()] == ["api"]

    code, output = _in_terminal(env, "pools", "clear", "api", answer="y")
    assert code == 0, output
    assert "Clear pool 'api' (1 waiting task will fail)? [y/N]" in output
    assert "Cleared pool api: 1 waiting task will fail with PoolClearedError." in output
    assert manager.status("api").waiting == 0
    assert manager.status("api").in_use == 1


# -- watch ------------------------------------------------------------------------------------


def test_watch_prints_each_refresh_without_a_terminal(env):
    manager = _pool(env, limit=2)
    manager.create("idle", limit=4)
    manager.store.acquire(INSTANCE, "t1", lease=60)
    manager.store.acquire(INSTANCE, "t2", lease=60)
    manager.store.acquire(INSTANCE, "t3", lease=60)  # waits: the pool is full
    app = env.app()

    result = _cli(env, "watch", "--iterations", "2", "--interval", "0.05", app=app)
    assert result.exit_code == 0
    assert "\x1b[" not in result.stdout
    frames = result.stdout.strip().split("\n\n")
    assert len(frames) == 2
    for frame in frames:
        lines = frame.splitlines()
        assert lines[1].split() == [
            "NAME",
            "USE",
            "IN",
            "USE",
            "WAITING",
            "OLDEST",
            "WAIT",
            "P95",
            "WAIT",
        ]
        api = lines[2].split()
        assert api[0] == "api"
        assert api[1] == "[" + "#" * 20 + "]"
        assert api[2:4] == ["2/2", "1"]
        assert api[4].endswith("s")
        assert lines[3].split()[:3] == ["idle", "[" + "." * 20 + "]", "0/4"]

    one = _cli(env, "watch", "idle", "--iterations", "1", app=app).stdout
    assert "idle" in one
    assert "api" not in one

    result = _cli(env, "watch", "api", "--iterations", "3", "--interval", "0.05", "--json", app=app)
    refreshes = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(refreshes) == 3
    assert all([s["name"] for s in r] == ["api"] for r in refreshes)
    assert refreshes[-1][0]["in_use"] == 2
    assert refreshes[-1][0]["waiting"] == 1


def test_watch_redraws_in_place_on_a_terminal(env):
    _pool(env, limit=3)
    code, output = _in_terminal(env, "pools", "watch", "--iterations", "3", "--interval", "0.1")
    assert code == 0, output
    # The first frame is printed; each later one moves the cursor back up over the previous
    # frame (3 lines: header, column titles, one pool) and erases it first.
    assert output.count("\x1b[3F\x1b[J") == 2
    assert output.count("0/3") == 3


# -- export and import -------------------------------------------------------------------------


def test_export_then_import_into_an_empty_redis_reproduces_pools_and_associations(
    env, private_redis, tmp_path
):
    manager = env.manager()
    manager.create("netsuite", limit=10, timeout=30)
    manager.create("salesforce", limit=3, timeout=12.5)
    manager.create("spare", limit=1, timeout=0)
    for instance, pool in {
        "netsuite-prod": "netsuite",
        "netsuite-sandbox": "netsuite",
        "sf:eu@acme/1": "salesforce",
    }.items():
        manager.assign(instance, pool)
    app = env.app()
    empty = create_app(
        broker=env.broker,
        backend=env.backend,
        pools_url=private_redis.url(3),
        prefix=env.prefix,
        queue=env.queue,
        probe_url=env.probe_url,
        probe_name=env.name,
    )
    target = PoolManager(empty)
    assert target.list() == []

    for filename in ("pools.yaml", "pools.json"):
        path = tmp_path / filename
        result = _cli(env, "export", str(path), app=app)
        assert result.stdout == f"Exported 3 pools and 3 associations to {path}.\n"
        if filename.endswith(".json"):
            document = json.loads(path.read_text())
            assert document["pools"]["salesforce"] == {
                "limit": 3,
                "timeout": 12.5,
                "wait": "countdown",
                "instances": ["sf:eu@acme/1"],
            }
            assert document["rate_limits"] == {}
        else:
            assert "netsuite:\n    limit: 10\n    timeout: 30\n" in path.read_text()

        result = _cli(env, "import", str(path), app=empty)
        assert result.exit_code == 0, result.output
        assert target.list() == manager.list()
        assert target.associations() == manager.associations()
        # Idempotent: importing again changes nothing.
        again = json.loads(_cli(env, "import", str(path), "--json", app=empty).stdout)
        assert again["counts"] == {
            "create": 0,
            "change": 0,
            "unchanged": 6,
            "keep": 0,
            "remove": 0,
        }
        private_redis.client(3).flushdb()

    # '-' exports to stdout and imports from stdin.
    exported = _cli(env, "export", "-", app=app).stdout
    assert _cli(env, "import", "-", app=empty, input=exported).exit_code == 0
    assert target.list() == manager.list()
    assert target.associations() == manager.associations()


def test_import_reports_what_it_creates_changes_and_leaves_alone_and_dry_run_writes_nothing(
    env, tmp_path
):
    manager = env.manager()
    manager.create("api", limit=2)
    manager.create("legacy", limit=1)
    manager.assign("inst-a", "legacy")
    manager.assign("inst-z", "legacy")
    path = tmp_path / "pools.yml"
    path.write_text(
        "version: 1\n"
        "pools:\n"
        "  api: {limit: 5, timeout: 30}\n"
        "  new: {limit: 1, instances: [inst-a, inst-n]}\n"
    )
    app = env.app()
    before = (manager.list(), manager.associations())

    dry = _cli(env, "import", str(path), "--dry-run", app=app)
    assert dry.exit_code == 0, dry.output
    rows = [line.split()[:3] for line in dry.stdout.splitlines()[1:-1]]
    assert rows == [
        ["would", "change", "pool"],
        ["would", "create", "pool"],
        ["would", "change", "association"],
        ["would", "create", "association"],
        ["would", "keep", "association"],
        ["would", "keep", "pool"],
    ]
    assert "limit 2 -> 5" in dry.stdout
    assert "legacy -> new" in dry.stdout
    assert dry.stdout.splitlines()[-1] == (
        "Dry run, nothing written: 2 to create, 2 to change, 0 unchanged, "
        "2 left alone (not in file)."
    )
    assert (manager.list(), manager.associations()) == before

    report = json.loads(_cli(env, "import", str(path), "--json", app=app).stdout)
    assert [(c["kind"], c["name"], c["action"]) for c in report["changes"]] == [
        ("pool", "api", "change"),
        ("pool", "new", "create"),
        ("association", "inst-a", "change"),
        ("association", "inst-n", "create"),
        ("association", "inst-z", "keep"),
        ("pool", "legacy", "keep"),
    ]
    assert [(p.name, p.limit) for p in manager.list()] == [("api", 5), ("legacy", 1), ("new", 1)]
    assert manager.associations() == {"inst-a": "new", "inst-n": "new", "inst-z": "legacy"}

    # --prune removes what the file does not have (it asks first, like delete).
    refused = _cli(env, "import", str(path), "--prune", app=app)
    assert refused.exit_code == 1
    assert "needs --yes" in refused.stderr
    assert [p.name for p in manager.list()] == ["api", "legacy", "new"]
    pruned = _cli(env, "import", str(path), "--prune", "--yes", app=app)
    assert pruned.exit_code == 0, pruned.output
    rows = [line.split()[:3] for line in pruned.stdout.splitlines()[1:-1]]
    assert ["removed", "association", "inst-z"] in rows
    assert ["removed", "pool", "legacy"] in rows
    assert pruned.stdout.splitlines()[-1] == "0 created, 0 changed, 4 unchanged, 2 removed."
    assert [p.name for p in manager.list()] == ["api", "new"]
    assert manager.associations() == {"inst-a": "new", "inst-n": "new"}


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "two.json",
            '{"version": 1, "pools": {"a": {"limit": 1, "instances": ["x"]}, '
            '"b": {"limit": 1, "instances": ["x"]}}}',
            "an instance belongs to at most one pool",
        ),
        ("limit.json", '{"version": 1, "pools": {"a": {"limit": 0}}}', "invalid pools.a.limit 0"),
        ("version.json", '{"version": 2, "pools": {}}', "version"),
        ("extra.yaml", "version: 1\npools: {a: {limit: 1, size: 3}}\n", "size"),
        ("name.yaml", "version: 1\npools: {'bad name': {limit: 1}}\n", "invalid pool name"),
        ("broken.yaml", "version: 1\npools: [\n", "is not valid YAML"),
        ("broken.json", '{"version": 1,', "is not valid JSON"),
    ],
)
def test_import_rejects_an_invalid_document_and_writes_nothing(env, tmp_path, name, text, message):
    manager = env.manager()
    manager.create("keep", limit=2)
    path = tmp_path / name
    path.write_text(text)
    result = _cli(env, "import", str(path))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {path}")
    assert message in result.stderr
    assert [(p.name, p.limit) for p in manager.list()] == [("keep", 2)]


# -- a real `celery -A ... pools` process against a real `celery worker` process --------------


@pytest.mark.slow
def test_celery_subprocesses_show_inspect_and_clear_a_pool_of_a_worker_process(env):
    manager = _pool(env, limit=1)
    worker = env.worker(concurrency=3)
    app = env.app()
    # The blocker outlives every command below, however slow the machine; the worker is killed
    # at the end instead of waiting for it.
    blocker = app.tasks["t.hold"].delay("blocker", 60.0)
    wait_until(lambda: env.probe().current() == 1, 20, message="blocker never started")
    waiters = [app.tasks["t.hold"].delay(f"w{i}", 0) for i in range(2)]
    wait_until(lambda: manager.status("api").waiting == 2, 20, message="never waited")

    # Three commands at once, while the blocker holds the slot and two tasks wait.
    listing = _spawn(env, "pools", "list")
    shown = _spawn(env, "pools", "show", "api", "--json")
    inspecting = _spawn(env, "inspect", "pools", "--json", "-d", worker.nodename)

    inspected, problem = inspecting.communicate(timeout=60)
    assert inspecting.returncode == 0, problem
    reply = json.loads(inspected)[worker.nodename]
    assert reply["pools"] == {"api": 1}
    assert [(s["task_id"], s["pool"], s["instance"]) for s in reply["held"]] == [
        (blocker.id, "api", INSTANCE)
    ]
    assert reply["held"][0]["task_name"] == "t.hold"
    assert reply["held"][0]["pid"] in worker.child_pids()

    listed, problem = listing.communicate(timeout=60)
    assert listing.returncode == 0, problem
    assert listed.splitlines()[1].split()[:5] == ["api", "1", "1", "0", "2"]
    status_text, problem = shown.communicate(timeout=60)
    assert shown.returncode == 0, problem
    status = json.loads(status_text)
    assert [(h["task_id"], h["hostname"]) for h in status["holders"]] == [
        (blocker.id, worker.nodename)
    ]
    assert {w["task_id"] for w in status["waiters"]} == {w.id for w in waiters}

    cleared = _celery(env, "pools", "clear", "api", "--yes")
    assert cleared.returncode == 0, cleared.stderr
    assert cleared.stdout == "Cleared pool api: 2 waiting tasks will fail with PoolClearedError.\n"
    for waiter in waiters:
        with pytest.raises(PoolClearedError):
            waiter.get(timeout=30)
    # The holder kept its slot and is still running; the waiters' bodies never ran.
    assert [h.task_id for h in manager.status("api").holders] == [blocker.id]
    assert blocker.state == "STARTED"
    assert {label for label, _ in env.probe().starts()} == {"blocker"}
    worker.kill()

    missing = _celery(env, "pools", "show", "nope")
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert missing.stderr.strip() == "Error: no pool named 'nope'"


def test_the_pools_command_is_installed_as_a_celery_subcommand():
    result = subprocess.run(
        [sys.executable, "-m", "celery", "--help"],
        capture_output=True,
        text=True,
        cwd=Path(REPO_ROOT),
        timeout=60,
        check=True,
    )
    assert any(line.split()[:1] == ["pools"] for line in result.stdout.splitlines())


def _celery_without_app(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``celery ARGS`` as a real subprocess with no app named (no ``-A``, no ``APP``, no
    ``CELERY_*`` settings in its environment)."""
    environ = {
        key: value
        for key, value in os.environ.items()
        if key != "APP" and not key.startswith("CELERY_")
    }
    return _run([sys.executable, "-m", "celery", *args], {**environ, "PYTHONPATH": str(REPO_ROOT)})


@pytest.mark.parametrize("command", [["release", "5f1c"], ["list"]])
def test_without_an_app_a_command_says_how_to_name_one(command):
    """``celery pools ...`` without ``-A`` (as a hurried operator types it) would run for
    Celery's default app, whose Redis is not the project's: a usage error says what to run."""
    run = _celery_without_app("pools", *command)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "no Celery app: run it as 'celery -A proj pools ...'" in run.stderr


def test_without_an_app_the_default_app_configured_by_b_still_runs(env):
    """``celery -b redis://... pools list`` configures Celery's default app, whose pools live in
    that Redis under the default key prefix: the command runs for it."""
    manager = PoolManager.from_url(env.pools_url)  # the default prefix, as the default app's
    name = f"via-b-{os.getpid()}-{time.monotonic_ns()}"
    manager.create(name, limit=3)
    try:
        run = _celery_without_app("-b", env.pools_url, "pools", "list")
    finally:
        manager.delete(name)
    assert run.returncode == 0, run.stdout + run.stderr
    assert name in run.stdout
