"""The management tasks through Flower's REST API: a real ``celery flower`` process, a real
worker and a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.result import AsyncResult

from celery_pools import PoolConfigError
from tests.support.polling import wait_until
from tests.support.redis_server import free_port
from tests.support.worker_process import REPO_ROOT
from tests.workerapp import INSTANCE

pytestmark = pytest.mark.slow


def _defined(pool: Any) -> tuple[str, int, float]:
    """A pool's name, limit and timeout, from a ``Pool`` or its JSON (other fields ignored)."""
    data = pool if isinstance(pool, dict) else pool.model_dump()
    return data["name"], data["limit"], data["timeout"]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": exc.read().decode(errors="replace")}


@pytest.fixture
def flower(env: Any) -> Iterator[str]:
    """A ``celery -A tests.workerapp flower`` process of this test; yields its base URL."""
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="flower-")) / "flower.log"
    environ = {
        **os.environ,
        **env.worker_env(),
        "FLOWER_UNAUTHENTICATED_API": "true",
        "PYTHONPATH": str(REPO_ROOT),
    }
    with open(log, "wb") as output:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.workerapp",
                "flower",
                f"--port={port}",
                "--address=127.0.0.1",
            ],
            env=environ,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: proc.poll() is not None or _get(f"{base}/healthcheck") == 200,
            30,
            message="flower did not answer",
        )
        assert proc.poll() is None, log.read_text()
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_flower_rest_api_runs_update_pool_and_the_pool_changes(env, run_worker, flower):
    manager = env.manager()
    manager.create("api", limit=2, timeout=30)
    manager.assign(INSTANCE, "api")
    app = env.app()
    with run_worker(app, concurrency=2):
        status, reply = _post(
            f"{flower}/api/task/async-apply/celery_pools.update_pool",
            {"kwargs": {"name": "api", "limit": 7, "timeout": 45}},
        )
        assert status == 200, reply
        result = AsyncResult(reply["task-id"], app=app)
        assert _defined(result.get(timeout=30)) == ("api", 7, 45.0)
        assert _defined(manager.get("api")) == ("api", 7, 45.0)

        # Bad arguments: the task fails with PoolConfigError and nothing is written.
        status, reply = _post(
            f"{flower}/api/task/async-apply/celery_pools.update_pool",
            {"kwargs": {"name": "api", "limit": 0}},
        )
        assert status == 200, reply
        with pytest.raises(PoolConfigError, match="invalid limit 0"):
            AsyncResult(reply["task-id"], app=app).get(timeout=30)
        assert manager.get("api").limit == 7

        # A read through Flower too: the pool's status, as JSON.
        status, reply = _post(
            f"{flower}/api/task/async-apply/celery_pools.pool_status", {"args": ["api"]}
        )
        assert status == 200, reply
        shown = AsyncResult(reply["task-id"], app=app).get(timeout=30)
        assert (shown["name"], shown["limit"], shown["instances"]) == ("api", 7, [INSTANCE])
