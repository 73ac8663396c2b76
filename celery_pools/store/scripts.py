"""The Lua scripts: their catalogue (each one's keys and arguments, by name) and their sources.

Each script is one atomic operation in ``store/lua/<name>.lua``. Its header (the leading comment
lines) says what it does and what it replies, and lists its keys (each with the key's template)
and its arguments; right after, its body binds them to named locals in one statement each::

    local instances, held, rates, ... = unpack(KEYS)
    local instance, believed, token, ... = unpack(ARGV)

The order of those names is written once in Python, in :data:`SCRIPTS`, and a test holds every
script's header and bindings against it. The store builds each call from the names, so no call
site orders keys or arguments by hand.

Every script replies ``{STATUS, now, ...}``: a status word, the Redis server's clock (ms), then
the fields its header lists for that status (:mod:`celery_pools.store.replies` decodes them).

Pieces of Lua shared by several scripts live in ``store/lua/lib``, one concern each; a line
``-- include: lib/<piece>.lua`` is replaced by that file, at most once per script.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

__all__ = ["SCRIPTS", "SCRIPT_NAMES", "Script", "script_source"]


@dataclass(frozen=True)
class Script:
    """One script's name, and the names of its keys and arguments in the order it binds them.

    A ``variadic`` script takes one key per item (``keys`` names it) and the items' values as
    its arguments after the named ones.
    """

    name: str
    keys: tuple[str, ...]
    args: tuple[str, ...]
    variadic: bool = False

    def arguments(self, values: Mapping[str, Any]) -> list[Any]:
        """The arguments in script order, from ``values`` (name -> value; each name required)."""
        return [values[name] for name in self.args]


_POOL_SLOT = ("config", "holders", "holder", "waiters", "waiter", "stats")

#: Every script, by name.
SCRIPTS: dict[str, Script] = {
    script.name: script
    for script in (
        Script(
            "acquire",
            keys=(
                "instances", "held", "rates", "rate_state", "paused", *_POOL_SLOT,
                "queue", "handoffs", "rate_parked", "stale", "abandoned", "abandoned_holder",
                "standby", "standby_entry", "wake", "parked",
            ),
            args=(
                "instance", "believed", "token", "lease_ms", "first_ms", "waited_uid", "info",
                "bounds", "unassigned_timeout_ms", "wait", "handoff_id", "rate_parked_max",
                "standby_ms", "stale_ms", "handoff_lease_ms", "published_ms",
            ),
        ),
        Script(
            "release",
            keys=(
                "held", "holders", "holder", "waiters", "waiter", "stats", "queue", "handoffs",
                "standby",
            ),
            args=("token", "pool", "bounds", "execution"),
        ),
        Script(
            "abandon",
            keys=(
                "held", "holders", "holder", "waiters", "waiter", "stats", "queue", "handoffs",
                "abandoned", "abandoned_holder", "standby", "standby_entry", "wake", "parked",
                "stale",
            ),
            args=(
                "token", "pool", "grace_ms", "why", "pid", "hostname", "handoff", "unclaimed",
                "bounds", "stale_ms",
            ),
        ),
        Script(
            "free",
            keys=("abandoned", "abandoned_holder", "stats", "queue", "standby"),
            args=("token",),
        ),
        Script("renew", keys=("holders",), args=("lease_ms",), variadic=True),
        Script(
            "create",
            keys=("pools", "config"),
            args=("pool", "limit", "timeout_ms", "uid", "wait"),
        ),
        Script("update", keys=("config",), args=("limit", "timeout_ms", "wait")),
        Script(
            "assign",
            keys=("instances", "config", "pool_instances", "old_pool_instances"),
            args=("instance", "pool", "believed", "if_unassigned"),
        ),
        Script(
            "unassign",
            keys=("instances", "old_pool_instances"),
            args=("instance", "believed"),
        ),
        Script(
            "clear",
            keys=(
                "held", *_POOL_SLOT, "queue", "parked", "handoffs", "rate_parked", "expired",
                "stale", "abandoned", "abandoned_holder", "standby", "standby_entry", "wake",
            ),
            args=("pool", "release_held", "stale_ms"),
        ),
        Script(
            "delete",
            keys=(
                "pools", "instances", "held", "config", "pool_instances", "holders", "holder",
                "waiters", "waiter", "stats", "queue", "parked", "handoffs", "rate_parked",
                "expired", "stale", "abandoned", "abandoned_holder", "standby", "standby_entry",
                "wake",
            ),
            args=("pool", "stale_ms"),
        ),
        Script("pause", keys=("paused",), args=("instance", "pause_ms")),
        Script(
            "park",
            keys=(
                "instances", "held", "rates", "paused", *_POOL_SLOT, "queue", "parked",
                "handoffs", "rate_parked", "abandoned", "standby",
            ),
            args=(
                "token", "first_ms", "entry_json", "instance", "pool", "wait", "grant_lease_ms",
                "grant_info", "rate_parked_max", "reserve", "reserve_arrived", "reserve_ms",
                "place_ms",
            ),
        ),
        Script(
            "handoff",
            keys=(
                "held", "rates", "rate_state", "paused", "expired", "sent_back", "stale",
                *_POOL_SLOT, "queue", "parked", "handoffs", "rate_parked", "abandoned",
                "abandoned_holder", "standby", "standby_entry", "wake",
            ),
            args=(
                "pool", "handoff_lease_ms", "stale_ms", "standby_max", "standby_block_ms",
            ),
        ),
        Script(
            "ungrant",
            keys=("held", "holders", "holder", "stats"),
            args=("token", "handoff_id", "pool"),
        ),
    )
}  # fmt: skip
#: The names of every script.
SCRIPT_NAMES = tuple(SCRIPTS)

_INCLUDE = re.compile(r"^[ \t]*-- include: (lib/\w+\.lua)[ \t]*\r?$", re.MULTILINE)


def _read(path: str) -> str:
    return files("celery_pools.store").joinpath("lua", *path.split("/")).read_text(encoding="utf-8")


@cache
def script_source(name: str) -> str:
    """The source of ``lua/<name>.lua``, with the pieces it includes inlined (each once)."""
    included: set[str] = set()

    def inline(text: str) -> str:
        def piece(match: re.Match[str]) -> str:
            path = match.group(1)
            if path in included:
                return ""
            included.add(path)
            return inline(_read(path))

        return _INCLUDE.sub(piece, text)

    return inline(_read(f"{name}.lua"))
