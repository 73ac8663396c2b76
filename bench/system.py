"""Facts about the machine and the processes the benchmark runs: CPU, memory, versions, RSS,
and the Redis servers' command counts and memory."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import redis

__all__ = [
    "PUBLISH_COMMANDS",
    "CpuMeter",
    "children",
    "command_calls",
    "command_counts",
    "git_revision",
    "machine_info",
    "package_version",
    "rss_bytes",
    "server_cpu",
    "used_memory",
]

#: The commands by which a Redis broker receives a message: kombu's Redis transport publishes with
#: LPUSH (RPUSH when it restores a message to the head of its queue).
PUBLISH_COMMANDS = ("lpush", "rpush")


def package_version(package: str) -> str | None:
    """The installed version of distribution ``package``, None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_info(client: redis.Redis) -> dict[str, Any]:
    """CPU model, cores, RAM, OS, and the versions of Python, Celery, kombu, redis-py, Dramatiq,
    celery-pools and the ``redis-server`` behind ``client``."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_bytes": _ram_bytes(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "celery": package_version("celery"),
        "kombu": package_version("kombu"),
        "redis_py": package_version("redis"),
        "dramatiq": package_version("dramatiq"),
        "celery_pools": package_version("celery-pools"),
        "redis_server": str(client.info("server").get("redis_version")),
        "load_average_at_start": list(os.getloadavg()),
    }


def git_revision(root: Path) -> str | None:
    """``git describe --always --dirty`` of ``root``, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def command_calls(client: redis.Redis, commands: tuple[str, ...] | None = PUBLISH_COMMANDS) -> int:
    """How many times the server behind ``client`` ran ``commands`` since it started; with
    ``commands`` None, every command but ``INFO`` (which the benchmark itself sends to read
    these counts)."""
    counts = command_counts(client)
    if commands is None:
        return sum(counts.values())
    return sum(counts.get(name, 0) for name in commands)


def command_counts(client: redis.Redis) -> dict[str, int]:
    """Calls of each command the server behind ``client`` ran since it started (name -> calls,
    ``INFO`` left out)."""
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(value.get("calls", 0))
        for name, value in stats.items()
        if name != "cmdstat_info"
    }


def server_cpu(client: redis.Redis) -> float:
    """CPU seconds (system + user) the server behind ``client`` used since it started."""
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def used_memory(client: redis.Redis) -> int:
    """``used_memory`` (bytes) of the server behind ``client``."""
    return int(client.info("memory")["used_memory"])


def children(pid: int) -> list[int]:
    """The live direct children of ``pid`` (a prefork worker's pool processes)."""
    found: set[int] = set()
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found.update(int(p) for p in path.read_text().split())
        except OSError:
            continue
    return sorted(found)


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (``VmRSS``), 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class CpuMeter:
    """How busy the machine's CPUs were since the meter was made, and how much of that was
    spent by processes other than ``own()`` (the benchmark's: a high share means another job
    disturbed the figures). ``roles``, if given, names groups of the benchmark's processes
    (role -> pids, read anew at each reading), whose CPU is also reported apart."""

    def __init__(
        self,
        own: Callable[[], Iterable[int]],
        roles: Callable[[], Mapping[str, Iterable[int]]] | None = None,
    ) -> None:
        self._own = own
        self._roles = roles
        self._start = self._machine()
        self._start_own = self._own_ticks()

    @staticmethod
    def _machine() -> tuple[int, int, int]:
        """``(busy, busy in processes, total)`` ticks of all CPUs since boot."""
        try:
            line = Path("/proc/stat").read_text().split("\n", 1)[0]
            fields = [int(v) for v in line.split()[1:]]
        except (OSError, ValueError):
            return 0, 0, 0
        total = sum(fields[:8])  # guest time is already counted in user and nice
        idle = fields[3] + fields[4]  # idle + iowait
        processes = fields[0] + fields[1] + fields[2]  # user + nice + system
        return total - idle, processes, total

    def _own_ticks(self) -> dict[int, int]:
        ticks = {}
        for pid in self._own():
            try:
                raw = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = raw[raw.rfind(")") + 2 :].split()
            ticks[pid] = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
        return ticks

    def read(self) -> dict[str, Any]:
        """``busy``: share (0..1) of all CPU time that was busy; ``others``: the share spent by
        other processes (interrupts, which the loopback traffic of the benchmark itself causes,
        count in neither); ``own_s``: CPU seconds the benchmark's own processes spent (this
        producer, every Redis, the workers and their children); ``roles_s``: the same by role,
        when the meter has roles. None when /proc is unreadable."""
        busy, processes, total = self._machine()
        elapsed = total - self._start[2]
        if elapsed <= 0:
            return {"busy": None, "others": None, "own_s": None}
        own_now = self._own_ticks()
        own = sum(t - self._start_own.get(pid, 0) for pid, t in own_now.items())
        # /proc/stat adds up every CPU and a process's times are per CPU used: the same unit.
        others = max(0, processes - self._start[1] - own)
        tick = os.sysconf("SC_CLK_TCK")
        reading: dict[str, Any] = {
            "busy": (busy - self._start[0]) / elapsed,
            "others": others / elapsed,
            "own_s": own / tick,
        }
        if self._roles is not None:
            reading["roles_s"] = {
                role: sum(own_now.get(pid, 0) - self._start_own.get(pid, 0) for pid in pids) / tick
                for role, pids in self._roles().items()
            }
        return reading
