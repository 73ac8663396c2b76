"""Test-support harness: private Redis, real Celery workers, probes, polling.

Nothing here imports ``celery_pools``; the harness must keep working (and stay
trustworthy) whatever state the package under test is in.

The re-exports are lazy (PEP 562) so that a worker process importing only
``tests.support.probe`` does not also load the subprocess machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .polling import wait_until
    from .probe import ConcurrencyProbe
    from .redis_server import RedisServer
    from .worker_process import WorkerProcess

__all__ = ["ConcurrencyProbe", "RedisServer", "WorkerProcess", "wait_until"]

_WHERE = {
    "ConcurrencyProbe": ".probe",
    "RedisServer": ".redis_server",
    "WorkerProcess": ".worker_process",
    "wait_until": ".polling",
}


def __getattr__(name: str) -> Any:
    """Import the re-exported names on first use."""
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
