"""Deadline-based polling helper used instead of sleeps for synchronisation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

__all__ = ["wait_until"]


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.05,
    message: str = "",
) -> T:
    """Call ``predicate`` until it returns a truthy value or ``timeout`` expires.

    The predicate is always called at least once, and once more right at the
    deadline, so a condition that becomes true at the last moment is seen.

    Returns:
        The first truthy value returned by ``predicate``.

    Raises:
        AssertionError: if no truthy value was seen before the deadline. The
            error contains ``message`` and the repr of the last value seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(interval, remaining))
    value = predicate()
    if value:
        return value
    prefix = f"{message}: " if message else ""
    raise AssertionError(f"{prefix}condition not met within {timeout:.2f}s (last value: {value!r})")
