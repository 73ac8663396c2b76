"""Installing celery-pools on a Celery app: the one place that wires it into Celery.

:func:`install` adds the worker bootstep (lease renewal, the slots of tasks that end in the
main process, hand-off reaper, declared pools) and the management tasks. Importing this module
registers the ``celery inspect pools`` remote command.
"""

from __future__ import annotations

import threading
from typing import Any

from . import control  # noqa: F401  (registers `celery inspect pools`)
from .admin_tasks import register_management_tasks
from .context import PoolsExtension, get_extension
from .worker import PoolsWorkerStep

__all__ = ["install"]

_lock = threading.Lock()


def install(app: Any) -> PoolsExtension:
    """Install celery-pools on ``app``: the worker bootstep, the management tasks
    (``celery_pools.*``) and the ``inspect pools`` remote command. Idempotent.

    Called automatically when a PooledTask is bound to the app (during its finalization).
    """
    ext = get_extension(app)
    if ext.installed:
        return ext
    with _lock:
        if not ext.installed:
            app.steps["worker"].add(PoolsWorkerStep)
            register_management_tasks(app)
            ext.installed = True
    return ext
