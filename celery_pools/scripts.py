"""Loads the Lua scripts shipped in ``celery_pools/lua`` (read once per process).

A script may share a piece of Lua with others: a line ``-- include: <piece>.lua`` is replaced by
that file of ``celery_pools/lua`` (``gcra.lua``, the rate-limit algorithm, and ``end_handoffs.lua``
are such pieces).
"""

from __future__ import annotations

import re
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


_INCLUDE = re.compile(r"^[ \t]*-- include: (\w+)\.lua[ \t]*\r?$", re.MULTILINE)


def _read(name: str) -> str:
    return files("celery_pools").joinpath("lua").joinpath(f"{name}.lua").read_text(encoding="utf-8")


@cache
def script_source(name: str) -> str:
    """The source of ``lua/<name>.lua``, with its included pieces inlined."""
    return _INCLUDE.sub(lambda match: _read(match.group(1)), _read(name))
