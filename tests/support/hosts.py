"""Several "hosts" on one machine: network namespaces, each with an address of its own on a
bridge, and wall clocks set apart.

The machine itself is the bridge's host (``gateway``): servers the hosts share (Redis) listen
there. A process runs on a host under :meth:`Hosts.wrapper`, which enters the namespace and, for
a skewed host, preloads ``clock_skew.c`` (built here with the C compiler) so that the process's
wall clock (``time.time()``, ``datetime.now()``, Celery's ETAs; not the monotonic clock) is off by
that many seconds. Needs root, ``ip`` (iproute2) and ``cc``: :func:`unavailable` says what is
missing.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

__all__ = ["Hosts", "unavailable"]

_SKEW_SOURCE = Path(__file__).with_name("clock_skew.c")


@cache
def _clock_skew_library() -> str:
    """The preload library that skews a process's wall clock, built once per source."""
    source = _SKEW_SOURCE.read_bytes()
    built = (
        Path(tempfile.gettempdir()) / f"cp-clock-skew-{hashlib.sha1(source).hexdigest()[:12]}.so"
    )
    if not built.exists():
        partial = built.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run(
            ["cc", "-shared", "-fPIC", "-O2", "-o", str(partial), str(_SKEW_SOURCE), "-ldl"],
            check=True,
            capture_output=True,
        )
        partial.replace(built)
    return str(built)


def unavailable() -> str | None:
    """Why hosts cannot be made here (a skip reason), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no 'ip' command (apt-get install iproute2)"
    if shutil.which("cc") is None:
        return "no C compiler to build the clock-skew library (apt-get install gcc)"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Hosts:
    """Hosts ``names`` on a private /24, the machine at ``.1`` (``gateway``)."""

    def __init__(self, names: list[str]) -> None:
        tag = f"{random.SystemRandom().randrange(16**5):05x}"
        self.tag = tag
        self.bridge = f"cpbr{tag}"
        self.subnet = f"10.{random.SystemRandom().randrange(100, 200)}.{int(tag[:2], 16)}"
        self.gateway = f"{self.subnet}.1"
        self.names = list(names)
        self._made: list[str] = []

    def namespace(self, name: str) -> str:
        return f"cp{self.tag}{self.names.index(name)}"

    def address(self, name: str) -> str:
        return f"{self.subnet}.{10 + self.names.index(name)}"

    def start(self) -> Hosts:
        _ip("link", "add", self.bridge, "type", "bridge")
        self._made.append("bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for index, name in enumerate(self.names):
            namespace = self.namespace(name)
            outside, inside = f"cpv{self.tag}{index}", f"cpi{self.tag}{index}"
            _ip("netns", "add", namespace)
            self._made.append(namespace)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", namespace)
            _ip("link", "set", outside, "master", self.bridge, "up")
            _ip("-n", namespace, "addr", "add", f"{self.address(name)}/24", "dev", inside)
            _ip("-n", namespace, "link", "set", inside, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
        return self

    def wrapper(self, name: str, skew_seconds: float = 0.0) -> list[str]:
        """The command prefix that runs a program on host ``name``, its wall clock off by
        ``skew_seconds`` (the monotonic clock is left alone, as on a real host)."""
        prefix = ["ip", "netns", "exec", self.namespace(name)]
        if not skew_seconds:
            return prefix
        return [
            *prefix,
            "env",
            f"LD_PRELOAD={_clock_skew_library()}",
            f"CP_CLOCK_SKEW_SECONDS={skew_seconds:g}",
        ]

    def cleanup(self) -> None:
        for namespace in self._made[1:]:
            subprocess.run(["ip", "netns", "del", namespace], check=False, capture_output=True)
        if self._made:
            subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)
        self._made.clear()
