"""The web dashboard (``celery pools dashboard``) in a real browser: Debian's Chromium, headless,
driven by Playwright, against a real Redis, real in-process workers and the real server
(uvicorn on a free loopback port).

Screenshots go to ``artifacts/screenshots/`` (``CELERY_POOLS_ARTIFACTS`` moves it); the README
links the copies in ``docs/images/``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import uvicorn
from celery.bin.base import CLIContext
from click.testing import CliRunner
from playwright.sync_api import Browser, Page, expect, sync_playwright

from celery_pools import PoolClearedError, PoolConfigError, PooledTask, PoolManager, views
from celery_pools.admin_tasks import TASK_NAMES
from celery_pools.cli import pools
from celery_pools.dashboard import Credentials, create_app
from celery_pools.dashboard.server import SECURITY_HEADERS
from celery_pools.settings import PoolsSettings
from tests.support.polling import wait_until
from tests.support.redis_server import free_port
from tests.workerapp import INSTANCE

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("CELERY_POOLS_ARTIFACTS", ROOT / "artifacts")) / "screenshots"
#: A task name a page must show as text, never run as HTML.
HOSTILE = '<img src=x onerror="window.__pwned=1"><b>bold</b>'


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is not installed (scripts/test.sh installs it as root)")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=_chromium(), headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert not errors, f"the page raised: {errors}"


#: The operator token of the dashboards that take changes.
TOKEN = "s3cret-operator-token"
OPERATOR = Credentials(token=TOKEN, users={"ops": "pa55word-of-the-ops"})


class _Server:
    """The dashboard of ``manager`` served by uvicorn in a thread, on a free loopback port."""

    def __init__(
        self, manager: PoolManager, credentials: Credentials | None = None, read_only: bool = False
    ) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            create_app(
                manager, suspicious_after=60.0, credentials=credentials, read_only=read_only
            ),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the dashboard's uvicorn did not start")
            self.thread.join(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def get(self, path: str) -> tuple[int, dict[str, str], Any]:
        """``GET path``: status, headers (names in lower case) and the JSON body."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as answer:
                headers, status, body = answer.headers, answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            headers, status, body = exc.headers, exc.code, exc.read()
        return status, {k.lower(): v for k, v in headers.items()}, json.loads(body)

    def send(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """A change: ``method path`` with a JSON body and ``headers``; status and JSON body."""
        data = json.dumps(body if body is not None else {}).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


def _netsuite(env: Any, *, limit: int, timeout: float) -> PoolManager:
    """Pool "netsuite" of ``limit`` slots serving the test app's instance; its manager."""
    manager = env.manager()
    manager.create("netsuite", limit=limit, timeout=timeout)
    manager.assign(INSTANCE, "netsuite")
    return manager


def _gated_app(env: Any, name: str = "t.gated") -> tuple[Any, str]:
    """The test app with a pooled task that holds its slot until the test pushes to its gate."""
    app = env.app()
    gate = f"gate:{env.name}:{uuid.uuid4().hex[:6]}"
    # Its own client: redis-py's default socket timeout (5 s) would end the 60 s BLPOP early.
    probe_client = redis.Redis.from_url(env.probe_url, socket_timeout=90)

    @app.task(base=PooledTask, connector_instance=INSTANCE, name=name, shared=False)
    def gated(label: str) -> str:
        with app.probe().track(label):
            probe_client.blpop([gate], timeout=60)
        return label

    return app, gate


def _screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_overview_shows_live_numbers_while_workers_run_pooled_tasks(
    env: Any, run_worker: Any, page: Page
) -> None:
    manager = _netsuite(env, limit=2, timeout=60)
    app, gate = _gated_app(env)
    probe = env.probe()
    with _Server(manager) as server, run_worker(app, 4):
        page.goto(server.url + "/")
        row = page.locator('tr[data-pool="netsuite"]')
        expect(row.locator("td").nth(1)).to_have_text("0 / 2")
        results = [app.tasks["t.gated"].delay(f"task-{i}") for i in range(4)]
        # Two run (the probe, which the tasks write to, says so), two wait: the page follows.
        expect(row.locator("td").nth(1)).to_have_text("2 / 2", timeout=20_000)
        expect(row.locator("td").nth(3)).to_have_text("2", timeout=20_000)
        assert probe.current() == 2
        expect(page.locator("#state")).to_have_attribute("data-state", "ok")
        expect(page.locator("#state")).to_contain_text("Last updated")
        _screenshot(page, "dashboard-overview")
        client = probe.client
        for _ in range(4):
            client.rpush(gate, "go")
        assert [r.get(timeout=30) for r in results] == [f"task-{i}" for i in range(4)]
        expect(row.locator("td").nth(1)).to_have_text("0 / 2", timeout=20_000)
        expect(row.locator("td").nth(3)).to_have_text("0")
        assert probe.max_concurrency() == 2


def test_pool_page_shows_holders_and_waiters_and_a_hostile_task_name_as_text(
    env: Any, run_worker: Any, page: Page
) -> None:
    manager = _netsuite(env, limit=1, timeout=60)
    app, gate = _gated_app(env, name=HOSTILE)
    with _Server(manager) as server, run_worker(app, 2):
        page.goto(server.url + "/pools/netsuite")
        # The second is published once the first holds the slot, so it is the one that waits.
        first = app.tasks[HOSTILE].delay("first")
        holder = page.locator(f'#holders tr[data-task="{first.id}"]')
        expect(holder).to_be_visible(timeout=20_000)
        second = app.tasks[HOSTILE].delay("second")
        waiter = page.locator(f'#waiters tr[data-task="{second.id}"]')
        expect(waiter).to_be_visible(timeout=20_000)
        expect(holder.locator("td").nth(1)).to_have_text(HOSTILE)
        expect(waiter.locator("td").nth(0)).to_have_text("1")
        expect(page.locator("#summary")).to_contain_text("1 of 1 in use")
        # Shown as text: no element made from it, no script run.
        assert page.locator("#holders img, #holders b, #waiters img").count() == 0
        assert page.evaluate("window.__pwned") is None
        expect(page.locator("#advice-headline")).not_to_be_empty()
        _screenshot(page, "dashboard-pool")
        client = env.probe().client
        client.rpush(gate, "go", "go")
        assert first.get(timeout=30) == "first"
        assert second.get(timeout=30) == "second"
        expect(page.locator("#holders tbody tr")).to_have_count(0, timeout=20_000)
        expect(page.locator("#waiters tbody tr")).to_have_count(0)


def test_an_unreachable_redis_is_shown_and_the_page_recovers(
    private_env: Any, private_redis: Any, page: Page
) -> None:
    manager = private_env.manager()
    manager.create("netsuite", limit=3, timeout=30)
    with _Server(manager) as server:
        page.goto(server.url + "/")
        expect(page.locator('tr[data-pool="netsuite"]')).to_be_visible()
        private_redis.kill()
        state = page.locator("#state")
        expect(state).to_have_attribute("data-state", "error", timeout=20_000)
        expect(state).to_contain_text("Redis unreachable")
        expect(page.locator("main")).to_have_class("stale")
        _screenshot(page, "dashboard-redis-down")
        private_redis.restart()
        manager.create("netsuite", limit=3, timeout=30)  # the server kept nothing on disk
        expect(state).to_have_attribute("data-state", "ok", timeout=20_000)
        expect(page.locator('tr[data-pool="netsuite"]')).to_be_visible()


def test_the_json_api_answers_in_the_shapes_of_pools_show_json(env: Any) -> None:
    manager = env.manager()
    manager.create("netsuite", limit=3, timeout=30, wait="handoff")
    manager.assign(INSTANCE, "netsuite")
    manager.set_rate_limit(INSTANCE, "60/m")
    context_app = env.app()
    with _Server(manager) as server:
        status, headers, body = server.get("/api/pools/netsuite")
        assert status == 200
        for header, value in SECURITY_HEADERS.items():
            assert headers[header.lower()] == value
        cli = CliRunner().invoke(
            pools,
            ["show", "netsuite", "--json"],
            obj=_cli_context(context_app),
            catch_exceptions=False,
        )
        shown = json.loads(cli.output)
        assert set(body) == set(shown)
        for field in ("name", "limit", "timeout", "wait", "instances", "rates", "in_use"):
            assert body[field] == shown[field], field
        assert body["metrics"]["wait"]["buckets"][-1][0] is None  # the last bucket: no bound
        status, _, overview = server.get("/api/pools")
        assert status == 200
        assert [p["name"] for p in overview["pools"]] == ["netsuite"]
        assert set(overview["pools"][0]) == set(shown)
        status, _, advice = server.get("/api/pools/netsuite/advice")
        assert status == 200
        assert advice["pool"] == "netsuite"
        assert advice["current_limit"] == 3
        status, _, missing = server.get("/api/pools/nope")
        assert status == 404
        assert "nope" in missing["error"]
        status, _, bad = server.get("/api/pools/-bad")
        assert status == 400
        assert "pool name" in bad["error"]
        assert "'-bad'" in bad["error"]
        # No credential configured: it only reads.
        status, refused = server.send("DELETE", "/api/pools/netsuite", headers=_bearer())
        assert status == 403
        assert "no operator credential" in refused["error"]
        assert server.get("/api/info")[2]["read_only"] is True
    assert manager.get("netsuite").limit == 3
    assert views.pool(manager.get("netsuite"))["wait"] == "handoff"


def _bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _sign_in(page: Page) -> None:
    page.locator("#sign-in [name=token]").fill(TOKEN)
    page.locator("#sign-in button").click()
    expect(page.locator("#sign-out")).to_be_visible()


def _cli_context(app: Any) -> CLIContext:
    return CLIContext(app=app, no_color=True, workdir=None)


def test_the_command_refuses_a_non_loopback_address_without_public(env: Any) -> None:
    result = CliRunner().invoke(
        pools, ["dashboard", "--addr", "0.0.0.0"], obj=_cli_context(env.app())
    )
    assert result.exit_code == 1
    assert "dashboard address" in result.output
    assert "'0.0.0.0'" in result.output
    assert "--public" in result.output


def test_a_resize_made_in_the_page_is_obeyed_by_the_workers(
    env: Any, run_worker: Any, page: Page
) -> None:
    manager = _netsuite(env, limit=1, timeout=60)
    app, gate = _gated_app(env)
    probe = env.probe()
    with _Server(manager, OPERATOR) as server, run_worker(app, 6):
        results = [app.tasks["t.gated"].delay(f"task-{i}") for i in range(6)]
        page.goto(server.url + "/pools/netsuite")
        _sign_in(page)
        expect(page.locator("#summary")).to_contain_text("1 of 1 in use", timeout=20_000)
        assert probe.current() == 1
        form = page.locator("#update-pool")
        form.locator("[name=limit]").fill("3")
        form.locator("button").click()
        expect(form).to_have_attribute("data-done", re.compile(r"\d+"))
        # The workers obey at once: three run together, by the probe the tasks write to.
        wait_until(lambda: probe.current() == 3, timeout=20, message="three tasks running")
        assert manager.get("netsuite").limit == 3
        expect(page.locator("#summary")).to_contain_text("3 of 3 in use", timeout=20_000)
        probe.client.rpush(gate, *["go"] * 6)
        assert [r.get(timeout=30) for r in results] == [f"task-{i}" for i in range(6)]
        assert probe.max_concurrency() == 3


def test_a_bad_value_shows_the_fields_error_and_writes_nothing(env: Any, page: Page) -> None:
    manager = env.manager()
    manager.create("netsuite", limit=2, timeout=30)
    with _Server(manager, OPERATOR) as server:
        page.goto(server.url + "/pools/netsuite")
        _sign_in(page)
        form = page.locator("#update-pool")
        form.locator("[name=limit]").fill("0")
        form.locator("button").click()
        error = form.locator(".error")
        expect(error).to_contain_text("limit")
        expect(error).to_contain_text("0")
        expect(form.locator("[name=limit]")).to_have_attribute("aria-invalid", "true")
        _screenshot(page, "dashboard-bad-value")
        page.goto(server.url + "/")
        create = page.locator("#create-pool")
        create.locator("[name=name]").fill("has space")
        create.locator("[name=limit]").fill("4")
        create.locator("button").click()
        expect(create.locator(".error")).to_contain_text("pool name")
        expect(create.locator("[name=name]")).to_have_attribute("aria-invalid", "true")
    assert manager.get("netsuite").limit == 2
    assert [p.name for p in manager.list()] == ["netsuite"]


def test_the_sign_in_keeps_what_the_operator_typed_when_the_page_first_renders_its_pool(
    env: Any, page: Page
) -> None:
    manager = env.manager()
    manager.create("netsuite", limit=2, timeout=30)
    held: list[Any] = []

    def hold(route: Any) -> None:
        held.append(route)

    with _Server(manager, OPERATOR) as server:
        # The pool's first reading is held back until the operator has typed: its answer
        # renders the page's actions while the sign-in form is in use.
        pool_reading = re.compile(r"/api/pools/netsuite$")
        page.route(pool_reading, hold)
        page.goto(server.url + "/pools/netsuite")
        sign_in = page.locator("#sign-in")
        sign_in.locator("button").click()
        expect(sign_in.locator(".error")).to_contain_text("operator token")
        expect(page.locator("#sign-out")).to_have_count(0)
        sign_in.locator("[name=token]").fill(TOKEN)
        deadline = time.monotonic() + 20
        while not held:
            assert time.monotonic() < deadline, "the page never read its pool"
            page.wait_for_timeout(20)
        held[0].continue_()
        page.unroute(pool_reading)
        expect(page.locator("#summary")).to_contain_text("0 of 2 in use")
        expect(sign_in.locator("[name=token]")).to_have_value(TOKEN)
        sign_in.locator("button").click()
        form = page.locator("#update-pool")
        form.locator("[name=limit]").fill("4")
        form.locator("button").click()
        expect(form).to_have_attribute("data-done", re.compile(r"\d+"))
    assert manager.get("netsuite").limit == 4


def test_clear_in_the_page_ends_real_waiting_tasks_with_pool_cleared_error(
    env: Any, run_worker: Any, page: Page
) -> None:
    manager = _netsuite(env, limit=1, timeout=60)
    app, gate = _gated_app(env)
    with _Server(manager, OPERATOR) as server, run_worker(app, 3):
        holder = app.tasks["t.gated"].delay("holder")
        # The others are published once it holds the slot, so they are the ones that wait.
        wait_until(
            lambda: [h.task_id for h in manager.status("netsuite").holders] == [holder.id],
            timeout=20,
            message="the first task holding the slot",
        )
        waiting = [app.tasks["t.gated"].delay(f"waiter-{i}") for i in range(2)]
        page.goto(server.url + "/pools/netsuite")
        _sign_in(page)
        expect(page.locator("#waiters tbody tr")).to_have_count(2, timeout=20_000)
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("#clear-pool button").click()
        expect(page.locator("#clear-pool")).to_have_attribute("data-done", re.compile(r"\d+"))
        for result in waiting:
            with pytest.raises(PoolClearedError):
                result.get(timeout=30)
        env.probe().client.rpush(gate, "go")
        assert holder.get(timeout=30) == "holder"


def test_read_only_and_unauthenticated_visitors_change_nothing(env: Any, page: Page) -> None:
    manager = _netsuite(env, limit=2, timeout=30)
    # Read-only: the page offers no action, the API refuses even the operator.
    with _Server(manager, OPERATOR, read_only=True) as server:
        page.goto(server.url + "/pools/netsuite")
        expect(page.locator("#summary")).to_contain_text("0 of 2 in use")
        expect(page.locator("#signin")).to_contain_text("Read-only")
        assert page.locator("form.action").count() == 0
        status, body = server.send("PATCH", "/api/pools/netsuite", {"limit": 9}, _bearer())
        assert status == 403
        assert "--read-only" in body["error"]
    with _Server(manager, OPERATOR) as server:
        # Not signed in: no action offered; the API wants a valid credential.
        page.goto(server.url + "/pools/netsuite")
        expect(page.locator("#summary")).to_contain_text("0 of 2 in use")
        expect(page.locator("#sign-in")).to_be_visible()
        assert page.locator("#update-pool").count() == 0
        for headers in ({}, _bearer("wrong-token-of-16ch"), {"Authorization": "Basic b3BzOm5v"}):
            status, body = server.send("PATCH", "/api/pools/netsuite", {"limit": 9}, headers)
            assert status == 401, headers
        status, _ = server.send("POST", "/api/pools", {"name": "new", "limit": 1})
        assert status == 401
        # A signed-in operator's request from another site, or as a form, is refused.
        for cross in (
            {"Origin": "http://evil.example"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site", "Origin": server.url},
        ):
            status, body = server.send(
                "PATCH", "/api/pools/netsuite", {"limit": 9}, {**_bearer(), **cross}
            )
            assert status == 403, cross
            assert "cross-site" in body["error"]
        # The page's own request passes (its Origin, by host and port).
        same = {**_bearer(), "Origin": server.url, "Sec-Fetch-Site": "same-origin"}
        assert server.send("PATCH", "/api/pools/netsuite", {"limit": 3}, same)[0] == 200
        # A DNS-rebinding page reaches the server under another Host name: nothing is served.
        rebound = urllib.request.Request(
            server.url + "/api/pools", headers={"Host": "evil.example"}
        )
        with pytest.raises(urllib.error.HTTPError) as wrong_host:
            urllib.request.urlopen(rebound, timeout=10)
        assert wrong_host.value.code == 400
        request = urllib.request.Request(
            server.url + "/api/pools/netsuite",
            data=b"limit=9",
            method="PATCH",
            headers={**_bearer(), "Content-Type": "application/x-www-form-urlencoded"},
        )
        with pytest.raises(urllib.error.HTTPError) as form_post:
            urllib.request.urlopen(request, timeout=10)
        assert form_post.value.code == 403
        # The user of pools_dashboard_users may, with HTTP Basic.
        basic = {"Authorization": "Basic " + base64.b64encode(b"ops:pa55word-of-the-ops").decode()}
        status, body = server.send("PATCH", "/api/pools/netsuite", {"limit": 4}, basic)
        assert status == 200
        assert body["limit"] == 4
    assert manager.get("netsuite").limit == 4
    assert [p.name for p in manager.list()] == ["netsuite"]


def test_every_action_of_the_api_takes_effect_and_answers_in_the_views_shapes(env: Any) -> None:
    manager = env.manager()
    with _Server(manager, OPERATOR) as server:
        auth = _bearer()
        assert server.send("POST", "/api/pools", {"name": "crm", "limit": 2}, auth) == (
            200,
            {"name": "crm", "limit": 2, "timeout": 30.0, "wait": "countdown"},
        )
        status, body = server.send("POST", "/api/pools", {"name": "crm", "limit": 2}, auth)
        assert status == 409
        status, body = server.send("POST", "/api/pools", {"name": "x", "limit": "two"}, auth)
        assert (status, body["field"], body["value"]) == (400, "limit", "two")
        assert server.send("PATCH", "/api/pools/crm", {"wait": "handoff"}, auth)[1]["wait"] == (
            "handoff"
        )
        assert server.send("PUT", "/api/instances/crm-prod", {"pool": "crm"}, auth)[1] == {
            "instance": "crm-prod",
            "pool": "crm",
            "previous": None,
        }
        rate = server.send("PUT", "/api/rates/crm-prod", {"rate": "60/m"}, auth)[1]
        assert rate["rate"] == "60/m"
        assert manager.rate_limits()["crm-prod"].count == 60
        paused = server.send("PUT", "/api/pauses/crm-prod", {"seconds": 30}, auth)[1]
        assert paused["paused_until"] > 0
        assert server.send("DELETE", "/api/pauses/crm-prod", None, auth)[1] == {
            "instance": "crm-prod",
            "paused_until": None,
        }
        assert server.send("DELETE", "/api/rates/crm-prod", None, auth)[1] == {
            "instance": "crm-prod",
            "removed": True,
        }
        # An instance name may hold '/': each kind of change has a prefix of its own.
        assert server.send("PUT", "/api/instances/svc/pause", {"pool": "crm"}, auth)[0] == 200
        assert server.send("PUT", "/api/rates/svc/pause", {"rate": "5/s"}, auth)[0] == 200
        assert manager.pool_of("svc/pause") == "crm"
        assert set(manager.rate_limits()) == {"svc/pause"}
        assert server.send("DELETE", "/api/instances/svc%2Fpause", None, auth)[1] == {
            "instance": "svc/pause",
            "pool": None,
            "previous": "crm",
        }
        # Numbers JSON or a form cannot mean are refused naming the field, not a 500.
        for path, body, field in (
            ("/api/pools/crm", {"timeout": "inf"}, "timeout"),
            ("/api/pools/crm", {"limit": "nan"}, "limit"),
            ("/api/pauses/crm-prod", {"seconds": "1e400"}, "seconds"),
        ):
            status, refused = server.send("PATCH" if "pools" in path else "PUT", path, body, auth)
            assert (status, refused["field"]) == (400, field), (path, refused)
        cleared = server.send("POST", "/api/pools/crm/clear", {"release_held": True}, auth)[1]
        assert cleared == {"pool": "crm", "waiters_dropped": 0, "holders_released": 0}
        assert server.send("DELETE", "/api/instances/crm-prod", None, auth)[1]["previous"] == "crm"
        deleted = server.send("DELETE", "/api/pools/crm", None, auth)
        assert deleted[0] == 200
        assert deleted[1]["pool"] == "crm"
    assert manager.list() == []


@pytest.mark.parametrize(
    ("which", "registered"),
    [
        ("all", set(TASK_NAMES)),
        ("read-only", {"celery_pools.list_pools", "celery_pools.pool_status"}),
        ("none", set()),
    ],
)
def test_pools_management_tasks_registers_all_the_read_only_ones_or_none(
    env: Any, which: str, registered: set[str]
) -> None:
    app = env.app(pools_management_tasks=which)
    assert {name for name in app.tasks if name.startswith("celery_pools.")} == registered


def test_pools_management_tasks_refuses_another_value(env: Any) -> None:
    app = env.app(pools_management_tasks="some")
    with pytest.raises(PoolConfigError, match="pools_management_tasks 'some'"):
        app.finalize()


def test_an_operator_signs_in_with_basic_credentials_and_a_stale_field_is_not_sent(
    env: Any, page: Page
) -> None:
    manager = env.manager()
    manager.create("netsuite", limit=2, timeout=30)
    with _Server(manager, OPERATOR) as server:
        page.goto(server.url + "/pools/netsuite")
        expect(page.locator("#summary")).to_contain_text("0 of 2 in use")
        page.locator("#sign-in [name=user]").fill("ops")
        page.locator("#sign-in [name=password]").fill("pa55word-of-the-ops")
        page.locator("#sign-in button").click()
        form = page.locator("#update-pool")
        expect(form).to_be_visible()
        # Someone else changes the timeout after the form was filled in: saving the limit
        # sends the limit only, and the other change stays.
        manager.update("netsuite", timeout=45)
        form.locator("[name=limit]").fill("5")
        form.locator("button").click()
        expect(form).to_have_attribute("data-done", re.compile(r"\d+"))
        assert (manager.get("netsuite").limit, manager.get("netsuite").timeout) == (5, 45.0)


def test_a_dashboard_secret_in_the_settings_is_checked_and_never_repeated(env: Any) -> None:
    for conf, field in (
        ({"pools_dashboard_token": "short-secret"}, "pools_dashboard_token"),
        ({"pools_dashboard_users": {"ops": "short-pass"}}, "pools_dashboard_users['ops']"),
    ):
        with pytest.raises(PoolConfigError) as refused:
            PoolsSettings.from_app(env.app(**conf))
        assert refused.value.field == field
        assert "short-" not in str(refused.value)
        assert "<hidden>" in str(refused.value)
    settings = PoolsSettings.from_app(env.app(pools_dashboard_token=TOKEN))
    assert settings.dashboard_token == TOKEN
