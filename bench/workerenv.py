"""The environment variables by which the benchmark's driver configures its worker subprocesses
(``celery -A bench.benchapp worker`` and ``celery -A bench.peers.app worker``)."""

from __future__ import annotations

__all__ = ["ENV", "ETA_TASK_LIMIT_ENV", "LEASE_ENV", "STANDBY_MAX_ENV"]

#: Setting name -> variable, for the URLs and the default queue every benchmark app needs.
ENV = {
    "broker": "BENCH_BROKER_URL",
    "backend": "BENCH_BACKEND_URL",
    "pools_url": "BENCH_POOLS_URL",
    "record_url": "BENCH_RECORD_URL",
    "queue": "BENCH_QUEUE",
}
#: The workers' ``worker_eta_task_limit``, when set (see :func:`bench.modes.worker_settings`).
ETA_TASK_LIMIT_ENV = "BENCH_ETA_TASK_LIMIT"
#: The workers' ``pools_standby_max``, when set (see :func:`bench.modes.worker_settings`).
STANDBY_MAX_ENV = "BENCH_STANDBY_MAX"
#: The peers' lease in seconds: every limiter's expiry and celery-pools' ``pools_lease_seconds``.
LEASE_ENV = "BENCH_PEERS_LEASE"
