"""The benchmark's workers: real ``celery worker`` subprocesses (prefork), started and stopped
together, all with the same command line and environment."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import redis

from bench.system import children, rss_bytes

__all__ = ["WorkerGroup"]

ROOT = Path(__file__).resolve().parent.parent


class WorkerGroup:
    """``count`` workers of ``concurrency`` processes each (pool ``pool``, prefork by default),
    consuming ``queue``, running the Celery app of module ``app_module``; ``python_args`` go to
    the interpreter before ``-m celery`` (``["-m", "cProfile", "-o", path]`` profiles a solo
    worker).

    Each worker runs in its own session, so stopping it can never reach another process. Logs go
    to ``log_dir``.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        count: int,
        concurrency: int,
        queue: str,
        log_dir: Path,
        app_module: str = "bench.benchapp",
        pool: str = "prefork",
        python_args: Sequence[str] = (),
    ) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        self.count = count
        self.concurrency = concurrency
        self.queue = queue
        self.log_dir = log_dir
        self.app_module = app_module
        self.pool = pool
        self.python_args = list(python_args)
        self.tag = uuid.uuid4().hex[:6]
        self.processes: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    @property
    def names(self) -> list[str]:
        """The workers' node names (``bench<i>-<tag>@<host>``, as Celery expands ``%h``)."""
        import socket

        host = socket.gethostname()
        return [f"bench{i}-{self.tag}@{host}" for i in range(self.count)]

    def start(self, app: Any, timeout: float = 120.0) -> WorkerGroup:
        """Start every worker and wait until each answers a ping."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in self.names:
            log = open(self.log_dir / f"{name.split('@')[0]}.log", "ab")  # noqa: SIM115
            self._logs.append(log)
            command = [
                sys.executable, *self.python_args, "-m", "celery", "-A", self.app_module, "worker",
                "-P", self.pool, "-c", str(self.concurrency), "-n", name, "-Q", self.queue,
                "--loglevel", "WARNING",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
            ]  # fmt: skip
            self.processes.append(
                subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        self._wait_ready(app, timeout)
        return self

    def _wait_ready(self, app: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = set(self.names)
        while waiting:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"a benchmark worker exited with code {process.returncode}; logs in "
                        f"{self.log_dir}"
                    )
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers {sorted(waiting)} not ready within {timeout:.0f} s")
            for reply in app.control.ping(destination=sorted(waiting), timeout=0.5):
                waiting.difference_update(reply)

    def consume(self, app: Any, queue: str, broker: redis.Redis, timeout: float = 30.0) -> int:
        """Make every worker consume ``queue`` too, and return once each is waiting on it.

        A worker starts waiting on a new queue only when its current ``BRPOP`` returns (up to a
        second later), so the broker's command stream (``MONITOR``) is read until a ``BRPOP``
        naming ``queue`` came from as many connections as there are workers. Returns how many
        control replies came back (each one a message the workers published to the broker).
        """
        seen: set[tuple[str, str]] = set()
        deadline = time.monotonic() + timeout
        with broker.monitor() as monitor:  # type: ignore[no-untyped-call, unused-ignore]
            replies = app.control.add_consumer(
                queue, destination=self.names, reply=True, timeout=10
            )
            if len(replies) != self.count:
                raise RuntimeError(f"only {len(replies)} of {self.count} workers consume {queue!r}")
            while len(seen) < self.count:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"workers did not wait on {queue!r} within {timeout:.0f} s")
                command = monitor.next_command()
                words = str(command.get("command", "")).split()
                if words and words[0].upper() == "BRPOP" and queue in words:
                    seen.add((str(command["client_address"]), str(command["client_port"])))
        return len(replies)

    def main_pids(self) -> list[int]:
        """The live main processes of the workers."""
        return [process.pid for process in self.processes if process.poll() is None]

    def pids(self) -> list[int]:
        """The live processes of the workers: main processes and their pool processes."""
        found = []
        for pid in self.main_pids():
            found.append(pid)
            found.extend(children(pid))
        return found

    def memory(self) -> dict[str, int]:
        """Resident memory (bytes) of the workers' main processes, of their pool processes, and
        of both together."""
        main = child = 0
        for pid in self.main_pids():
            main += rss_bytes(pid)
            child += sum(rss_bytes(kid) for kid in children(pid))
        return {"main": main, "children": child, "total": main + child}

    def stop(self, timeout: float = 90.0) -> None:
        """Warm shutdown (SIGTERM) of every worker; a worker still alive at ``timeout`` and any
        process left in its session are killed."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for log in self._logs:
            log.close()
        self.processes.clear()
        self._logs.clear()

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
