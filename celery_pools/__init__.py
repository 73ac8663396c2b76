"""celery-pools: distributed connection pools for Celery.

Cap how many tasks talk to one external system at once, across every worker, process and host::

    from celery_pools import PooledTask, PoolManager

    @app.task(base=PooledTask, connector_instance="netsuite-prod")
    def push_order(order_id): ...

    PoolManager(app).create("netsuite", limit=10, timeout=30)
    PoolManager(app).assign("netsuite-prod", "netsuite")
"""

from __future__ import annotations

from . import signals
from .context import get_extension
from .errors import (
    PoolBackendError,
    PoolBackendTimeoutError,
    PoolClearedError,
    PoolConfigError,
    PoolDeletedError,
    PoolError,
    PoolExistsError,
    PoolFullError,
    PoolNotFoundError,
    PoolTimeoutError,
    RateLimitTimeoutError,
    SlotInUseError,
    SlotNotFoundError,
    UnassignedInstanceError,
)
from .install import install
from .manager import PoolManager
from .models import DEFAULT_TIMEOUT, MAX_TIMEOUT, AbandonedSlot, Holder, Pool, PoolStatus, Waiter
from .ratelimit import InstanceRate, RateLimit
from .settings import PoolsSettings
from .task import PooledTask

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_TIMEOUT",
    "AbandonedSlot",
    "Holder",
    "InstanceRate",
    "Pool",
    "PoolBackendError",
    "PoolBackendTimeoutError",
    "PoolClearedError",
    "PoolConfigError",
    "PoolDeletedError",
    "PoolError",
    "PoolExistsError",
    "PoolFullError",
    "PoolManager",
    "PoolNotFoundError",
    "PoolStatus",
    "PoolTimeoutError",
    "PooledTask",
    "PoolsSettings",
    "RateLimit",
    "RateLimitTimeoutError",
    "SlotInUseError",
    "SlotNotFoundError",
    "UnassignedInstanceError",
    "Waiter",
    "__version__",
    "get_extension",
    "install",
    "signals",
]
