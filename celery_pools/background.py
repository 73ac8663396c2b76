"""A periodic background thread for a worker's main process."""

from __future__ import annotations

import logging
import threading

from .errors import PoolBackendError

__all__ = ["Periodic"]

logger = logging.getLogger(__name__)


class Periodic(threading.Thread):
    """Calls :meth:`tick` every ``interval`` seconds until stopped.

    A thread rather than a timer on the worker's event loop, so a slow Redis never stalls the
    worker. An unreachable Redis is logged at ``unreachable_level``; other errors with their
    traceback; neither stops the thread.
    """

    #: What the thread does, for log messages.
    activity = "background work"
    #: How loudly an unreachable Redis is reported.
    unreachable_level = logging.WARNING

    def __init__(self, name: str, interval: float) -> None:
        super().__init__(name=name, daemon=True)
        self.interval = interval
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self.tick()
            except PoolBackendError as exc:
                logger.log(
                    self.unreachable_level, "celery-pools: %s failed: %s", self.activity, exc
                )
            except Exception:
                logger.exception("celery-pools: %s failed", self.activity)

    def tick(self) -> object:
        """One round of work."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop at the next wake-up."""
        self._stopped.set()
