"""A fake external API with a concurrency cap, which counts its own requests in flight.

It stands for the system a pool protects (an API that allows N simultaneous requests) and is
the tests' independent witness of the limit: it knows nothing of celery-pools. Like a real
server it keeps serving a request whose client has died (it sleeps the call's full length
whatever happens to the connection), counts that request as in flight until then, answers 429
to a request that arrives while ``cap`` are in flight, and records who made every call (task
id and process id, sent by the client).

A call is ``GET /call?ms=<duration>&task=<task id>&pid=<client pid>``; the answer is 200 with
``ok``, or 429. :func:`call_api` makes one from a client process. ``GET /stats`` answers what it
counted, as JSON (:meth:`FakeAPI.stats`), for a test whose API runs in a process of its own (on
another "host": ``python -m bench.fake_api --cap 3 --host 10.0.0.2 --port 8080``).

The tests use it as their witness (the chaos test, the prefork limit tests) and so does the
benchmark's comparison of peers (:mod:`bench.peers`).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

__all__ = ["Call", "FakeAPI", "call_api"]


@dataclass
class Call:
    """One request the API received."""

    task: str
    pid: int
    started: float
    ms: int = 0
    ended: float | None = None
    refused: bool = False

    def remaining(self) -> float:
        """Seconds until the API ends serving it (monotonic clock)."""
        return self.started + self.ms / 1000 - time.monotonic()


@dataclass
class _Record:
    cap: int
    in_flight: dict[int, Call] = field(default_factory=dict)  # request number -> call
    calls: list[Call] = field(default_factory=list)
    max_in_flight: int = 0
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Server(ThreadingHTTPServer):
    # Many worker processes may connect in the same instant (an unsafe limiter lets them): a
    # listen backlog of 5 would make the kernel drop connections, not the API refuse calls.
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], handler: Any) -> None:
        super().__init__(address, handler)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client that died (SIGKILLed) with its connection kept open
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """End every connection still open (kept alive by its client), and its thread."""
        with self.connections_lock:
            for connection in self.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            self.connections.clear()


class FakeAPI:
    """The API on a free loopback port, a thread per connection: ``with FakeAPI(4) as api: ...``.

    A connection stays open for the client's next call unless the client says "close" (as
    urllib does); :meth:`stop` ends the connections still open."""

    def __init__(self, cap: int, host: str = "127.0.0.1", port: int = 0) -> None:
        self._record = _Record(cap)
        record = self._record
        numbers = iter(range(1, 1 << 62))

        api = self

        class Handler(BaseHTTPRequestHandler):
            # Keeps a connection open for the client's next call unless it says "close"; the
            # answer's two writes (head, body) go out at once, not 40 ms apart (Nagle's
            # algorithm waiting for the client's delayed ACK).
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def setup(self) -> None:
                super().setup()
                with server.connections_lock:
                    server.connections.add(self.connection)

            def finish(self) -> None:
                with server.connections_lock:
                    server.connections.discard(self.connection)
                super().finish()

            def do_GET(self) -> None:
                if urlparse(self.path).path == "/stats":
                    body = json.dumps(api.stats()).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                query = parse_qs(urlparse(self.path).query)
                call = Call(
                    task=query.get("task", [""])[0],
                    pid=int(query.get("pid", ["0"])[0]),
                    started=time.monotonic(),
                    ms=int(query.get("ms", ["0"])[0]),
                )
                with record.lock:
                    number = next(numbers)
                    record.calls.append(call)
                    call.refused = len(record.in_flight) >= record.cap
                    if call.refused:
                        record.refused += 1
                    else:
                        record.in_flight[number] = call
                        record.max_in_flight = max(record.max_in_flight, len(record.in_flight))
                if not call.refused:
                    # Served to the end whether or not the client is still there.
                    time.sleep(call.ms / 1000)
                    with record.lock:
                        del record.in_flight[number]
                call.ended = time.monotonic()
                try:
                    self.send_response(429 if call.refused else 200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"no" if call.refused else b"ok")
                except OSError:
                    pass  # the client died: a real server logs a broken pipe and goes on

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = server = _Server((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The URL of the call endpoint."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/call"

    def start(self) -> FakeAPI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()

    def __enter__(self) -> FakeAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def max_in_flight(self) -> int:
        """The most requests it ever served at once."""
        with self._record.lock:
            return self._record.max_in_flight

    @property
    def refused(self) -> int:
        """How many requests it answered 429."""
        with self._record.lock:
            return self._record.refused

    def in_flight(self) -> list[Call]:
        """The requests it is serving now."""
        with self._record.lock:
            return list(self._record.in_flight.values())

    def calls(self) -> list[Call]:
        """Every request it received, in order of arrival."""
        with self._record.lock:
            return list(self._record.calls)

    def stats(self) -> dict[str, Any]:
        """What ``GET /stats`` answers: the cap, the most served at once, the 429s, how many
        are in flight now, and every call's task id in order of arrival."""
        with self._record.lock:
            return {
                "cap": self._record.cap,
                "max_in_flight": self._record.max_in_flight,
                "refused": self._record.refused,
                "in_flight": len(self._record.in_flight),
                "tasks": [call.task for call in self._record.calls],
            }


class _Kept(threading.local):
    """This thread's kept-alive connection: (process id, host, port) and the connection."""

    key: tuple[int, str, int] | None = None
    connection: http.client.HTTPConnection | None = None


_KEPT = _Kept()
#: What a kept connection the API has closed since its last call raises when used again.
_CLOSED_BY_SERVER = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def call_api(
    url: str, ms: int, task: str, timeout: float = 60.0, *, keep_alive: bool = False
) -> int:
    """Make one call of ``ms`` milliseconds to the API at ``url`` on behalf of task ``task``, as
    this process; return the HTTP status (200, or 429 when the API was at its cap).

    With ``keep_alive`` the call goes over this thread's open connection to the API (made on
    its first call), as an integration's HTTP session does; otherwise over a new connection,
    closed after it. A kept connection the API closed while idle is opened again for the call,
    once; any other failure closes it and raises. (An API killed while it serves the call looks
    the same as one that closed an idle connection, so the call would be sent again: the tests,
    which kill APIs, keep no connection; the benchmark, which never does, keeps them.)"""
    query = urllib.parse.urlencode({"ms": ms, "task": task, "pid": os.getpid()})
    if keep_alive:
        return _call_kept(url, query, timeout)
    try:
        with urllib.request.urlopen(f"{url}?{query}", timeout=timeout) as answer:
            answer.read()
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        if exc.code != 429:
            raise
        return 429


def _call_kept(url: str, query: str, timeout: float) -> int:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    key = (os.getpid(), host, port)  # a forked child opens its own
    reused = _KEPT.key == key and _KEPT.connection is not None
    if not reused:
        _drop_kept()
        _KEPT.key, _KEPT.connection = key, http.client.HTTPConnection(host, port, timeout=timeout)
    connection = _KEPT.connection
    assert connection is not None
    if connection.sock is not None:
        connection.sock.settimeout(timeout)
    try:
        connection.request("GET", f"{parts.path}?{query}")
        answer = connection.getresponse()
        answer.read()
    except _CLOSED_BY_SERVER:
        _drop_kept()
        if not reused:
            raise
        # The API closed the connection while it was idle (it stopped, or another API took its
        # port): it never read this call. Send it once more, on a new connection.
        return _call_kept(url, query, timeout)
    except Exception:
        _drop_kept()
        raise
    return int(answer.status)


def _drop_kept() -> None:
    if _KEPT.connection is not None and _KEPT.key is not None and _KEPT.key[0] == os.getpid():
        _KEPT.connection.close()  # a connection inherited from the parent is the parent's
    _KEPT.key = _KEPT.connection = None


def main() -> None:
    """Serve the API until SIGTERM or Ctrl-C; print its URL once it listens."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cap", type=int, required=True, help="calls served at once at most")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free one)")
    args = parser.parse_args()
    api = FakeAPI(args.cap, args.host, args.port)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with api:
        print(api.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stopped.wait()


if __name__ == "__main__":
    main()
