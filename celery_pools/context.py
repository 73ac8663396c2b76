"""celery-pools' context on one Celery app: its settings, its Redis store and its dispatcher.

The context is created on first use and cached on the app; settings and store are built lazily,
so configuration set after the tasks are defined is still seen. Nothing here wires anything into
Celery: :mod:`celery_pools.install` does.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .declared import Declared
from .handoff import Dispatcher
from .settings import PoolsSettings
from .store import Acquisition, RedisPoolStore

__all__ = ["POOLED_MARKER", "PoolsExtension", "get_extension", "is_pooled"]

logger = logging.getLogger(__name__)

_ATTRIBUTE = "_celery_pools_extension"
_lock = threading.Lock()

#: The attribute that marks a task class as pooled (``PooledTask`` sets it to True).
POOLED_MARKER = "celery_pools_pooled"


def is_pooled(task: Any) -> bool:
    """Whether ``task`` takes a pool slot before its body runs (a ``PooledTask``)."""
    return getattr(task, POOLED_MARKER, False) is True


class PoolsExtension:
    """Per-app state. Get it with :func:`get_extension`."""

    def __init__(self, app: Any) -> None:
        self.app = app
        #: Set by :func:`celery_pools.install` once the app is wired up.
        self.installed = False
        self._settings: PoolsSettings | None = None
        self._store: RedisPoolStore | None = None
        self._dispatcher: Dispatcher | None = None
        self._warned_unassigned: set[str] = set()
        #: Whether this process declared ``pools_declare`` (:mod:`celery_pools.declared`).
        self.declared = Declared()
        self._time_limits: tuple[float | None, float | None] | None = None
        self._lock = threading.Lock()

    @property
    def settings(self) -> PoolsSettings:
        """The validated ``pools_*`` settings (read once)."""
        if self._settings is None:
            self._settings = PoolsSettings.from_app(self.app)
        return self._settings

    @property
    def default_time_limits(self) -> tuple[float | None, float | None]:
        """The app's ``task_time_limit`` and ``task_soft_time_limit`` (read once: Celery's
        settings are slow to read on every task)."""
        if self._time_limits is None:
            conf = self.app.conf
            self._time_limits = (conf.task_time_limit, conf.task_soft_time_limit)
        return self._time_limits

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
                        transport_options=settings.resolve_transport_options(self.app),
                        wait_replicas=settings.redis_wait_replicas,
                        wait_timeout=settings.redis_wait_timeout_seconds,
                        handoff_lease=settings.handoff_lease_seconds,
                        standby_max=settings.standby_max,
                        standby_block=settings.standby_seconds,
                    )
        return self._store

    @property
    def dispatcher(self) -> Dispatcher:
        """What publishes the messages this app's store hands out."""
        store = self.store
        dispatcher = self._dispatcher
        if dispatcher is None or dispatcher.store is not store:
            dispatcher = self._dispatcher = Dispatcher(self.app, store)
        return dispatcher

    def reset(self) -> None:
        """Forget cached settings and the store (after changing ``app.conf`` at run time)."""
        with self._lock:
            self._settings = None
            self._store = None
            self._dispatcher = None
            self._time_limits = None

    def declare_pools(self) -> list[str]:
        """Create the pools of ``pools_declare`` that do not exist and assign their unassigned
        instances (existing pools and associations are never changed); the pools created."""
        return self.declared.declare(self.store, self.settings.declare)

    def declared_now(self, answer: Acquisition, instance: str) -> bool:
        """Whether a task of ``instance`` must ask again: ``answer`` found it with no pool, and
        this process had not declared ``pools_declare``, which it just did."""
        return self.declared.ask_again(answer, instance, self.store, self.settings.declare)

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
    """The celery-pools context of ``app`` (created on first use)."""
    ext = getattr(app, _ATTRIBUTE, None)
    if ext is None:
        with _lock:
            ext = getattr(app, _ATTRIBUTE, None)
            if ext is None:
                ext = PoolsExtension(app)
                setattr(app, _ATTRIBUTE, ext)
    return ext
