"""The least a Redis ACL user needs to hold celery-pools' state under one key prefix.

Every command the store sends and every command its scripts call, and only the keys of its
prefix (they all start with ``{prefix}:``). :func:`acl_setuser` is the ``ACL SETUSER`` line for
such a user; ``celery -A proj pools acl`` prints it for an app's prefix.
"""

from __future__ import annotations

from .keys import KeySpace

__all__ = ["COMMANDS", "SETINFO_SINCE", "acl_setuser"]

#: What the store sends itself (reads, transactions, a standby's BLPOP, script loading, WAIT,
#: the connection's own PING and SELECT) and what the Lua scripts call. Not CONFIG: the worker's
#: start-up check of ``maxmemory-policy`` is skipped without it (CONFIG GET would show the
#: server's whole configuration). redis-py also sends CLIENT SETINFO as it connects, and goes on
#: when it is refused: :func:`acl_setuser` allows it where Redis has it (7.2 and newer; 7.0 and
#: 7.1 refuse an ACL rule that names it).
COMMANDS = (
    # the connection, scripts, transactions, replication
    "ping", "select", "evalsha", "script|load", "multi", "exec", "wait", "time",
    # keys
    "exists", "del", "pexpire",
    # hashes
    "hget", "hgetall", "hmget", "hset", "hsetnx", "hdel", "hincrby", "hexists", "hlen",
    # sets
    "smembers", "sadd", "srem",
    # sorted sets
    "zadd", "zcard", "zrange", "zrangebyscore", "zrank", "zrem", "zremrangebyscore", "zscore",
    # lists
    "lpush", "rpush", "lpop", "blpop",
)  # fmt: skip


#: The first Redis version that has CLIENT SETINFO.
SETINFO_SINCE = (7, 2)


def acl_setuser(
    user: str,
    key_prefix: str = "celery_pools",
    password: str = "<password>",
    redis_version: tuple[int, ...] | None = None,
) -> str:
    """The ``ACL SETUSER`` line for ``user``: on, with ``password``, the keys of
    ``key_prefix`` only, no channels, and :data:`COMMANDS` only, plus ``CLIENT SETINFO`` when
    ``redis_version`` is known to have it (Redis 7.0 and 7.1 refuse a rule naming it; without
    it, a newer Redis refuses redis-py's SETINFO, which redis-py ignores)."""
    pattern = KeySpace(key_prefix).pattern
    allowed = [*COMMANDS]
    if redis_version is not None and redis_version >= SETINFO_SINCE:
        # with the connection's own commands, after SELECT
        allowed.insert(allowed.index("select") + 1, "client|setinfo")
    commands = " ".join(f"+{command}" for command in allowed)
    return f"ACL SETUSER {user} on >{password} resetkeys ~{pattern} resetchannels -@all {commands}"
