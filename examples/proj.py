"""An integration project whose tasks call an API that allows only a few requests at once.

Run a worker with ``celery -A examples.proj worker``; ``examples/demo.py`` does it all for you.
Configuration comes from the environment:

- ``CELERY_BROKER_URL`` (default ``redis://localhost:6379/0``)
- ``CELERY_RESULT_BACKEND`` (default: the broker)
- ``POOLS_REDIS_URL`` (default: the broker, when it is Redis)
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

from celery_pools import PooledTask

BROKER = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")

app = Celery("proj", broker=BROKER, backend=os.environ.get("CELERY_RESULT_BACKEND", BROKER))
app.conf.update(
    pools_redis_url=os.environ.get("POOLS_REDIS_URL") or None,
    # Created at worker start when missing; afterwards Redis is the source of truth, so a
    # resize made with `celery -A examples.proj pools update` is never reverted by a restart.
    pools_declare={"netsuite": {"limit": 3, "timeout": 60, "instances": ["netsuite-prod"]}},
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    broker_connection_retry_on_startup=True,
)

# The demo watches how many calls are in flight through these keys, kept apart from the pool.
_metrics = redis.Redis.from_url(os.environ.get("POOLS_REDIS_URL") or BROKER, decode_responses=True)
IN_FLIGHT_KEY = "demo:in_flight"
SAMPLES_KEY = "demo:in_flight_samples"


@app.task(base=PooledTask, connector_instance="netsuite-prod")
def push_order(order_id: int) -> str:
    """Pretend to call NetSuite: at most 3 of these run at once across every worker."""
    _metrics.rpush(SAMPLES_KEY, _metrics.incr(IN_FLIGHT_KEY))
    try:
        time.sleep(0.3)
    finally:
        _metrics.decr(IN_FLIGHT_KEY)
    return f"order {order_id} pushed"
