"""Lua script calls with little work on the client.

Every pooled task runs two or three of celery-pools' scripts (acquire, release; in a hand-off pool
also the grant at publication), each with some twenty keys and arguments. Through redis-py's
generic command path every one of those goes through several layers of encoding, and a script
call cost its caller several times a plain ``PING``: most of the CPU a pool added to a short task.

:class:`ScriptCaller` packs the ``EVALSHA`` commands itself (the keys, which repeat from call to
call, are encoded once and kept), writes a batch of them in one write on one of the client's pooled
connections, under the client's retry policy, and reads the replies with the connection's own
parser, so they decode exactly as redis-py's would. A script Redis no longer knows (after a restart)
is loaded again and the calls that failed run again, in order.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from redis.exceptions import DataError, NoScriptError, ResponseError

__all__ = ["ScriptCall", "ScriptCaller"]

#: One call: the script's name, its keys and its arguments.
ScriptCall = tuple[str, Sequence[str], Sequence[Any]]

# Encoded key lists kept per caller; a process sees a few per pool and instance.
_KEYS_KEPT = 4096


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


class ScriptCaller:
    """Runs the scripts of ``sources`` (name -> Lua source) on ``client``'s Redis.

    Thread-safe: one batch at a time uses the connection the caller keeps; a batch sent
    meanwhile takes a connection of the client's pool. A client bound to a single connection
    (``single_connection_client=True``) goes through redis-py's own path. In a forked child, call
    :meth:`after_fork` before anything else (the store does).
    """

    def __init__(self, client: redis.Redis, sources: Mapping[str, str]) -> None:
        self.client = client
        self._sources = dict(sources)
        self.shas = {
            name: hashlib.sha1(source.encode("utf-8")).hexdigest()
            for name, source in self._sources.items()
        }
        self._heads = {
            name: _bulk(b"EVALSHA") + _bulk(sha.encode("ascii")) for name, sha in self.shas.items()
        }
        encoder = client.connection_pool.get_encoder()
        self._encoding: str = encoder.encoding
        self._errors: str = encoder.encoding_errors
        self._keys: dict[tuple[str, ...], bytes] = {}
        self._kept: Any = None  # the connection kept for this caller, taken on first use
        self._kept_lock = threading.Lock()

    def after_fork(self) -> None:
        """In a forked child: forget the connection kept in the parent (the parent still uses
        its socket) and the lock a parent's thread may have held."""
        self._kept = None
        self._kept_lock = threading.Lock()

    def load(self) -> None:
        """Load every script into Redis's script cache."""
        for source in self._sources.values():
            self.client.script_load(source)

    def call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one script; its reply. Redis errors are raised as redis-py raises them."""
        return self.run([(name, keys, args)])[0]

    def run(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Run ``calls`` in one round trip, in order; their replies.

        The first error reply of a script is raised (after every reply was read). When Redis lost
        its script cache, the scripts are loaded again and the calls that failed run again, in
        order: every celery-pools script is safe to repeat.
        """
        replies = self._exchange(calls)
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

    def _exchange(self, calls: Sequence[ScriptCall]) -> list[Any]:
        if self.client.connection is not None:  # a single-connection client: redis-py's path
            return self._through_client(calls)
        packed = b"".join([self._pack(name, keys, args) for name, keys, args in calls])
        if self._kept_lock.acquire(blocking=False):
            try:
                if self._kept is None:
                    self._kept = self.client.connection_pool.get_connection()
                return self._send_with_retry(self._kept, packed, len(calls))
            finally:
                self._kept_lock.release()
        pool = self.client.connection_pool  # another thread is using the kept one
        connection: Any = pool.get_connection()
        try:
            return self._send_with_retry(connection, packed, len(calls))
        finally:
            pool.release(connection)

    def _send_with_retry(self, connection: Any, packed: bytes, count: int) -> list[Any]:
        replies: list[Any] = connection.retry.call_with_retry(
            lambda: self._send_and_read(connection, packed, count),
            lambda _error: connection.disconnect(),
        )
        return replies

    @staticmethod
    def _send_and_read(connection: Any, packed: bytes, count: int) -> list[Any]:
        connection.send_packed_command([packed])
        replies: list[Any] = []
        for _ in range(count):
            try:
                replies.append(connection.read_response())
            except ResponseError as exc:  # read in full: the connection stays in step
                replies.append(exc)
        return replies

    def _through_client(self, calls: Sequence[ScriptCall]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for name, keys, args in calls:
            pipe.evalsha(self.shas[name], len(keys), *keys, *args)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        return replies

    def _pack(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> bytes:
        parts = [b"*%d\r\n" % (3 + len(keys) + len(args)), self._heads[name], self._keys_of(keys)]
        parts.extend([_bulk(self._encode(arg)) for arg in args])
        return b"".join(parts)

    def _keys_of(self, keys: Sequence[str]) -> bytes:
        """``numkeys`` and the keys, encoded (kept: the same lists come back call after call)."""
        kept = tuple(keys)
        packed = self._keys.get(kept)
        if packed is None:
            if len(self._keys) >= _KEYS_KEPT:
                self._keys.clear()
            packed = _bulk(b"%d" % len(kept)) + b"".join([_bulk(self._encode(k)) for k in kept])
            self._keys[kept] = packed
        return packed

    def _encode(self, value: Any) -> bytes:
        # The rules of redis-py's Encoder: bytes as they are, str in the client's encoding,
        # int and float by repr; bool and anything else is refused.
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
