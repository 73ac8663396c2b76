"""What a worker does when it starts: declared pools, and nothing reverted by a restart."""

from __future__ import annotations

import pytest

from celery_pools import PoolConfigError, PoolsSettings
from tests.workerapp import INSTANCE


def test_declared_pools_are_created_when_missing_and_never_reverted(env, run_worker):
    declare = {"api": {"limit": 2, "timeout": 12, "wait": "handoff", "instances": [INSTANCE]}}
    app = env.app(pools_declare=declare)
    manager = env.manager()
    assert manager.list() == []
    with run_worker(app, concurrency=1):
        pool = manager.get("api")
        assert (pool.limit, pool.timeout, pool.wait) == (2, 12.0, "handoff")
        assert manager.pool_of(INSTANCE) == "api"
    # Changed at run time, then a worker restarts: Redis stays the source of truth.
    manager.update("api", limit=7)
    manager.create("other", limit=1)
    manager.assign(INSTANCE, "other")
    with run_worker(env.app(pools_declare=declare), concurrency=1):
        assert manager.get("api").limit == 7
        assert manager.pool_of(INSTANCE) == "other"


def test_a_bad_declared_wait_mode_is_refused_naming_the_setting(env):
    app = env.app(pools_declare={"api": {"limit": 1, "wait": "later"}})
    with pytest.raises(PoolConfigError, match=r"invalid pools_declare\['api'\]\.wait 'later'"):
        PoolsSettings.from_app(app)
