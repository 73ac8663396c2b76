"""Redis connections across ``fork``: a forked child repairs the stores it inherits.

A thread of the parent (a worker's lease renewal or hand-off reaper) may be inside a client's
connection pool when a prefork worker forks a child. The child then inherits the pool's lock held
by a thread that does not exist in it, and redis-py's own after-fork check waits on that lock for
ever. One at-fork hook per process repairs, in the child, every store registered here before
anything else runs.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Any, Protocol

__all__ = ["ForkSafe", "register", "unlock_inherited"]

logger = logging.getLogger(__name__)


class ForkSafe(Protocol):
    """What a forked child calls on each registered object."""

    def after_fork(self) -> None:
        """Repair what the parent's threads may have left locked."""


_REGISTERED: weakref.WeakSet[Any] = weakref.WeakSet()


def register(obj: ForkSafe) -> None:
    """Call ``obj.after_fork()`` in every child forked from now on, while ``obj`` lives."""
    _REGISTERED.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_REGISTERED):
        try:
            obj.after_fork()
        except Exception:  # never fail a fork; redis-py's own after-fork check still applies
            logger.warning("celery-pools: could not reset a Redis connection pool after fork")


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def unlock_inherited(pool: Any) -> None:
    """Give an inherited connection pool new locks, then empty it for this process (the parent
    still uses the inherited sockets).

    Repaired in place (not replaced) so that whatever the pool carries (client-side cache,
    Sentinel's service, maintenance settings, other clients sharing it) stays.
    """
    for name in ("_fork_lock", "_lock"):
        lock = getattr(pool, name, None)
        if lock is not None:
            reentrant = isinstance(lock, type(threading.RLock()))
            setattr(pool, name, threading.RLock() if reentrant else threading.Lock())
    pool.reset()
