"""Lua script calls with little work on the client.

Every pooled task runs two or three of celery-pools' scripts (acquire, release; in a hand-off pool
also the grant at publication), each with some twenty keys and arguments. Through redis-py's
generic command path every one of those goes through several layers of encoding, and a script
call costs its caller several times a plain ``PING``.

:class:`ScriptCaller` packs the ``EVALSHA`` commands itself (a script's key list, which repeats
from call to call, is encoded once and kept), writes a batch of them in one write on a connection
of the client's pool, under the connection's retry policy, and reads the replies with the
connection's own parser, so they decode exactly as redis-py's would. A script Redis no longer
knows (after a restart) is loaded again and the calls that failed run again, in order.

With ``replicas`` set, every batch ends with ``WAIT replicas timeout`` in the same write: Redis
answers it once that many replicas have the batch's writes (or the timeout passed), so a
failover to one of them cannot forget a slot just taken. A batch the replicas did not confirm
in time is logged; its writes stand on the master.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from redis.exceptions import DataError, NoScriptError, ResponseError

__all__ = ["Block", "ScriptCall", "ScriptCaller"]

logger = logging.getLogger(__name__)

# At most one warning per this many seconds that replicas did not confirm writes in time.
_UNREPLICATED_WARNING_INTERVAL = 60.0

#: One call: the script's name, its keys and its arguments.
ScriptCall = tuple[str, Sequence[str], Sequence[Any]]

#: A block ahead of a batch: the LIST's key and the seconds to block at most (> 0).
Block = tuple[str, float]

# Encoded key lists kept per caller (a process sees a few per pool and instance); a longer list
# (a lease renewal names one key per slot held) is encoded each time.
_KEY_LISTS_KEPT = 4096
_KEPT_LIST_MAX = 32


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


# redis-py before 5.3 wants a command name to hand out a connection; later ones warn about it.
_NAMED_CHECKOUT = tuple(part for part in redis.VERSION[:2] if isinstance(part, int)) < (5, 3)


def _get_connection(pool: Any) -> Any:
    """A connection of ``pool``."""
    if _NAMED_CHECKOUT:  # pragma: no cover - redis-py < 5.3
        return pool.get_connection("EVALSHA")
    return pool.get_connection()


class ScriptCaller:
    """Runs the scripts of ``sources`` (name -> Lua source) on ``client``'s Redis.

    Thread-safe: each batch takes a connection of the client's pool for itself. A client bound to
    a single connection (``single_connection_client=True``) goes through redis-py's own
    pipeline. ``replicas`` (0: none) is how many replicas each batch waits for, at most
    ``replica_timeout_ms``.
    """

    def __init__(
        self,
        client: redis.Redis,
        sources: Mapping[str, str],
        *,
        replicas: int = 0,
        replica_timeout_ms: int = 500,
    ) -> None:
        self.client = client
        self.replicas = replicas
        self.replica_timeout_ms = replica_timeout_ms
        #: Batches whose writes fewer than ``replicas`` replicas confirmed in time.
        self.unreplicated = 0
        self._warned_at = float("-inf")
        self._wait = (
            b"*3\r\n" + _bulk(b"WAIT") + _bulk(b"%d" % replicas) + _bulk(b"%d" % replica_timeout_ms)
            if replicas
            else b""
        )
        self._sources = dict(sources)
        pool = getattr(client, "connection_pool", None)
        self._pool: Any = pool if isinstance(pool, redis.ConnectionPool) else None
        encoder = self._pool.get_encoder() if self._pool is not None else None
        self._encoding: str = encoder.encoding if encoder is not None else "utf-8"
        self._errors: str = encoder.encoding_errors if encoder is not None else "strict"
        # The digest of what SCRIPT LOAD sends: the source in the client's encoding.
        self.shas = {
            name: hashlib.sha1(source.encode(self._encoding, self._errors)).hexdigest()
            for name, source in self._sources.items()
        }
        self._heads = {
            name: _bulk(b"EVALSHA") + _bulk(sha.encode("ascii")) for name, sha in self.shas.items()
        }
        self._key_lists: dict[tuple[str, ...], bytes] = {}

    def load(self) -> None:
        """Load every script into Redis's script cache."""
        for source in self._sources.values():
            self.client.script_load(source)

    def call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one script; its reply. Redis errors are raised as redis-py raises them."""
        return self.run([(name, keys, args)])[0]

    def run(self, calls: Sequence[ScriptCall], *, block: Block | None = None) -> list[Any]:
        """Run ``calls`` in one round trip, in order; their replies.

        With ``block`` (a LIST's key, seconds), the batch first blocks on that LIST (``BLPOP``,
        in the same write): Redis runs the calls as soon as something is pushed to it or the
        seconds pass, in the same pass of its event loop as the push, and the caller wakes once,
        to their replies. What was popped is dropped: the scripts see what happened.

        The first error reply of a script is raised (after every reply was read). When Redis lost
        its script cache, the scripts are loaded again and the calls that failed run again, in
        order (without blocking again). A connection lost mid-batch is made again and the whole
        batch sent again, as redis-py's pipelines do: every celery-pools script is safe to
        repeat, and a block sent again at worst waits its seconds once more.
        """
        replies = self._exchange(calls, block)
        missing = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        for reply in replies:
            if isinstance(reply, Exception) and not isinstance(reply, NoScriptError):
                raise reply
        if missing:
            self.load()
            again = self._exchange([calls[index] for index in missing])
            for index, reply in zip(missing, again, strict=True):
                if isinstance(reply, Exception):
                    raise reply
                replies[index] = reply
        return replies

    # -- the wire ---------------------------------------------------------------------------

    def _exchange(self, calls: Sequence[ScriptCall], block: Block | None = None) -> list[Any]:
        if self._pool is None or self.client.connection is not None:
            return self._through_client(calls, block)
        packed = b"".join([self._pack(name, keys, args) for name, keys, args in calls]) + self._wait
        count = len(calls) + (1 if self.replicas else 0)
        if block is not None:
            key, seconds = block
            blpop = (_bulk(b"BLPOP"), _bulk(self._encode(key)), _bulk(self._encode(seconds)))
            packed = b"*3\r\n" + b"".join(blpop) + packed
            count += 1
        pool = self._pool
        connection = _get_connection(pool)
        try:
            replies: list[Any] = connection.retry.call_with_retry(
                lambda: self._send_and_read(connection, packed, count),
                lambda _error: connection.disconnect(),
            )
        finally:
            pool.release(connection)
        return self._replicated(self._after_block(replies, block))

    @staticmethod
    def _after_block(replies: list[Any], block: Block | None) -> list[Any]:
        """The replies after the block's (if any). A block Redis refused (an ACL without
        ``BLPOP`` on the key, a wrong type) did not wait, and the calls ran at once: logged, as
        nothing else says so."""
        if block is None:
            return replies
        if isinstance(replies[0], Exception):
            logger.warning(
                "celery-pools: Redis refused to block on %s (%s); the calls behind it ran at once",
                block[0],
                replies[0],
            )
        return replies[1:]

    def _replicated(self, replies: list[Any]) -> list[Any]:
        """The scripts' replies, the ``WAIT`` reply (if any) checked and taken off."""
        if not self.replicas:
            return replies
        acknowledged = replies.pop()
        if isinstance(acknowledged, int) and acknowledged < self.replicas:
            self.unreplicated += 1
            now = time.monotonic()
            if now - self._warned_at >= _UNREPLICATED_WARNING_INTERVAL:
                self._warned_at = now
                logger.warning(
                    "celery-pools: %d of %d replicas confirmed pool writes within %d ms "
                    "(pools_redis_wait_replicas); a failover now may forget them "
                    "(%d such batches so far)",
                    acknowledged,
                    self.replicas,
                    self.replica_timeout_ms,
                    self.unreplicated,
                )
        return replies

    @staticmethod
    def _send_and_read(connection: Any, packed: bytes, count: int) -> list[Any]:
        replies: list[Any] = []
        try:
            connection.send_packed_command([packed])
            for _ in range(count):
                try:
                    replies.append(connection.read_response())
                except ResponseError as exc:  # read in full: the connection stays in step
                    replies.append(exc)
        except BaseException:
            # Cut short (a soft time limit, a timeout, an interrupt): replies may still be on
            # their way, and whoever takes this connection next must not read them.
            connection.disconnect()
            raise
        return replies

    def _through_client(self, calls: Sequence[ScriptCall], block: Block | None) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        if block is not None:
            pipe.blpop([block[0]], timeout=block[1])
        for name, keys, args in calls:
            pipe.evalsha(self.shas[name], len(keys), *keys, *args)
        if self.replicas:
            pipe.execute_command("WAIT", self.replicas, self.replica_timeout_ms)  # type: ignore[no-untyped-call]
        replies: list[Any] = pipe.execute(raise_on_error=False)
        return self._replicated(self._after_block(replies, block))

    def _pack(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> bytes:
        parts = [b"*%d\r\n" % (3 + len(keys) + len(args)), self._heads[name], self._keys_of(keys)]
        parts.extend([_bulk(self._encode(arg)) for arg in args])
        return b"".join(parts)

    def _keys_of(self, keys: Sequence[str]) -> bytes:
        """``numkeys`` and the keys, encoded (kept: the same lists come back call after call)."""
        kept = tuple(keys)
        packed = self._key_lists.get(kept)
        if packed is None:
            packed = _bulk(b"%d" % len(kept)) + b"".join([_bulk(self._encode(k)) for k in kept])
            if len(kept) <= _KEPT_LIST_MAX:
                if len(self._key_lists) >= _KEY_LISTS_KEPT:
                    self._key_lists.clear()
                self._key_lists[kept] = packed
        return packed

    def _encode(self, value: Any) -> bytes:
        # redis-py's Encoder rules for what the store sends: bytes as they are, str in the
        # client's encoding, int and float as numbers; bool and anything else is refused
        # (redis-py also takes memoryview, which the store never sends).
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):
            return value.encode(self._encoding, self._errors)
        if isinstance(value, bool):
            raise DataError(f"Invalid input of type 'bool' for a script argument: {value!r}")
        if isinstance(value, int):
            return b"%d" % value
        if isinstance(value, float):
            return repr(value).encode("ascii")
        raise DataError(
            f"Invalid input of type {type(value).__name__!r} for a script argument: {value!r}; "
            "allowed are bytes, str, int and float"
        )
