"""Loads the Lua scripts shipped in ``celery_pools/lua`` (read once per process)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

__all__ = ["SCRIPT_NAMES", "script_source"]

#: Every script the store registers; each is one atomic operation, documented in its header.
SCRIPT_NAMES = (
    "acquire",
    "release",
    "renew",
    "create",
    "update",
    "assign",
    "unassign",
    "clear",
    "delete",
    "pause",
    "park",
    "handoff",
    "ungrant",
)


@cache
def script_source(name: str) -> str:
    """The source of ``lua/<name>.lua``."""
    return files("celery_pools").joinpath("lua").joinpath(f"{name}.lua").read_text(encoding="utf-8")
