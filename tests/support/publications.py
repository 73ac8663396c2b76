"""Counts the task messages published in this process (producers and in-process workers), read
from Celery's ``before_task_publish`` signal: what the broker is sent, not what the pool says."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

__all__ = ["Publications"]


class Publications:
    """Task messages published, by task name and by task id; connect it to
    ``before_task_publish``."""

    def __init__(self) -> None:
        self._names: Counter[str] = Counter()
        self._ids: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, sender: Any = None, headers: Any = None, **_: Any) -> None:
        with self._lock:
            self._names[str(sender)] += 1
            self._ids[str((headers or {}).get("id", ""))] += 1

    def count(self, name: str) -> int:
        """Messages published of the task called ``name``."""
        with self._lock:
            return self._names[name]

    def count_id(self, task_id: str) -> int:
        """Messages published with the task id ``task_id``."""
        with self._lock:
            return self._ids[task_id]
