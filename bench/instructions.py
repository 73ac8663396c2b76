"""``python -m bench.instructions``: instructions per slot operation, client and Redis server.

Wall-clock figures on a shared 2-core machine move by tens of percent from run to run; instruction
counts under ``valgrind --tool=callgrind`` do not. For each operation this runs it ``N`` times and
zero times against a private ``redis-server``, once with the client under callgrind and once with
the server under callgrind, and prints the difference divided by ``N``:

- ``pair``: an acquire and a release in a countdown pool with free slots;
- ``cycle``: one hand-off: an acquire that finds the pool full, a park, the holder's release
  with its hand-off, and the parked task's claim.

Run it from a checkout to measure that checkout (the working directory comes first on the path).
Needs valgrind (Debian's ``valgrind`` package).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from celery_pools import PoolManager
from celery_pools.local_redis import find_redis_server, free_port

OPERATIONS = ("pair", "cycle")
_ENTRY = json.dumps({"info": {"instance": "inst1"}, "msg": {}})


def run(url: str, operation: str, count: int) -> None:
    """Set up two pools at ``url``, then do ``operation`` ``count`` times."""
    manager = PoolManager.from_url(url, key_prefix="instructions")
    manager.create("api", limit=1000, timeout=60)
    manager.assign("inst", "api")
    manager.create("one", limit=1, timeout=60, wait="handoff")
    manager.assign("inst1", "one")
    store = manager.store
    store.acquire("inst", "warm", lease=60)
    store.release("warm", "api")
    store.acquire("inst1", "holder", lease=60)
    holder = "holder"
    info = {"task_name": "t", "instance": "inst", "hostname": "h", "pid": 1}
    for index in range(count):
        if operation == "pair":
            store.acquire("inst", f"t{index}", lease=60, info=info)
            store.release(f"t{index}", "api")
            continue
        token = f"h{index}"
        full = store.acquire("inst1", token, lease=60)
        store.park(token, pool="one", first=full.first, entry=_ENTRY)
        (handoff,) = store.release(holder, "one", parked_likely=True).handoffs
        store.acquire("inst1", token, lease=60, handoff=handoff.handoff_id)
        holder = token


def _collected(log: str) -> int:
    for line in log.splitlines():
        if "Collected :" in line:
            return int(line.rsplit(":", 1)[1])
    raise RuntimeError(f"callgrind printed no total:\n{log}")


def _callgrind(command: list[str], out: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command]


def _server(port: int, directory: Path, *, traced: bool) -> subprocess.Popen[str]:
    command = [
        find_redis_server(),
        "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(directory),
    ]  # fmt: skip
    if traced:
        command = _callgrind(command, directory / "server.out")
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 60
    while True:
        try:
            client.ping()
            return server
        except redis.ConnectionError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.1)


def measure(operation: str, count: int, *, server_side: bool) -> int:
    """Instructions of one side (client or server) for ``count`` operations, set-up included."""
    with tempfile.TemporaryDirectory(prefix="cp-instructions-") as name:
        directory = Path(name)
        port = free_port()
        server = _server(port, directory, traced=server_side)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            command = [
                sys.executable,
                "-m",
                "bench.instructions",
                "--run",
                operation,
                str(count),
                url,
            ]
            env = {**os.environ, "PYTHONPATH": os.getcwd()}
            if server_side:
                subprocess.run(command, check=True, env=env)
            else:
                done = subprocess.run(
                    _callgrind(command, directory / "client.out"),
                    check=True, env=env, capture_output=True, text=True,
                )  # fmt: skip
                return _collected(done.stderr)
        finally:
            redis.Redis(port=port).shutdown(nosave=True)
            log, _ = server.communicate(timeout=120)
        return _collected(log)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--iterations", type=int, default=300, help="operations measured")
    parser.add_argument(
        "--run", nargs=3, metavar=("OPERATION", "COUNT", "URL"), help=argparse.SUPPRESS
    )
    options = parser.parse_args()
    if options.run:
        operation, count, url = options.run
        run(url, operation, int(count))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is needed: apt-get install valgrind", file=sys.stderr)
        return 1
    count = options.iterations
    for operation in OPERATIONS:
        sides = []
        for server_side in (False, True):
            spent = measure(operation, count, server_side=server_side)
            base = measure(operation, 0, server_side=server_side)
            sides.append((spent - base) / count)
        client, server = sides
        print(
            f"{operation}: client {client:,.0f}, server {server:,.0f}, "
            f"together {client + server:,.0f} instructions per operation"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
