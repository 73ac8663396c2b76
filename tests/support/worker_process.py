"""Run a real ``celery worker`` as a subprocess for end-to-end tests.

The worker runs in its own session (``start_new_session=True``), so its main
process is the leader of a process group that also holds the prefork pool
children: :meth:`WorkerProcess.kill` can then take the whole worker down at
once, the way a crash or an OOM kill would. Output goes to a log file that the
helpers poll (with deadlines) to know when the worker is ready.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

from celery.utils.nodenames import default_nodename, host_format

__all__ = ["REPO_ROOT", "WorkerProcess", "WorkerStartError", "process_group_pids"]

#: Repository root: the worker's cwd, so ``-A tests.workerapp`` imports.
REPO_ROOT = Path(__file__).resolve().parents[2]

_LIVE: weakref.WeakSet[WorkerProcess] = weakref.WeakSet()


class WorkerStartError(RuntimeError):
    """The worker exited, or did not become ready, during :meth:`WorkerProcess.start`."""

    def __init__(self, message: str, returncode: int | None, log: str) -> None:
        """Keep the exit code (None if still running) and the log tail."""
        super().__init__(message)
        self.returncode = returncode
        self.log = log


def _read_stat(pid: int) -> tuple[str, int, int] | None:
    """Return ``(state, ppid, pgrp)`` of ``pid`` from /proc, or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may itself contain spaces or ")".
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _alive(state: str) -> bool:
    """Zombies (Z) and dead (X) tasks count as gone: they run no code."""
    return state not in ("Z", "X")


def process_group_pids(pgid: int) -> list[int]:
    """Return the live (non-zombie) processes in process group ``pgid``."""
    found = []
    for pid in _all_pids():
        stat = _read_stat(pid)
        if stat is not None and stat[2] == pgid and _alive(stat[0]):
            found.append(pid)
    return sorted(found)


class WorkerProcess:
    """A ``celery -A <app> worker`` subprocess with its own process group.

    Example::

        with WorkerProcess("tests.workerapp", env={"REDIS_URL": url}) as worker:
            ...  # worker is ready here
            pids = worker.child_pids()
    """

    def __init__(
        self,
        app: str,
        env: Mapping[str, str] | None = None,
        *,
        concurrency: int = 4,
        pool: str = "prefork",
        hostname: str | None = None,
        queues: str | None = None,
        extra_args: list[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        loglevel: str = "INFO",
        wrapper: list[str] | None = None,
    ) -> None:
        """Prepare (but do not start) a worker.

        Args:
            app: the ``-A`` argument, e.g. ``"tests.workerapp"``.
            env: extra environment variables (added to ``os.environ``).
            concurrency: ``-c``.
            pool: ``-P`` (``prefork``, ``threads``, ``solo``, ...).
            hostname: ``-n``; default ``w-<random>@%h`` (unique per worker).
            queues: ``-Q`` (comma-separated), omitted when None.
            extra_args: appended to the command line.
            cwd: working directory; the repository root by default.
            log_path: file for stdout+stderr; in a fresh temp dir by default.
            loglevel: ``--loglevel``; keep INFO or lower to see "ready.".
            wrapper: a command the worker runs under, which must exec it (``ip netns exec
                NS`` runs it on another "host").
        """
        self.app = app
        self.env = dict(env or {})
        self.concurrency = concurrency
        self.pool = pool
        self.hostname = hostname or f"w-{uuid.uuid4().hex[:12]}@%h"
        self.queues = queues
        self.extra_args = list(extra_args or [])
        self.cwd = Path(cwd) if cwd is not None else REPO_ROOT
        if log_path is None:
            log_path = Path(tempfile.mkdtemp(prefix="celery-worker-")) / "worker.log"
        self.log_path = Path(log_path)
        self.loglevel = loglevel
        self.wrapper = list(wrapper or [])
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self._log_offset = 0

    # ----------------------------------------------------------- properties
    @property
    def nodename(self) -> str:
        """The expanded node name, as celery prints it (``w-...@myhost``)."""
        return str(host_format(default_nodename(self.hostname)))

    @property
    def command(self) -> list[str]:
        """The full command line."""
        cmd = [
            *self.wrapper,
            sys.executable,
            "-m",
            "celery",
            "-A",
            self.app,
            "worker",
            "-P",
            self.pool,
            "-c",
            str(self.concurrency),
            "-n",
            self.hostname,
            "--loglevel",
            self.loglevel,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        if self.queues is not None:
            cmd += ["-Q", self.queues]
        return cmd + self.extra_args

    @property
    def pid(self) -> int:
        """PID of the main worker process (also its process-group id)."""
        if self._proc is None:
            raise RuntimeError("worker not started")
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit code of the main process; None if running or never started."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the main worker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    # ----------------------------------------------------------- lifecycle
    def spawn(self) -> WorkerProcess:
        """Launch the process without waiting for it to be ready.

        Useful for tests that expect the worker to refuse to start: follow
        with :meth:`wait_exit`.
        """
        if self.running:
            raise RuntimeError(f"worker {self.nodename} already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._close_log()
        self._log_handle = open(self.log_path, "ab")  # noqa: SIM115
        self._log_offset = self._log_handle.tell()
        env = {**os.environ, **self.env}
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.cwd), env.get("PYTHONPATH", "")) if p
        )
        self._proc = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _LIVE.add(self)
        return self

    def start(self, timeout: float = 30.0) -> WorkerProcess:
        """Launch the worker and wait until it logs ``<nodename> ready.``.

        Raises:
            WorkerStartError: if the process exits first or is not ready in
                time (the process group is killed then); includes the log tail.
        """
        self.spawn()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll the log of the current run for the ``ready.`` line."""
        ready = re.compile(re.escape(self.nodename) + r" ready\.")
        deadline = time.monotonic() + timeout
        while True:
            if ready.search(self.log_text(current_run=True)):
                return
            code = self.returncode
            if code is not None:
                if ready.search(self.log_text(current_run=True)):
                    return
                raise WorkerStartError(
                    f"worker {self.nodename} exited with code {code} before it was "
                    f"ready.\n--- log tail ({self.log_path}) ---\n{self.log_tail()}",
                    code,
                    self.log_text(current_run=True),
                )
            if time.monotonic() >= deadline:
                self.kill()
                raise WorkerStartError(
                    f"worker {self.nodename} not ready within {timeout}s (killed)."
                    f"\n--- log tail ({self.log_path}) ---\n{self.log_tail()}",
                    None,
                    self.log_text(current_run=True),
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> int | None:
        """Warm shutdown: SIGTERM the main process and wait for it to exit.

        Running tasks are allowed to finish. If the worker is still alive after
        ``timeout`` seconds, the whole process group is SIGKILLed. Any process
        of the group still alive after the main one exits is killed too.

        Returns:
            The main process's exit code (None if it was never started).
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return proc.returncode
        self._reap_group(timeout=10.0)
        self._close_log()
        return proc.returncode

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the whole process group (main + pool children) and wait.

        Returns once the main process is reaped and no live (non-zombie)
        process of the group remains.
        """
        proc = self._proc
        if proc is None:
            return
        self._signal_group(signal.SIGKILL)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"worker {proc.pid} survived SIGKILL") from exc
        self._reap_group(timeout=timeout)
        self._close_log()

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait for the main process to exit by itself; return its exit code.

        Raises:
            AssertionError: if still running after ``timeout`` (with log tail).
        """
        if self._proc is None:
            raise RuntimeError("worker not started")
        try:
            code = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.nodename} still running after {timeout}s."
                f"\n--- log tail ({self.log_path}) ---\n{self.log_tail()}"
            ) from None
        self._reap_group(timeout=10.0)
        self._close_log()
        return code

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def _reap_group(self, timeout: float) -> None:
        """Kill leftovers of the group and wait until none is alive."""
        if self._proc is None:
            return
        pgid = self._proc.pid
        deadline = time.monotonic() + timeout
        while process_group_pids(pgid):
            self._signal_group(signal.SIGKILL)
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"processes {process_group_pids(pgid)} of worker group {pgid} "
                    f"still alive {timeout}s after SIGKILL"
                )
            time.sleep(0.02)

    def _close_log(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    # ----------------------------------------------------------- processes
    def group_pids(self) -> list[int]:
        """Live (non-zombie) processes of the worker's process group."""
        return process_group_pids(self.pid) if self._proc is not None else []

    def child_pids(self) -> list[int]:
        """Live direct children of the main process (the prefork pool processes).

        Uses ``/proc/<pid>/task/*/children`` when the kernel provides it, and
        otherwise scans the parent pid of every ``/proc/<n>/stat``.
        """
        if not self.running:
            return []
        main = self.pid
        candidates: set[int] = set()
        task_dir = Path(f"/proc/{main}/task")
        children_files = list(task_dir.glob("*/children"))
        if children_files:
            for path in children_files:
                try:
                    candidates.update(int(p) for p in path.read_text().split())
                except (FileNotFoundError, ProcessLookupError):
                    continue
        else:
            candidates = set(_all_pids())
        found = []
        for pid in candidates:
            stat = _read_stat(pid)
            if stat is not None and stat[1] == main and _alive(stat[0]):
                found.append(pid)
        return sorted(found)

    def kill_child(self, pid: int) -> None:
        """SIGKILL one pool child (must be a live child of this worker)."""
        if pid not in self.child_pids():
            raise ValueError(f"{pid} is not a live child of worker {self.pid}")
        os.kill(pid, signal.SIGKILL)

    # ----------------------------------------------------------- logs
    def log_text(self, current_run: bool = False) -> str:
        """The log content; only what the latest start wrote if ``current_run``."""
        try:
            with open(self.log_path, "rb") as fh:
                if current_run:
                    fh.seek(self._log_offset)
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the current run's log."""
        return "\n".join(self.log_text(current_run=True).splitlines()[-lines:])

    def wait_for_log(
        self, pattern: str, timeout: float = 30.0, *, current_run: bool = True
    ) -> re.Match[str]:
        """Poll the log until regex ``pattern`` matches; return the match.

        Fails early if the worker has exited and the pattern is not in its
        final log.

        Raises:
            AssertionError: on timeout or early exit, with the log tail.
        """
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            exited = self._proc is not None and self._proc.poll() is not None
            match = regex.search(self.log_text(current_run=current_run))
            if match:
                return match
            if exited or time.monotonic() >= deadline:
                why = "worker exited" if exited else f"timeout after {timeout}s"
                raise AssertionError(
                    f"pattern {pattern!r} not found in worker log ({why})."
                    f"\n--- log tail ({self.log_path}) ---\n{self.log_tail()}"
                )
            time.sleep(0.05)

    # ----------------------------------------------------------- protocol
    def __enter__(self) -> WorkerProcess:
        """Start the worker (if not running) and wait until it is ready."""
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the worker; kill its process group if stopping fails."""
        try:
            self.stop()
        except BaseException:
            self.kill()
            raise

    def __repr__(self) -> str:
        """Show node name, pid and state."""
        pid = self._proc.pid if self._proc is not None else None
        state = "running" if self.running else f"exited({self.returncode})"
        return f"<WorkerProcess {self.hostname} pid={pid} {state}>"


@atexit.register
def _kill_leftovers() -> None:
    """Never leave a worker process group behind when the test process exits."""
    for worker in list(_LIVE):
        proc = worker._proc
        if proc is not None and (proc.poll() is None or process_group_pids(proc.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.poll() is None:
                proc.wait()
