"""Throwaway Celery app used only to test the harness itself.

Broker and result backend are the private Redis whose URL the test passes in
the ``HARNESS_REDIS_URL`` environment variable.
"""

from __future__ import annotations

import os

from celery import Celery

_URL = os.environ.get("HARNESS_REDIS_URL", "")
if not _URL:
    raise RuntimeError("HARNESS_REDIS_URL is not set: the harness app needs a private Redis")

app = Celery("harness", broker=_URL, backend=_URL)
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=True,
)


@app.task(name="harness.add")  # type: ignore[untyped-decorator, unused-ignore]
def add(x: int, y: int) -> int:
    """Return ``x + y``."""
    return x + y
