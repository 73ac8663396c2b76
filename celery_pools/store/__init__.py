"""The Redis layer: pool state and every atomic operation on it (no Celery, no kombu here).

- :mod:`.keys`: every key name, and how a script's named keys are built;
- :mod:`.scripts`: the catalogue of Lua scripts (``lua/``, shared pieces in ``lua/lib/``);
- :mod:`.wire`: script calls packed and sent with little work on the client;
- :mod:`.fork`: connections repaired in a forked child; :mod:`.clock`: the Redis clock;
- :mod:`.results`: what operations answer; :mod:`.replies`: decoding Redis's replies;
- :mod:`.connect`: the Redis a URL names (a server, a Sentinel master, a Cluster's slot owner);
- :mod:`.acl`: the least an ACL user needs for one key prefix;
- :mod:`.base`, :mod:`.reading`, :mod:`.store`: :class:`RedisPoolStore`'s plumbing, reads and
  atomic writes.
"""

from __future__ import annotations

from . import results
from .acl import acl_setuser
from .keys import KeySpace, PoolKeys
from .results import *  # noqa: F403  (every result type: results.__all__)
from .store import RATE_PARKED_MAX, STALE_HANDOFF_SECONDS, RedisPoolStore

__all__ = [  # noqa: PLE0604  (the result types are listed once, in results.__all__)
    "RATE_PARKED_MAX",
    "STALE_HANDOFF_SECONDS",
    "KeySpace",
    "PoolKeys",
    "RedisPoolStore",
    "acl_setuser",
    *results.__all__,
]
