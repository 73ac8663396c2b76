"""The command line for waiting modes, rate limits, metrics, the exporter and the advisor, and
their export and import: click's runner and real ``celery -A ... pools`` processes against real
Redis servers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from celery_pools import PoolManager, RateLimit
from celery_pools.local_redis import free_port
from celery_pools.store import AcquireStatus
from tests.support.polling import wait_until
from tests.support.worker_process import REPO_ROOT
from tests.test_cli import _cli, _command, _environ, _run
from tests.workerapp import INSTANCE, create_app


def _until_redis_clock(store, when: float) -> None:
    wait_until(lambda: store.ping() >= when, 10, interval=0.01, message="Redis clock stuck")


# -- waiting mode ------------------------------------------------------------------------------


def test_create_and_update_set_the_waiting_mode_and_list_and_show_it(env):
    manager = env.manager()
    app = env.app()

    result = _cli(env, "create", "api", "--limit", "2", "--wait", "handoff", app=app)
    assert result.exit_code == 0, result.output
    assert result.stdout == "Created pool api (limit 2, timeout 30s, wait handoff).\n"
    assert manager.get("api").wait == "handoff"
    created = json.loads(_cli(env, "create", "b", "--limit", "1", "--json", app=app).stdout)
    assert created["wait"] == "countdown"

    result = _cli(env, "update", "api", "--wait", "countdown", app=app)
    assert result.stdout == "Updated pool api: wait handoff -> countdown.\n"
    result = _cli(env, "update", "api", "--limit", "3", "--wait", "handoff", app=app)
    assert result.stdout == "Updated pool api: limit 2 -> 3, wait countdown -> handoff.\n"
    result = _cli(env, "update", "b", "--wait", "handoff", "--json", app=app)
    assert json.loads(result.stdout) == {
        "name": "b",
        "limit": 1,
        "timeout": 30.0,
        "wait": "handoff",
    }
    assert [(p.name, p.limit, p.wait) for p in manager.list()] == [
        ("api", 3, "handoff"),
        ("b", 1, "handoff"),
    ]
    manager.update("b", wait="countdown")

    lines = _cli(env, "list", app=app).stdout.splitlines()
    wait_column = lines[0].index("WAIT ")
    assert [line[wait_column:].split()[0] for line in lines[1:]] == ["handoff", "countdown"]
    listed = json.loads(_cli(env, "list", "--json", app=app).stdout)
    assert [(s["name"], s["wait"]) for s in listed] == [("api", "handoff"), ("b", "countdown")]
    assert "  wait       handoff\n" in _cli(env, "show", "api", app=app).stdout


# -- rate limits and pauses --------------------------------------------------------------------


def test_rate_and_unrate_change_the_rate_limit_in_redis_and_say_so(env):
    manager = env.manager()
    manager.create("api", limit=5)
    manager.assign(INSTANCE, "api")
    app = env.app()

    result = _cli(env, "rate", INSTANCE, "60/m", "--burst", "5", app=app)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"Rate limit of instance {INSTANCE}: 60/m (burst 5).\n"
    assert manager.rate_limits() == {INSTANCE: RateLimit(count=60, period=60, burst=5)}
    result = _cli(env, "rate", INSTANCE, "5/10s", "--json", app=app)
    # The set_rate_limit management task's result, and what it replaced.
    assert json.loads(result.stdout) == {
        "instance": INSTANCE,
        "count": 5,
        "period": 10.0,
        "burst": 0,
        "rate": "5/10s",
        "previous": "60/m (burst 5)",
    }
    result = _cli(env, "rate", INSTANCE, "1/m", app=app)
    assert result.stdout == f"Rate limit of instance {INSTANCE}: 1/m (was 5/10s).\n"
    # An instance without a pool can be rate limited too; the command says what that means.
    result = _cli(env, "rate", "solo", "1000/h", app=app)
    assert result.stdout.splitlines() == [
        "Rate limit of instance solo: 1000/h.",
        "Instance solo has no pool: its tasks are rate limited alone (and wait up to the "
        "default timeout).",
    ]
    assert manager.rate_limits() == {
        INSTANCE: RateLimit(count=1, period=60),
        "solo": RateLimit(count=1000, period=3600),
    }
    # Obeyed by the next acquisition: one call a minute.
    store = manager.store
    assert store.acquire(INSTANCE, "t1", lease=30).status is AcquireStatus.OK
    held_back = store.acquire(INSTANCE, "t2", lease=30)
    assert (held_back.status, held_back.reason) == (AcquireStatus.RATE, "rate")

    result = _cli(env, "unrate", INSTANCE, app=app)
    assert result.stdout == f"Removed the rate limit of instance {INSTANCE} (was 1/m).\n"
    assert store.acquire(INSTANCE, "t2", lease=30).status is AcquireStatus.OK
    result = _cli(env, "unrate", INSTANCE, "--json", app=app)
    assert json.loads(result.stdout) == {"instance": INSTANCE, "removed": False, "previous": None}
    manager.set_rate_limit("gone", "3/s", burst=1)
    result = _cli(env, "unrate", "gone", "--json", app=app)
    assert json.loads(result.stdout) == {
        "instance": "gone",
        "removed": True,
        "previous": "3/s (burst 1)",
    }
    result = _cli(env, "unrate", INSTANCE, app=app)
    assert result.stdout == f"Instance {INSTANCE} had no rate limit; nothing changed.\n"
    assert manager.rate_limits() == {"solo": RateLimit(count=1000, period=3600)}


def test_pause_and_resume_hold_back_and_release_an_instance_and_say_so(env):
    manager = env.manager()
    manager.create("api", limit=5)
    manager.assign(INSTANCE, "api")
    store = manager.store
    app = env.app()

    result = _cli(env, "pause", INSTANCE, "30", app=app)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Paused instance {INSTANCE} until ")
    assert result.stdout.endswith("; none of its tasks starts on any worker until then.\n")
    (paused,) = manager.rates([INSTANCE])
    assert 25 < paused.paused_for <= 30
    held_back = store.acquire(INSTANCE, "t3", lease=30)
    assert (held_back.status, held_back.reason) == (AcquireStatus.RATE, "paused")
    # A pause only ever grows: a shorter one says the longer one stays.
    result = _cli(env, "pause", INSTANCE, "2", "--json", app=app)
    data = json.loads(result.stdout)
    assert set(data) == {"instance", "paused_until", "paused_for"}
    assert data["instance"] == INSTANCE
    assert 25 < data["paused_for"] <= 30
    assert data["paused_until"] == pytest.approx(store.ping() + data["paused_for"], abs=1)
    assert "a longer pause was already in force" in _cli(env, "pause", INSTANCE, "1").stdout

    result = _cli(env, "resume", INSTANCE, app=app)
    assert result.stdout.startswith(f"Resumed instance {INSTANCE} (")
    assert manager.rates([INSTANCE])[0].paused_for == 0
    assert store.acquire(INSTANCE, "t3", lease=30).status is AcquireStatus.OK
    result = _cli(env, "resume", INSTANCE, "--json", app=app)
    assert json.loads(result.stdout) == {
        "instance": INSTANCE,
        "paused_until": None,
        "was_paused_for": 0.0,
    }
    result = _cli(env, "resume", INSTANCE, app=app)
    assert result.stdout == f"Instance {INSTANCE} was not paused; nothing changed.\n"


def test_bad_input_is_refused_with_a_message_and_changes_nothing(env):
    manager = env.manager()
    manager.create("api", limit=1)
    app = env.app()
    cases = [
        (("rate", "x", "60/x"), 1, "Error: invalid rate limit '60/x'"),
        (("rate", "x", "0/m"), 1, "Error: invalid rate limit '0/m'"),
        (("rate", "x", "60/m", "--burst", "-1"), 1, "Error: invalid burst -1"),
        (("rate", "x", "60/m", "--burst", "some"), 2, "'some' is not a valid integer"),
        (("rate", "bad name", "60/m"), 1, "Error: invalid instance 'bad name'"),
        (("rate", "x"), 2, "Missing argument 'RATE'"),
        (("unrate", "bad name"), 1, "Error: invalid instance 'bad name'"),
        (("pause", "x", "0"), 2, "Invalid value for 'SECONDS'"),
        (("pause", "x", "--", "-5"), 2, "Invalid value for 'SECONDS'"),
        (("pause", "x", "nan"), 2, "nan is not a number of seconds"),
        (("pause", "x", "soon"), 2, "'soon' is not a valid float"),
        (("resume", "bad name"), 1, "Error: invalid instance 'bad name'"),
        (("create", "new", "--limit", "1", "--wait", "sometimes"), 2, "Invalid value for '--wait'"),
        (("update", "api", "--wait", "sometimes"), 2, "Invalid value for '--wait'"),
        (("update", "api"), 2, "give --limit, --timeout, --wait or several"),
        (("advise", "api", "--reserve", "10"), 2, "--reserve and --deployments need --backend-max"),
        (("advise", "api", "--deployments", "2"), 2, "need --backend-max"),
        (("advise", "api", "--headroom", "9"), 1, "Error: invalid headroom 9.0"),
        (("advise", "api", "--backend-max", "10", "--reserve", "10"), 1, "Error: invalid reserve"),
        (("advise", "nope"), 1, "Error: no pool named 'nope'"),
        (("show", "bad/name"), 1, "Error: invalid pool name 'bad/name'"),
        (("exporter",), 2, "Missing option '--port'"),
        (("exporter", "--port", "70000"), 2, "Invalid value for '--port'"),
    ]
    for args, code, message in cases:
        result = _cli(env, *args, app=app)
        assert result.exit_code == code, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
        assert result.stdout == "", args
    assert manager.rate_limits() == {}
    assert manager.rates(["x"])[0].paused_for == 0
    assert [(p.name, p.wait) for p in manager.list()] == [("api", "countdown")]


# -- show: rate limits, metrics, suspicious holders ---------------------------------------------


def test_show_json_carries_wait_rates_and_metrics_of_a_scripted_workload(env):
    manager = env.manager()
    manager.create("api", limit=2, timeout=30, wait="handoff")
    manager.assign(INSTANCE, "api")
    manager.assign("inst-b", "api")
    manager.set_rate_limit(INSTANCE, "1/m", burst=4)
    store = manager.store
    app = env.app()

    assert store.acquire(INSTANCE, "t1", lease=60).status is AcquireStatus.OK  # immediate
    assert store.acquire(INSTANCE, "t2", lease=60).status is AcquireStatus.OK  # immediate
    assert store.release("t1", "api").released
    waited = store.acquire(INSTANCE, "t3", lease=60, first=store.ping() - 2.0)  # waited 2 s
    assert waited.status is AcquireStatus.OK
    late = store.acquire(INSTANCE, "t4", lease=60, first=store.ping() - 31)  # full and too late
    assert late.status is AcquireStatus.TIMEOUT
    manager.pause("inst-b", 60)

    result = _cli(env, "show", "api", "--json", app=app)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    # The status keys are all still there, with three more.
    assert set(shown) == {
        "name", "limit", "timeout", "in_use", "free", "reserved", "waiting", "standbys",
        "instances", "holders", "waiters", "abandoned", "oldest_wait", "now", "wait", "rates",
        "metrics",
    }  # fmt: skip
    assert (shown["name"], shown["limit"], shown["in_use"], shown["wait"]) == (
        "api",
        2,
        2,
        "handoff",
    )
    assert [h["task_id"] for h in shown["holders"]] == ["t2", "t3"]

    rates = {rate["instance"]: rate for rate in shown["rates"]}
    # 1/m with a burst of 4: five calls at once when idle; three were spent, and none comes
    # back within the minute.
    assert rates[INSTANCE] == {
        "instance": INSTANCE,
        "rate": "1/m (burst 4)",
        "available": 2,
        "next_in": 0.0,
        "paused_for": 0.0,
    }
    assert (rates["inst-b"]["rate"], rates["inst-b"]["available"]) == (None, None)
    assert 50 < rates["inst-b"]["paused_for"] <= 60

    metrics = shown["metrics"]
    assert {key: metrics[key] for key in metrics if key not in ("wait", "hold")} == {
        "started": metrics["started"],
        "period": metrics["period"],
        "acquired": 3,
        "acquired_immediate": 2,
        "acquired_waited": 1,
        "acquired_by_instance": {INSTANCE: 3},
        "timeouts": 1,
        "clears": 0,
        "cleared_waiters": 0,
        "cleared_holders": 0,
        "released": 1,
        "reclaimed": 0,
        "handoffs": 0,
        "handoffs_retried": 0,
        "grants_lapsed": 0,
        "grants_withdrawn": 0,
        "handoffs_returned": 0,
        "sent_back": 0,
        "abandoned": 0,
        "abandoned_expired": 0,
        "abandoned_released": 0,
        "standbys_promoted": 0,
        "standbys_woken": 0,
        "standbys_returned": 0,
        "suspicious_after": 900.0,
        "suspicious_holders": [],
    }
    assert metrics["started"] <= shown["now"]
    assert metrics["period"] == pytest.approx(shown["now"] - metrics["started"])
    # Three waits: 0, 0 (the first bucket, <= 5 ms) and 2 s (the (1, 2.5] bucket); quantiles
    # are interpolated within their bucket.
    assert metrics["wait"]["count"] == 3
    assert 1.999 <= metrics["wait"]["sum"] <= 2.5  # times are whole milliseconds
    assert metrics["wait"]["p50"] == pytest.approx(0.005 * 1.5 / 2)
    assert metrics["wait"]["p95"] == pytest.approx(1.0 + 1.5 * (0.95 * 3 - 2))
    # One hold (t1, a few milliseconds): p50 and p95 fall in its bucket.
    assert metrics["hold"]["count"] == 1
    assert 0 <= metrics["hold"]["p50"] <= metrics["hold"]["p95"] <= 0.5

    text = _cli(env, "show", "api", app=app).stdout
    assert "  wait       handoff\n" in text
    rate_lines = {line.split()[0]: line.split() for line in text.splitlines() if "inst-" in line}
    assert rate_lines[INSTANCE][1:] == ["1/m", "(burst", "4)", "2", "now", "-"]
    assert rate_lines["inst-b"][1:4] == ["-", "-", "-"]
    assert "  acquisitions     3 (2 immediate, 1 after waiting)\n" in text
    assert "  timeouts         1\n" in text
    assert "  releases         1\n" in text
    assert "  reclaimed leases 0\n" in text
    assert f"  wait for a slot  p50 0.00375s, p95 {metrics['wait']['p95']:.3g}s\n" in text
    assert "SUSPICIOUS" not in text


def test_show_flags_a_holder_held_longer_than_pools_suspicious_hold_seconds(env):
    manager = env.manager()
    manager.create("api", limit=3)
    manager.assign(INSTANCE, "api")
    store = manager.store
    app = env.app(pools_suspicious_hold_seconds=1.0)

    old = store.acquire(INSTANCE, "old-task", lease=60, info={"task_name": "t.slow"})
    _until_redis_clock(store, old.now + 1.05)
    store.acquire(INSTANCE, "young-task", lease=60, info={"task_name": "t.quick"})

    text = _cli(env, "show", "api", app=app).stdout
    holders = {line.split()[0]: line for line in text.splitlines() if "-task" in line}
    assert holders["old-task"].rstrip().endswith("SUSPICIOUS")
    assert "SUSPICIOUS" not in holders["young-task"]
    assert (
        "  SUSPICIOUS: 1 holder held the slot longer than pools_suspicious_hold_seconds (1s)"
        in text
    )
    metrics = json.loads(_cli(env, "show", "api", "--json", app=app).stdout)["metrics"]
    assert metrics["suspicious_after"] == 1.0
    assert metrics["suspicious_holders"] == ["old-task"]
    # With the default (900 s) nobody is suspicious.
    assert "SUSPICIOUS" not in _cli(env, "show", "api").stdout


def test_watch_shows_the_p95_wait_per_pool_on_one_line(env):
    manager = env.manager()
    manager.create("api", limit=2)
    manager.create("idle", limit=1)
    manager.assign(INSTANCE, "api")
    manager.set_rate_limit(INSTANCE, "10/s")
    store = manager.store
    waited = store.acquire(INSTANCE, "t1", lease=60, first=store.ping() - 2.0)
    assert waited.status is AcquireStatus.OK

    lines = _cli(env, "watch", "--iterations", "1").stdout.splitlines()
    assert len(lines) == 4  # header, column titles, one line per pool
    assert lines[1].split()[-2:] == ["P95", "WAIT"]
    assert lines[2].split()[0] == "api"
    assert lines[2].split()[-1] == f"{1.0 + 1.5 * 0.95:.3g}s"  # one 2 s wait
    assert lines[3].split()[0] == "idle"
    assert lines[3].split()[-1] == "-"  # nothing observed


# -- advise ------------------------------------------------------------------------------------


def test_advise_reproduces_the_worked_example_cap_and_sizes_from_observed_metrics(env):
    manager = env.manager()
    manager.create("api", limit=10)
    manager.assign(INSTANCE, "api")
    store = manager.store
    app = env.app()

    # Nothing observed: no recommendation, unless the backend's cap gives one.
    result = _cli(env, "advise", "api", app=app)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "Pool api: no recommendation yet (limit 10)."
    capped = _cli(
        env, "advise", "api", "--backend-max", "120", "--reserve", "40", "--deployments", "4"
    )
    assert capped.exit_code == 0, capped.output
    assert capped.stdout.splitlines()[:2] == [
        "Pool api: recommended limit 20 (now 10).",
        "Per-deployment cap: 20.",
    ]
    assert "per-deployment cap = floor((120 max - 40 reserved) / 4 deployments) = 20" in (
        capped.stdout
    )

    # A workload: two tasks each holding a slot about 0.3 s.
    for token in ("a", "b"):
        taken = store.acquire(INSTANCE, token, lease=60)
        _until_redis_clock(store, taken.now + 0.3)
        store.release(token, "api")
    advice = json.loads(
        _cli(env, "advise", "api", "--headroom", "0.5", "--backend-max", "120", "--json").stdout
    )
    assert set(advice) == {
        "pool", "concurrency", "recommended", "low", "high", "per_deployment_cap",
        "current_limit", "steps",
    }  # fmt: skip
    assert (advice["pool"], advice["current_limit"], advice["per_deployment_cap"]) == (
        "api",
        10,
        120,
    )
    # Two arrivals over at least 0.6 s, holding 0.25-0.5 s (p95 interpolated in that bucket).
    assert 0 < advice["concurrency"] <= 2.5
    assert advice["recommended"] == max(1, math.ceil(round(advice["concurrency"] * 1.5, 6)))
    assert advice["steps"][0].startswith("observed over ")
    assert ": 2 arrivals, 0 of 2 acquisitions waited, 0 timed out" in advice["steps"][0]
    assert any(step.startswith("concurrency = arrival rate ") for step in advice["steps"])
    assert advice["steps"][-1] == f"current limit 10: lower it to {advice['recommended']}"

    text = _cli(env, "advise", "api", app=app).stdout
    headline = text.splitlines()[0].split()
    assert headline[:4] == ["Pool", "api:", "recommended", "limit"]
    assert headline[5:] == ["(now", "10)."]
    assert "with 30% headroom: ceil(" in text
    assert text.rstrip().endswith(f"current limit 10: lower it to {headline[4]}")


# -- the exporter, in a real `celery` process --------------------------------------------------


def _scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except OSError:  # not listening yet (URLError is an OSError)
        return None


def test_exporter_command_serves_parseable_metrics_until_stopped(env):
    manager = env.manager()
    manager.create("api", limit=2, timeout=5)
    manager.assign(INSTANCE, "api")
    store = manager.store
    held = store.acquire(INSTANCE, "holder", lease=60)
    store.acquire(INSTANCE, "other", lease=60)
    store.release("other", "api")
    store.acquire(INSTANCE, "second", lease=60)
    store.acquire(INSTANCE, "waiter", lease=60)  # full: waits
    # The exporter counts holders over the app's pools_suspicious_hold_seconds.
    env.extra_worker_env["CP_SUSPICIOUS_HOLD_SECONDS"] = "0.5"
    _until_redis_clock(store, held.now + 0.55)

    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    proc = subprocess.Popen(
        _command("pools", "exporter", "--port", str(port), "--addr", "127.0.0.1"),
        env=_environ(env),
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def answered() -> str | None:
        if proc.poll() is not None:
            raise AssertionError(f"the exporter exited: {proc.communicate()}")
        return _scrape(url)

    try:
        body = wait_until(answered, 60, message="the exporter never answered")
    finally:
        proc.terminate()  # SIGTERM stops it cleanly, like Ctrl-C
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.splitlines() == [
        f"Serving the metrics of the pools in {env.pools_url} on {url} (Ctrl-C to stop).",
        "Stopped.",
    ]

    families = {family.name: family for family in text_string_to_metric_families(body)}
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families.values()
        for sample in family.samples
    }
    pool = (("pool", "api"),)
    assert samples[("celery_pools_redis_up", ())] == 1
    assert samples[("celery_pools_limit_slots", pool)] == 2
    assert samples[("celery_pools_in_use_slots", pool)] == 2
    assert samples[("celery_pools_waiting_tasks", pool)] == 1
    assert samples[("celery_pools_acquisitions_total", (*pool, ("waited", "false")))] == 3
    assert samples[("celery_pools_releases_total", pool)] == 1
    # Both holders had held their slot over 0.5 s when it was scraped (the default is 900 s).
    assert samples[("celery_pools_suspicious_holders", pool)] == 2
    assert "0.5 s" in families["celery_pools_suspicious_holders"].documentation
    assert families["celery_pools_hold_seconds"].type == "histogram"


def test_exporter_without_prometheus_client_says_how_to_install_it(env, tmp_path):
    # A prometheus_client that cannot be imported, first on the path: as if it were missing.
    (tmp_path / "prometheus_client").mkdir()
    (tmp_path / "prometheus_client" / "__init__.py").write_text(
        "raise ImportError(\"No module named 'prometheus_client'\")\n"
    )
    environ = _environ(env)
    environ["PYTHONPATH"] = f"{tmp_path}:{environ['PYTHONPATH']}"
    result = _run(_command("pools", "exporter", "--port", str(free_port())), environ)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.strip() == (
        "Error: the exporter needs prometheus_client: pip install 'celery-pools[prometheus]'"
    )


# -- export and import -------------------------------------------------------------------------


def _empty_app(env, private_redis):
    return create_app(
        broker=env.broker,
        backend=env.backend,
        pools_url=private_redis.url(3),
        prefix=env.prefix,
        queue=env.queue,
        probe_url=env.probe_url,
        probe_name=env.name,
    )


def test_export_then_import_into_an_empty_redis_reproduces_waits_and_rate_limits(
    env, private_redis, tmp_path
):
    manager = env.manager()
    manager.create("netsuite", limit=10, timeout=30, wait="handoff")
    manager.create("salesforce", limit=3, timeout=12.5)
    manager.assign("netsuite-prod", "netsuite")
    manager.assign("sf:eu@acme/1", "salesforce")
    manager.set_rate_limit("netsuite-prod", "60/m", burst=5)
    manager.set_rate_limit("sf:eu@acme/1", "5/10s")
    manager.set_rate_limit("solo", "1000/h")  # an instance without a pool
    app = env.app()
    empty = _empty_app(env, private_redis)
    target = PoolManager(empty)

    for filename in ("pools.json", "pools.yaml"):
        path = tmp_path / filename
        result = _cli(env, "export", str(path), app=app)
        assert result.stdout == (f"Exported 2 pools, 2 associations and 3 rate limits to {path}.\n")
        if filename.endswith(".json"):
            document = json.loads(path.read_text())
            assert document == {
                "version": 1,
                "pools": {
                    "netsuite": {
                        "limit": 10,
                        "timeout": 30,
                        "wait": "handoff",
                        "instances": ["netsuite-prod"],
                    },
                    "salesforce": {
                        "limit": 3,
                        "timeout": 12.5,
                        "wait": "countdown",
                        "instances": ["sf:eu@acme/1"],
                    },
                },
                "rate_limits": {
                    "netsuite-prod": {"rate": "60/m", "burst": 5},
                    "sf:eu@acme/1": {"rate": "5/10s", "burst": 0},
                    "solo": {"rate": "1000/h", "burst": 0},
                },
            }
        else:
            assert "    wait: handoff\n" in path.read_text()
            assert "rate_limits:\n  netsuite-prod:\n    rate: 60/m\n    burst: 5\n" in (
                path.read_text()
            )

        result = _cli(env, "import", str(path), app=empty)
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines()[-1] == "7 created, 0 changed, 0 unchanged."
        assert ["created", "rate_limit", "netsuite-prod", "60/m", "(burst", "5)"] in [
            line.split() for line in result.stdout.splitlines()
        ]
        assert target.list() == manager.list()
        assert target.associations() == manager.associations()
        assert target.rate_limits() == manager.rate_limits()
        again = json.loads(_cli(env, "import", str(path), "--json", app=empty).stdout)
        assert again["counts"] == {
            "create": 0,
            "change": 0,
            "unchanged": 7,
            "keep": 0,
            "remove": 0,
        }
        private_redis.client(3).flushdb()


def test_import_changes_and_prunes_waits_and_rate_limits_and_reads_old_documents(env, tmp_path):
    manager = env.manager()
    manager.create("api", limit=2)
    manager.assign("inst-a", "api")
    manager.set_rate_limit("inst-a", "10/s")
    manager.set_rate_limit("inst-b", "1/s")
    manager.set_rate_limit("inst-z", "2/s")
    path = tmp_path / "pools.yaml"
    path.write_text(
        "version: 1\n"
        "pools:\n"
        "  api: {limit: 2, wait: handoff, instances: [inst-a]}\n"
        "rate_limits:\n"
        "  inst-a: {rate: 20/s, burst: 2}\n"
        "  inst-b: 60/min\n"  # the bare rate; 60 a minute is not the same limit as 1/s
        "  inst-c: {rate: 1/d}\n"
    )
    app = env.app()

    dry = _cli(env, "import", str(path), "--dry-run", app=app)
    assert dry.exit_code == 0, dry.output
    rows = [line.split() for line in dry.stdout.splitlines()[1:-1]]
    assert rows == [
        ["would", "change", "pool", "api", "wait", "countdown", "->", "handoff"],
        ["unchanged", "association", "inst-a", "->", "api"],
        ["would", "change", "rate_limit", "inst-a", "10/s", "->", "20/s", "(burst", "2)"],
        ["would", "change", "rate_limit", "inst-b", "1/s", "->", "60/m"],
        ["would", "create", "rate_limit", "inst-c", "1/d"],
        ["would", "keep", "rate_limit", "inst-z", "2/s"],
    ]
    assert dry.stdout.splitlines()[-1] == (
        "Dry run, nothing written: 1 to create, 3 to change, 1 unchanged, "
        "1 left alone (not in file)."
    )
    assert manager.get("api").wait == "countdown"
    assert manager.rate_limits()["inst-a"] == RateLimit(count=10, period=1)

    refused = _cli(env, "import", str(path), "--prune", app=app)
    assert refused.exit_code == 1
    assert "removes rate limit inst-z" in refused.stderr
    report = json.loads(_cli(env, "import", str(path), "--prune", "--yes", "--json").stdout)
    assert [(c["kind"], c["name"], c["action"]) for c in report["changes"]][2:] == [
        ("rate_limit", "inst-a", "change"),
        ("rate_limit", "inst-b", "change"),
        ("rate_limit", "inst-c", "create"),
        ("rate_limit", "inst-z", "remove"),
    ]
    assert report["changes"][-1]["before"] == {"rate": "2/s", "burst": 0}
    assert manager.get("api").wait == "handoff"
    assert manager.rate_limits() == {
        "inst-a": RateLimit(count=20, period=1, burst=2),
        "inst-b": RateLimit(count=60, period=60),
        "inst-c": RateLimit(count=1, period=86400),
    }

    # A document written before waiting modes and rate limits still imports: its pools wait by
    # countdown, and the rate limits in Redis are left alone (removed only with --prune).
    old = tmp_path / "old.json"
    old.write_text('{"version": 1, "pools": {"api": {"limit": 2, "instances": ["inst-a"]}}}')
    report = json.loads(_cli(env, "import", str(old), "--json", app=app).stdout)
    assert report["changes"][0] == {
        "kind": "pool",
        "name": "api",
        "action": "change",
        "before": {"limit": 2, "timeout": 30, "wait": "handoff"},
        "after": {"limit": 2, "timeout": 30, "wait": "countdown"},
    }
    assert report["counts"] == {"create": 0, "change": 1, "unchanged": 1, "keep": 3, "remove": 0}
    assert manager.get("api").wait == "countdown"
    assert len(manager.rate_limits()) == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"version": 1, "rate_limits": {"x": {"rate": "60/x"}}}',
            "invalid rate_limits.x.rate '60/x'",
        ),
        ('{"version": 1, "rate_limits": {"x": "60/m/2"}}', "invalid rate_limits.x.rate '60/m/2'"),
        (
            '{"version": 1, "rate_limits": {"x": {"rate": "6/m", "burst": -1}}}',
            "invalid rate_limits.x.burst -1",
        ),
        ('{"version": 1, "rate_limits": {"x": {"rate": "6/m", "every": 2}}}', "every"),
        ('{"version": 1, "rate_limits": {"bad name": "6/m"}}', "invalid rate_limits instance"),
        (
            '{"version": 1, "pools": {"a": {"limit": 1, "wait": "sometimes"}}}',
            "invalid pools.a.wait 'sometimes'",
        ),
    ],
)
def test_import_rejects_bad_waits_and_rate_limits_and_writes_nothing(env, tmp_path, text, message):
    manager = env.manager()
    manager.create("keep", limit=2)
    path = tmp_path / "pools.json"
    path.write_text(text)
    result = _cli(env, "import", str(path))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {path}: ")
    assert message in result.stderr
    assert [(p.name, p.wait) for p in manager.list()] == [("keep", "countdown")]
    assert manager.rate_limits() == {}


def test_new_commands_are_listed_in_the_pools_help():
    result = subprocess.run(
        [sys.executable, "-m", "celery", "pools", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=True,
    )
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")}
    assert {"rate", "unrate", "pause", "resume", "exporter", "advise"} <= listed
