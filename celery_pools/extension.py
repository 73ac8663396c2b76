"""celery-pools' state on one Celery app: settings, the Redis store, and what is installed.

The extension is created on first use and cached on the app. Installing it (done automatically
when a :class:`~celery_pools.task.PooledTask` is bound to the app) adds the worker bootstep
(lease renewal, hand-off reaper, declared pools), the main-process signal handlers that release
slots a child process could not release itself, and the management tasks.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .settings import PoolsSettings
from .store import RedisPoolStore

__all__ = ["PoolsExtension", "get_extension", "install"]

logger = logging.getLogger(__name__)

_ATTRIBUTE = "_celery_pools_extension"
_lock = threading.Lock()


class PoolsExtension:
    """Per-app state. Get it with :func:`get_extension`; settings and store are built lazily, so
    configuration set after the tasks are defined is still seen."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.installed = False
        self._settings: PoolsSettings | None = None
        self._store: RedisPoolStore | None = None
        self._warned_unassigned: set[str] = set()
        self._lock = threading.Lock()

    @property
    def settings(self) -> PoolsSettings:
        """The validated ``pools_*`` settings (read once)."""
        if self._settings is None:
            self._settings = PoolsSettings.from_app(self.app)
        return self._settings

    @property
    def redis_url(self) -> str:
        """The Redis holding pool state (raises PoolConfigError naming the setting if none)."""
        return self.settings.resolve_redis_url(self.app)

    @property
    def store(self) -> RedisPoolStore:
        """The Redis store for this app (one per process; safe across fork)."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    settings = self.settings
                    self._store = RedisPoolStore.from_url(
                        self.redis_url,
                        key_prefix=settings.key_prefix,
                        socket_timeout=settings.redis_socket_timeout,
                    )
        return self._store

    def reset(self) -> None:
        """Forget cached settings and the store (after changing ``app.conf`` at run time)."""
        with self._lock:
            self._settings = None
            self._store = None

    def warn_unassigned_once(self, instance: str, task_name: str) -> None:
        """Log, once per process and instance, that a pooled task runs without a limit."""
        if instance in self._warned_unassigned:
            return
        self._warned_unassigned.add(instance)
        logger.warning(
            "celery-pools: connector instance %r (task %s) has no pool; its tasks run without a "
            "concurrency limit. Assign it to a pool, or set pools_require_assignment = True to "
            "make this an error.",
            instance,
            task_name,
        )


def get_extension(app: Any) -> PoolsExtension:
    """The celery-pools extension of ``app`` (created on first use)."""
    ext = getattr(app, _ATTRIBUTE, None)
    if ext is None:
        with _lock:
            ext = getattr(app, _ATTRIBUTE, None)
            if ext is None:
                ext = PoolsExtension(app)
                setattr(app, _ATTRIBUTE, ext)
    return ext


def install(app: Any) -> PoolsExtension:
    """Install celery-pools on ``app``: the worker bootstep, the release handlers, the
    management tasks (``celery_pools.*``) and the ``inspect pools`` remote command. Idempotent.

    Called automatically when a PooledTask is bound to the app (during its finalization).
    """
    ext = get_extension(app)
    if ext.installed:
        return ext
    with _lock:
        if not ext.installed:
            from . import control  # noqa: F401  (registers `celery inspect pools`)
            from .management import register_management_tasks
            from .worker import PoolsWorkerStep, connect_worker_signals

            app.steps["worker"].add(PoolsWorkerStep)
            connect_worker_signals(app)
            register_management_tasks(app)
            ext.installed = True
    return ext
