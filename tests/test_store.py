"""The Redis store and PoolManager against a real Redis: atomic operations and their edges."""

from __future__ import annotations

import pytest

from celery_pools import PoolConfigError, PoolExistsError, PoolManager, PoolNotFoundError
from celery_pools.producer import publisher_for
from celery_pools.store import AcquireStatus, HolderProcess
from tests.support.polling import wait_until


@pytest.fixture
def pools(env) -> PoolManager:
    return env.manager()


def _snapshot(pools: PoolManager) -> dict[str, str]:
    client = pools.store.client
    return {key: client.type(key) for key in client.scan_iter(f"{{{pools.store.keys.prefix}}}:*")}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p.create("api", limit=0), "invalid limit 0"),
        (lambda p: p.create("api", limit=1, timeout=301), "invalid timeout 301"),
        (lambda p: p.create("", limit=1), "invalid name ''"),
        (lambda p: p.update("api", limit=0), "invalid limit 0"),
        (lambda p: p.assign("", "api"), "invalid instance ''"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(pools, call, message):
    before = _snapshot(pools)
    with pytest.raises(PoolConfigError, match=message):
        call(pools)
    assert _snapshot(pools) == before


def test_assigning_to_a_missing_pool_is_refused_and_writes_nothing(pools):
    with pytest.raises(PoolNotFoundError, match="no pool named 'ghost' exists"):
        pools.assign("inst", "ghost")
    assert pools.associations() == {}


def test_create_update_get_list(pools):
    pools.create("api", limit=3, timeout=10)
    with pytest.raises(PoolExistsError):
        pools.create("api", limit=5)
    assert pools.ensure("api", limit=99) is False
    assert pools.get("api").limit == 3
    assert pools.update("api", limit=4).limit == 4
    assert pools.update("api", timeout=12.5).timeout == 12.5
    assert [p.name for p in pools.list()] == ["api"]
    with pytest.raises(PoolNotFoundError):
        pools.update("nope", limit=1)


def test_an_instance_has_one_pool_and_a_pool_many_instances(pools):
    pools.create("a", limit=1)
    pools.create("b", limit=1)
    pools.assign("x", "a")
    pools.assign("y", "a")
    assert pools.status("a").instances == ["x", "y"]
    assert pools.assign("x", "b") == "a"
    assert pools.status("a").instances == ["y"]
    assert pools.status("b").instances == ["x"]
    assert pools.unassign("x") == "b"
    assert pools.unassign("x") is None
    assert pools.associations() == {"y": "a"}


def test_delete_removes_the_pool_and_its_associations(pools):
    pools.create("a", limit=1)
    pools.assign("x", "a")
    pools.store.acquire("x", "t1", lease=30)
    result = pools.delete("a")
    assert (result.instances, result.holders) == (1, 1)
    assert pools.associations() == {}
    assert pools.store.held_pools(["t1"]) == {}
    assert _snapshot(pools).keys() <= {pools.store.keys.held, pools.store.keys.instances}


def test_acquire_is_reentrant_for_the_same_token_and_release_is_idempotent(pools):
    pools.create("a", limit=2)
    pools.assign("x", "a")
    store = pools.store
    first = store.acquire("x", "tok", lease=30)
    again = store.acquire("x", "tok", lease=30)
    assert (first.status, first.in_use, first.reentrant) == (AcquireStatus.OK, 1, False)
    assert (again.status, again.in_use, again.reentrant) == (AcquireStatus.OK, 1, True)
    assert store.release("tok", "a").released is True
    assert store.release("tok", "a").released is False
    assert pools.status("a").in_use == 0


def test_release_only_frees_the_callers_own_slot(pools):
    pools.create("a", limit=1)
    pools.assign("x", "a")
    pools.store.acquire("x", "mine", lease=30)
    assert pools.store.release("someone-else", "a").released is False
    assert [h.task_id for h in pools.status("a").holders] == ["mine"]


def test_full_pool_registers_waiter_and_times_out_on_the_redis_clock(pools):
    pools.create("a", limit=1, timeout=0)
    pools.assign("x", "a")
    store = pools.store
    store.acquire("x", "holder", lease=30)
    now = store.ping()
    timed_out = store.acquire("x", "late", lease=30, first=now - 1)
    assert timed_out.status is AcquireStatus.TIMEOUT
    pools.update("a", timeout=60)
    full = store.acquire("x", "late", lease=30, first=now)
    assert full.status is AcquireStatus.FULL
    assert full.deadline == pytest.approx(now + 60, abs=0.01)
    assert [w.task_id for w in pools.status("a").waiters] == ["late"]


def test_lapsed_lease_is_reclaimed_and_reported(pools):
    pools.create("a", limit=1)
    pools.assign("x", "a")
    store = pools.store
    store.acquire("x", "dead", lease=0.05, info={"task_name": "t", "hostname": "h", "pid": 7})
    # Wait on the Redis clock, not ours: poll until the lease has lapsed there.
    deadline = store.ping() + 0.05
    while store.ping() <= deadline:
        pass
    taken = store.acquire("x", "alive", lease=30)
    assert taken.status is AcquireStatus.OK
    assert [(r.task_id, r.task_name, r.hostname, r.pid) for r in taken.reclaimed] == [
        ("dead", "t", "h", 7)
    ]
    assert store.held_pools(["dead", "alive"]) == {"alive": "a"}


def test_renew_extends_only_slots_still_held(pools):
    pools.create("a", limit=2)
    pools.assign("x", "a")
    store = pools.store
    store.acquire("x", "held", lease=1)
    before = pools.status("a").holders[0].lease_expires
    assert store.renew({"held": "a", "gone": "a"}, lease=60) == 1
    assert pools.status("a").holders[0].lease_expires > before + 50
    assert pools.status("a").in_use == 1


def test_holder_processes_names_the_process_each_slot_was_taken_in(pools):
    pools.create("a", limit=2)
    pools.assign("x", "a")
    store = pools.store
    store.acquire("x", "here", lease=30, info={"hostname": "w1@h", "pid": 42})
    store.acquire("x", "started", lease=30, info={"hostname": "w1@h", "pid": 43, "started": 9})
    store.acquire("x", "unnamed", lease=30)
    held = {"here": "a", "started": "a", "unnamed": "a", "gone": "a"}
    assert store.holder_processes(held) == {
        "here": HolderProcess("w1@h", 42, None),
        "started": HolderProcess("w1@h", 43, 9),
    }


def test_the_same_pid_started_again_asks_as_a_copy(pools):
    """One execution per slot: a process of the holder's hostname, pid and thread that started
    at another time (a restarted container counts its pids the same way again) is a copy, and
    waits; the holder's own process asking again keeps its slot."""
    pools.create("a", limit=2)
    pools.assign("x", "a")
    store = pools.store
    holder = {"hostname": "w1@h", "pid": 42, "thread": "1", "started": 1000}
    assert store.acquire("x", "t", lease=30, info=holder).status is AcquireStatus.OK
    again = store.acquire("x", "t", lease=30, info={**holder, "started": 2000})
    assert (again.status, again.reason) == (AcquireStatus.FULL, "copy")
    assert store.acquire("x", "t", lease=30, info=holder).status is AcquireStatus.OK


def test_a_release_gives_back_only_the_slot_its_own_execution_holds(pools):
    """The lease of a running execution lapsed (its worker's main process could not renew it)
    and a copy of its task took the slot: the first execution's release, as its body ends,
    leaves the copy's slot alone (else a third call would start beside the copy's)."""
    pools.create("a", limit=1)
    pools.assign("x", "a")
    store = pools.store
    first = {"hostname": "w1@h", "pid": 42, "thread": "1", "started": 1000}
    copy = {**first, "hostname": "w2@h"}
    assert store.acquire("x", "t", lease=0.05, info=first).status is AcquireStatus.OK
    wait_until(
        lambda: store.acquire("x", "t", lease=30, info=copy).status is AcquireStatus.OK,
        10,
        message="the copy never took the lapsed slot",
    )
    left = store.release("t", "a", execution=first)
    assert (left.released, left.elsewhere) == (False, True)
    status = pools.status("a")
    assert [(h.task_id, h.hostname) for h in status.holders] == [("t", "w2@h")]
    assert store.acquire("x", "third", lease=30).status is AcquireStatus.FULL
    given = store.release("t", "a", execution=copy)
    assert (given.released, given.elsewhere) == (True, False)
    assert store.acquire("x", "third", lease=30).status is AcquireStatus.OK
    # Named by nobody (an operator's forced release), it goes whoever holds it.
    assert store.release("third", "a").released


def test_a_worker_renews_thousands_of_leases_in_one_call(pools):
    """One renewal names every slot a worker's running tasks hold: a worker of thousands of
    green threads holds thousands."""
    pools.create("a", limit=2)
    pools.assign("x", "a")
    store = pools.store
    store.acquire("x", "t1", lease=30)
    store.acquire("x", "t2", lease=30)
    held = {f"gone-{index}": "a" for index in range(9000)} | {"t1": "a", "t2": "a"}
    assert store.renew(held, lease=60) == 2


def test_a_stale_instance_cache_is_corrected_by_the_script(env):
    writer, reader = env.manager(), env.manager()
    writer.create("a", limit=1)
    writer.create("b", limit=1)
    writer.assign("x", "a")
    assert reader.store.acquire("x", "t1", lease=30).pool == "a"
    writer.assign("x", "b")
    # reader still believes x -> a; the script answers MOVED and the acquire lands in b.
    assert reader.store.acquire("x", "t2", lease=30).pool == "b"


def test_pipelined_scripts_survive_a_redis_that_lost_its_script_cache(private_env):
    """Park, release and hand-off run as EVALSHA in one round trip; after SCRIPT FLUSH (what a
    restart does) they load the scripts again and every call still happens exactly once.

    On a Redis of its own: another client loading handoff.lua between the release's NOSCRIPT and
    the hand-off would run the hand-off first (pipelined calls are not atomic), which leaves the
    slot to the reaper's next round, as :meth:`RedisPoolStore._pipeline` says; and SCRIPT FLUSH
    would empty the script cache of every other test's client."""
    pools = private_env.manager()
    pools.create("api", limit=1, timeout=60, wait="handoff")
    pools.assign("inst", "api")
    store = pools.store
    assert store.acquire("inst", "holder", lease=30).status is AcquireStatus.OK
    store.client.script_flush()
    parking = publisher_for(store).park("inst", "parked", entry=lambda: '{"info": {}}')
    assert (parking.parked, parking.position, parking.handoffs) == (True, 1, ())
    store.client.script_flush()
    release = store.release("holder", "api", parked_likely=True)
    assert release.released
    assert [handoff.token for handoff in release.handoffs] == ["parked"]
    status = pools.status("api")
    assert (status.in_use, status.waiting) == (1, 0)


def test_a_countdown_waiter_is_told_when_its_turn_is_likely(env):
    """retry_ms of a countdown waiter: its place among the waiters times the pool's moving-average
    hold time (kept by release.lua) over the limit; 0 while no hold was measured."""
    manager = env.manager()
    manager.create("api", limit=2)
    manager.assign("inst", "api")
    store = manager.store
    assert store.acquire("inst", "a", lease=30).status is AcquireStatus.OK
    assert store.acquire("inst", "b", lease=30).status is AcquireStatus.OK
    unknown = store.acquire("inst", "c", lease=30)
    assert (unknown.status, unknown.reason, unknown.retry_after) == (
        AcquireStatus.FULL,
        "countdown",
        0.0,
    )
    store.release("a", "api")
    held = float(store.client.hget(store.keys.pool("api").stats, "hold_avg_ms"))
    assert held >= 0
    assert store.acquire("inst", "a2", lease=30).status is AcquireStatus.OK
    store.client.hset(store.keys.pool("api").stats, "hold_avg_ms", "100")
    first = store.acquire("inst", "c", lease=30, first=unknown.first)
    second = store.acquire("inst", "d", lease=30)
    assert (first.reason, second.reason) == ("countdown", "countdown")
    # c is first among the waiters, d second: slots free about every 100 / 2 ms.
    assert (first.retry_after, second.retry_after) == (0.05, 0.1)
