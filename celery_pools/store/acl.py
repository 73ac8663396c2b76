"""The least a Redis ACL user needs to hold celery-pools' state under one key prefix.

Every command the store sends and every command its scripts call, and only the keys of its
prefix (they all start with ``{prefix}:``). :func:`acl_setuser` is the ``ACL SETUSER`` line for
such a user; ``celery -A proj pools acl`` prints it for an app's prefix.
"""

from __future__ import annotations

from .keys import KeySpace

__all__ = ["COMMANDS", "acl_setuser"]

#: What the store sends itself (reads, transactions, a standby's BLPOP, script loading, WAIT,
#: the connection's own PING, SELECT and CLIENT SETINFO) and what the Lua scripts call. Not
#: CONFIG: the worker's start-up check of ``maxmemory-policy`` is skipped without it (CONFIG GET
#: would show the server's whole configuration).
COMMANDS = (
    # the connection, scripts, transactions, replication
    "ping", "select", "client|setinfo", "evalsha", "script|load", "multi", "exec", "wait", "time",
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


def acl_setuser(user: str, key_prefix: str = "celery_pools", password: str = "<password>") -> str:
    """The ``ACL SETUSER`` line for ``user``: on, with ``password``, the keys of
    ``key_prefix`` only, no channels, and :data:`COMMANDS` only."""
    pattern = KeySpace(key_prefix).pattern
    commands = " ".join(f"+{command}" for command in COMMANDS)
    return f"ACL SETUSER {user} on >{password} resetkeys ~{pattern} resetchannels -@all {commands}"
