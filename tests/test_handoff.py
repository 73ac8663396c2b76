"""Hand-off waiting: parked tasks get freed slots directly, oldest first, and nothing is lost."""

from __future__ import annotations

import json
import logging
import time

import pytest

from celery_pools import PoolClearedError, PoolDeletedError, PoolTimeoutError, signals
from celery_pools.handoff import Dispatcher
from celery_pools.producer import publisher_for
from celery_pools.store import RATE_PARKED_MAX, AcquireStatus, Effects, RedisPoolStore
from tests.support.polling import wait_until
from tests.workerapp import INSTANCE


def _pool(env, limit, timeout=30.0):
    manager = env.manager()
    manager.create("api", limit=limit, timeout=timeout, wait="handoff")
    manager.assign(INSTANCE, "api")
    return manager


def _started(env, label):
    return label in {name for name, _ in env.probe().starts()}


def _park_in_order(env, app, manager, labels, seconds=0.0, *, send=None):
    """Send tasks one at a time, each parked before the next is sent: a known FIFO order.

    ``send(label, seconds)`` sends one; by default ``delay``, which parks at publication.
    """
    send = send or app.tasks["t.hold"].delay
    results = []
    for index, label in enumerate(labels, start=1):
        results.append(send(label, seconds))
        wait_until(
            lambda index=index: manager.status("api").waiting == index,
            15,
            message=f"{label} never parked",
        )
    return results


def _errbacks(env):
    return env.probe().client.lrange(f"probe:{env.name}:errbacks", 0, -1)


@pytest.mark.parametrize("parked_by", ["producer", "worker"])
def test_parked_tasks_start_in_fifo_order_and_never_exceed_the_limit(env, run_worker, parked_by):
    """``delay`` parks at publication; ``send_task`` (no PooledTask in the sender) publishes, and
    the worker that takes the message parks it."""
    manager = _pool(env, limit=1)
    app = env.app()
    if parked_by == "producer":
        send, state = None, "PENDING"
    else:
        send, state = (lambda label, s: app.send_task("t.hold", (label, s))), "RETRY"
    with run_worker(app, concurrency=6):
        blocker = app.tasks["t.hold"].delay("blocker", 3.0)
        wait_until(lambda: _started(env, "blocker"), 10, message="blocker never started")
        labels = [f"w{i}" for i in range(6)]
        waiters = _park_in_order(env, app, manager, labels, seconds=0.05, send=send)
        # A task parked by a worker is stored as RETRY just after it parked: wait for the store.
        wait_until(
            lambda: [w.state for w in waiters] == [state] * 6,
            10,
            message=f"parked tasks never all read {state}",
        )
        assert not blocker.ready()  # so none of them can have been handed its slot yet
        blocker.get(timeout=30)
        assert [w.get(timeout=30) for w in waiters] == labels
    starts = [label for label, _ in env.probe().starts()]
    assert starts == ["blocker", *labels]
    assert env.probe().max_concurrency() == 1
    (metrics,) = manager.store.metrics(["api"])
    assert (metrics.acquired_immediate, metrics.acquired_waited) == (1, 6)


def test_slot_acquired_says_when_the_pool_handed_a_parked_task_its_slot(env, run_worker):
    """The signal's ``granted`` is the hand-off at the holder's release: after the holder's body
    ended and the task had waited, at or before its claim."""
    _pool(env, limit=1)
    app = env.app()
    seen: dict[str, dict] = {}

    def acquired(task_id=None, **kwargs):
        seen[task_id] = kwargs

    signals.slot_acquired.connect(acquired, weak=False)
    try:
        with run_worker(app, concurrency=2):
            blocker = app.tasks["t.hold"].delay("blocker", 1.0)
            wait_until(lambda: _started(env, "blocker"), 10, message="blocker never started")
            waiter = app.tasks["t.hold"].delay("waiter", 0.0)
            assert [blocker.get(timeout=30), waiter.get(timeout=30)] == ["blocker", "waiter"]
    finally:
        signals.slot_acquired.disconnect(acquired)
    (blocker_end,) = [at for _, label, at, _ in env.probe().events() if label == "blocker"][1:]
    handed = seen[waiter.id]
    claimed = handed["first"] + handed["waited"]
    assert handed["granted"] >= blocker_end - 0.002  # the pools' clock counts whole ms
    assert handed["granted"] - handed["first"] >= 0.2  # it waited for the blocker
    assert handed["granted"] <= claimed + 0.001


def test_a_parked_task_times_out_through_the_failure_path(env, run_worker):
    _pool(env, limit=1, timeout=2)
    app = env.app()
    with run_worker(app, concurrency=3):
        app.tasks["t.hold"].delay("blocker", 6)
        wait_until(lambda: _started(env, "blocker"), 10, message="blocker never started")
        started = time.monotonic()
        late = app.tasks["t.hold"].apply_async(
            ("late", 0), link_error=app.tasks["t.record_error"].s()
        )
        with pytest.raises(PoolTimeoutError, match="limit 1"):
            late.get(timeout=30)
        waited = time.monotonic() - started
    assert 1.8 <= waited <= 4.5, waited
    assert not _started(env, "late")
    wait_until(lambda: _errbacks(env), 10, message="link_error never ran")
    assert _errbacks(env)[0].startswith(f"{late.id}|PoolTimeoutError|")


def test_clear_and_delete_end_parked_tasks_through_the_failure_path(env, run_worker):
    manager = _pool(env, limit=1)
    app = env.app()
    with run_worker(app, concurrency=4):
        app.tasks["t.hold"].delay("blocker", 2)
        wait_until(lambda: _started(env, "blocker"), 10, message="blocker never started")
        cleared = _park_in_order(env, app, manager, ["c0", "c1"])
        manager.clear("api")
        assert manager.status("api").waiting == 0
        for result in cleared:
            with pytest.raises(PoolClearedError):
                result.get(timeout=30)
        deleted = _park_in_order(env, app, manager, ["d0"])
        manager.delete("api")
        with pytest.raises(PoolDeletedError):
            deleted[0].get(timeout=30)
    assert {label for label, _ in env.probe().starts()} == {"blocker"}


def test_growing_a_pool_hands_the_new_slots_to_parked_tasks(env, run_worker):
    manager = _pool(env, limit=1)
    app = env.app()
    with run_worker(app, concurrency=8):
        app.tasks["t.hold"].delay("blocker", 3)
        wait_until(lambda: _started(env, "blocker"), 10, message="blocker never started")
        waiters = _park_in_order(env, app, manager, [f"g{i}" for i in range(5)], seconds=1.5)
        manager.update("api", limit=4)
        # Three new slots: the three oldest start now, while the blocker still runs.
        wait_until(lambda: env.probe().current() == 4, 5, message="new slots not handed off")
        assert {label for label, _ in env.probe().starts()} == {"blocker", "g0", "g1", "g2"}
        for waiter in waiters:
            waiter.get(timeout=30)
    assert env.probe().max_concurrency() == 4


@pytest.mark.parametrize("limit_by", ["pause", "rate"])
def test_a_pause_or_rate_limit_set_after_tasks_were_granted_or_parked_still_holds_them(
    env, run_worker, limit_by
):
    """A task granted its slot at publication, or parked, before its instance was paused or
    rate-limited gives the slot back when it would claim it and waits like the instance's other
    tasks; the slot goes on to the next parked task, of another instance, at once."""
    manager = _pool(env, limit=1)
    manager.assign("inst-b", "api")
    app = env.app()
    granted = app.tasks["t.hold"].delay("granted", 0)  # a free slot, nobody waiting
    parked = app.tasks["t.hold"].delay("parked", 0)  # the slot is granted: it parks
    other = app.tasks["t.hold_on"].delay("other", 0, instance="inst-b")
    status = manager.status("api")
    assert [h.task_id for h in status.holders] == [granted.id]
    assert status.waiting == 2
    if limit_by == "pause":
        until = manager.pause(INSTANCE, 8.0)
    else:
        manager.set_rate_limit(INSTANCE, "1/3s")
    with run_worker(app, concurrency=3):
        assert [r.get(timeout=30) for r in (other, granted, parked)] == [
            "other",
            "granted",
            "parked",
        ]
    starts = dict(env.probe().starts())
    if limit_by == "pause":
        assert starts["other"] < until
        assert min(starts["granted"], starts["parked"]) >= until - 0.001
    else:
        # "granted" took the first token; "parked", handed the slot after it, waited for the
        # next one (3 s later) without holding the slot, which "other" used meanwhile.
        assert starts["parked"] - starts["granted"] >= 3.0 - 0.25
        assert starts["granted"] < starts["other"] < starts["parked"]
    assert env.probe().max_concurrency() == 1


def test_a_stale_copy_of_a_handed_off_message_never_runs(env):
    manager = _pool(env, limit=1)
    store = manager.store
    assert store.acquire(INSTANCE, "holder", lease=30).status is AcquireStatus.OK
    full = store.acquire(INSTANCE, "parked", lease=30)
    assert (full.status, full.reason) == (AcquireStatus.FULL, "handoff")
    position, effects = store.park("parked", pool="api", first=full.first, entry='{"info":{}}')
    assert (position, effects.handoffs) == (1, ())
    # A copy of the parked task's message arriving while it is parked must not run.
    assert store.acquire(INSTANCE, "parked", lease=30).status is AcquireStatus.STALE
    # A newcomer may not jump the FIFO even when a slot is free.
    release = store.release("holder", "api")
    (handoff,) = release.handoffs
    assert handoff.token == "parked"
    newcomer = store.acquire(INSTANCE, "newcomer", lease=30, wait="handoff")
    assert newcomer.status is AcquireStatus.FULL
    # Only the copy carrying the hand-off id claims the slot; any other copy is stale.
    wrong = store.acquire(INSTANCE, "parked", lease=30, handoff="parked.999")
    assert wrong.status is AcquireStatus.STALE
    claimed = store.acquire(INSTANCE, "parked", lease=30, handoff=handoff.handoff_id)
    assert (claimed.status, claimed.reason) == (AcquireStatus.OK, "handoff")
    # After the claim, a copy carrying another hand-off id is still stale...
    assert store.acquire(INSTANCE, "parked", lease=30, handoff="parked.999").status is (
        AcquireStatus.STALE
    )


def test_a_worker_parks_a_task_once_and_never_in_a_pool_that_is_gone(env):
    """Parking again a task that is parked, or that holds its slot, changes nothing and says so
    (position 0); parking in a pool deleted meanwhile says the pool is gone (-1)."""
    manager = _pool(env, limit=1)
    store = manager.store
    entry = '{"info":{}}'
    assert store.acquire(INSTANCE, "holder", lease=30).status is AcquireStatus.OK
    full = store.acquire(INSTANCE, "t", lease=30)
    assert store.park("t", pool="api", first=full.first, entry=entry) == (1, Effects("api"))
    assert store.park("t", pool="api", first=full.first, entry=entry)[0] == 0
    assert store.park("holder", pool="api", first=full.first, entry=entry)[0] == 0
    assert manager.status("api").waiting == 1
    manager.delete("api")
    assert store.park("u", pool="api", first=full.first, entry=entry)[0] == -1


def test_what_a_publication_hands_out_in_a_pool_it_was_moved_from_is_published(env):
    """A producer that believes the instance is in pool a parks with a hand-off of a pipelined:
    when the answer is MOVED (the instance went to b meanwhile), that hand-off still ran, and
    what it handed out (a's parked task) and reclaimed (a's dead holder) is settled too."""
    manager = env.manager()
    for name in ("a", "b"):
        manager.create(name, limit=1, timeout=30, wait="handoff")
    manager.assign(INSTANCE, "a")
    store = manager.store
    assert store.acquire(INSTANCE, "dead", lease=0.05).status is AcquireStatus.OK
    full = store.acquire(INSTANCE, "parked", lease=30)
    store.park("parked", pool="a", first=full.first, entry='{"info":{}}')
    producer = env.manager().store
    assert producer.pool_of(INSTANCE) == "a"  # its belief, about to go stale
    manager.assign(INSTANCE, "b")
    lapsed = store.ping() + 0.05
    wait_until(lambda: store.ping() > lapsed, 5, interval=0.01, message="the lease to lapse")
    parking = producer.park_at_publish(INSTANCE, "new", entry='{"info":{}}')
    assert parking.pool == "b"
    assert sorted(h.token for h in parking.handoffs) == ["new", "parked"]
    assert [r.task_id for r in parking.reclaimed] == ["dead"]


def test_a_hand_off_takes_a_rate_limited_tasks_token_and_lets_others_pass_until_it_is_due(env):
    """In a pool shared with a rate-limited instance, a parked task of that instance gets a slot
    in its FIFO turn with a rate token taken by the hand-off (its claim takes no second one);
    while its instance's next token is not due it keeps its place and the slot goes on."""
    manager = _pool(env, limit=1)
    manager.assign("inst-b", "api")
    manager.set_rate_limit("inst-b", "1/s")
    store = manager.store
    assert store.acquire(INSTANCE, "holder", lease=30).status is AcquireStatus.OK
    for index, (token, instance) in enumerate(
        (("b1", "inst-b"), ("a1", INSTANCE), ("b2", "inst-b"))
    ):
        full = store.acquire(instance, token, lease=30)
        assert (full.status, full.reason) == (AcquireStatus.FULL, "handoff")
        entry = json.dumps({"info": {"instance": instance}})
        # Places a millisecond apart: asked for in one millisecond, they would tie.
        store.park(token, pool="api", first=full.first + index / 1000, entry=entry)

    (b1,) = store.release("holder", "api", parked_likely=True).handoffs
    b1_handed = time.monotonic()
    claimed = store.acquire("inst-b", "b1", lease=30, handoff=b1.handoff_id)
    assert (b1.token, claimed.status) == ("b1", AcquireStatus.OK)  # no second token asked
    # b2's token is a second away: a1, parked after it, goes first; b2 keeps its place.
    (a1,) = store.release("b1", "api", parked_likely=True).handoffs
    assert a1.token == "a1"
    assert [w.task_id for w in manager.status("api").waiters] == ["b2"]
    store.acquire(INSTANCE, "a1", lease=30, handoff=a1.handoff_id)
    assert store.release("a1", "api", parked_likely=True).handoffs == ()
    # The free slot goes to b2 once its token is due (here asked for by polling, as a reaper).
    handed: list = []
    wait_until(lambda: handed.extend(store.hand_off("api").handoffs) or handed, 5, interval=0.02)
    assert [h.token for h in handed] == ["b2"]
    assert time.monotonic() - b1_handed >= 0.95
    b2 = store.acquire("inst-b", "b2", lease=30, handoff=handed[0].handoff_id)
    assert (b2.status, b2.reason) == (AcquireStatus.OK, "handoff")


def test_only_a_few_tasks_of_a_rate_limited_instance_park_at_a_time(env):
    """A hand-off passes over parked tasks whose rate token is not due; so that this stays short
    (and never holds up the other instances' tasks behind them), at most RATE_PARKED_MAX tasks
    of one rate-limited instance are parked at a time. The others wait by countdown and park as
    room comes; the count follows every way out of the FIFO."""
    manager = _pool(env, limit=1)
    manager.assign("inst-b", "api")
    manager.set_rate_limit("inst-b", "1/m")
    store = manager.store
    counts = store.keys.pool("api").rate_parked
    assert store.acquire(INSTANCE, "holder", lease=30).status is AcquireStatus.OK
    entry = json.dumps({"info": {"instance": "inst-b"}})
    for index in range(RATE_PARKED_MAX):
        full = store.acquire("inst-b", f"b{index}", lease=30)
        assert (full.status, full.reason) == (AcquireStatus.FULL, "handoff")
        store.park(f"b{index}", pool="api", first=full.first, entry=entry)
    assert store.client.hgetall(counts) == {"inst-b": str(RATE_PARKED_MAX)}
    over = store.acquire("inst-b", "over", lease=30)
    assert (over.status, over.reason) == (AcquireStatus.FULL, "countdown")
    published = publisher_for(store).park("inst-b", "published", entry=lambda: entry)
    assert (published.parked, published.reason) == (False, "rate")
    # Another instance's task is not held up: it parks behind them and gets the next slot.
    # (Places a millisecond later than the tasks before: asked for in one millisecond, they
    # could tie.)
    full = store.acquire(INSTANCE, "a0", lease=30)
    store.park("a0", pool="api", first=full.first + 0.001, entry=json.dumps({"info": {}}))
    (b,) = store.release("holder", "api", parked_likely=True).handoffs  # takes the token
    assert b.token.startswith("b")
    assert store.client.hget(counts, "inst-b") == str(RATE_PARKED_MAX - 1)
    store.acquire("inst-b", b.token, lease=30, handoff=b.handoff_id)
    (a0,) = store.release(b.token, "api", parked_likely=True).handoffs
    assert a0.token == "a0"  # the other b's wait a minute for their tokens: passed over
    full = store.acquire(INSTANCE, "a1", lease=30)  # asks after "over" did
    store.park("a1", pool="api", first=full.first + 0.001, entry=json.dumps({"info": {}}))
    # Room again: the waiting task parks, in its place (its first request, before a1's).
    retried = store.acquire("inst-b", "over", lease=30, first=over.first, waited_uid=over.uid)
    assert (retried.status, retried.reason) == (AcquireStatus.FULL, "handoff")
    store.park("over", pool="api", first=over.first, entry=entry)
    queue = store.client.zrange(store.keys.pool("api").queue, 0, -1)
    assert queue.index("over") < queue.index("a1")
    assert store.client.hget(counts, "inst-b") == str(RATE_PARKED_MAX)
    manager.clear("api")
    assert store.client.exists(counts) == 0
    # A count left off cannot outlive the FIFO.
    store.client.hset(counts, "inst-b", 50)
    store.hand_off("api")
    assert store.client.exists(counts) == 0


def test_a_hand_off_id_that_lapsed_before_a_reset_does_not_stop_the_task_it_is_given_to(env):
    """Hand-off ids count on from the pool's counters, which a metrics reset (or a pool deleted
    and created again) starts over: a new grant may get an id that once lapsed. The task that
    holds its slot under that id runs; other copies under it are still stale."""
    manager = _pool(env, limit=1)
    store = manager.store
    seconds, _ = store.client.time()
    store.client.zadd(store.keys.stale, {"t.1": (seconds + 3600) * 1000})  # lapsed, long ago
    granted = publisher_for(store).park(INSTANCE, "t", entry=lambda: "{}").granted
    assert granted is not None
    assert granted.handoff == "t.1"
    claimed = store.acquire(INSTANCE, "t", lease=30, first=granted.first, handoff="t.1")
    assert (claimed.status, claimed.reason) == (AcquireStatus.OK, "granted")
    assert store.acquire(INSTANCE, "t", lease=30, handoff="t.1").reentrant  # delivered again
    store.release("t", "api")
    assert store.acquire(INSTANCE, "t", lease=30, handoff="t.1").status is AcquireStatus.STALE


def test_releasing_a_task_handed_its_slot_before_it_started_drops_its_reservation(env):
    """A task revoked after its hand-off, before it started: the revoke releases its slot, and
    the reservation goes too (a clear or delete would otherwise publish it to fail, and the pool
    would look as if it still had hand-offs in flight)."""
    manager = _pool(env, limit=1)
    store = manager.store
    handing = store.keys.pool("api").handoffs
    assert store.acquire(INSTANCE, "holder", lease=30).status is AcquireStatus.OK
    full = store.acquire(INSTANCE, "revoked", lease=30)
    store.park("revoked", pool="api", first=full.first, entry='{"info":{}}')
    (handoff,) = store.release("holder", "api", parked_likely=True).handoffs
    assert store.client.hkeys(handing) == ["revoked"]
    released = store.abandon(
        "revoked", grace=0, why="revoke", handoff=handoff.handoff_id, unclaimed=True
    )
    assert released is not None
    assert released.released
    assert store.client.exists(handing) == 0
    manager.delete("api")
    assert store.pop_expired() == []


def test_only_a_revoke_of_the_message_carrying_a_hand_off_gives_it_back_before_its_claim(env):
    """A hand-off nobody has claimed runs no call, but an execution of its task that ended is
    no sign it is dead: the one that parked the task (its message carried no hand-off id, or an
    older one) ended long ago, and one that carried it may have sent its message on (a retry
    while Redis was unreachable carries the same id). Those endings leave it alone: it lapses
    and is handed out again. A revoke of the message carrying its id gives it back at once, and
    no other copy of that message runs (a worker that missed the revoke)."""
    manager = _pool(env, limit=1)
    store = manager.store
    assert store.acquire(INSTANCE, "holder", lease=30).status is AcquireStatus.OK
    full = store.acquire(INSTANCE, "revoked", lease=30)
    store.park("revoked", pool="api", first=full.first, entry='{"info":{}}')
    (handoff,) = store.release("holder", "api", parked_likely=True).handoffs
    endings = [
        {"why": "lost", "handoff": ""},
        {"why": "TimeLimitExceeded", "handoff": handoff.handoff_id},
        {"why": "revoke", "handoff": "revoked.0", "unclaimed": True},
    ]
    for ending in endings:
        left = store.abandon("revoked", grace=30, pid=4242, hostname="w@h", **ending)
        assert (left.released, left.slot, left.elsewhere) == (False, None, True), ending
    assert [h.task_id for h in manager.status("api").holders] == ["revoked"]
    ended = store.abandon(
        "revoked", grace=0, why="revoke", handoff=handoff.handoff_id, unclaimed=True
    )
    assert (ended.released, ended.slot, ended.elsewhere) == (True, None, False)
    assert manager.status("api").in_use == 0
    copy = store.acquire(INSTANCE, "revoked", lease=30, handoff=handoff.handoff_id)
    assert copy.status is AcquireStatus.STALE


def test_a_standby_not_blocked_yet_is_left_alone_by_every_ending_but_its_revoke(env):
    """A parked task promoted to standby has its message on the way and no process yet: the
    lease keeper's sweep of the execution that parked it (same task id) must not send it back
    to the FIFO, which would make its message stale on arrival; neither must the ending of an
    execution of its own message that sent the message on. A revoke of that message drops it."""
    manager = _pool(env, limit=1)
    store = manager.store
    store.standby_max = 1
    assert store.acquire(INSTANCE, "holder", lease=30).status is AcquireStatus.OK
    full = store.acquire(INSTANCE, "waiting", lease=30)
    _, effects = store.park("waiting", pool="api", first=full.first, entry='{"info":{}}')
    (standby,) = effects.handoffs
    assert standby.standby
    for handoff in ("", standby.handoff_id):
        left = store.abandon(
            "waiting", grace=30, why="lost", pid=4242, hostname="w@h", handoff=handoff
        )
        assert left.elsewhere
    assert manager.status("api").standbys == 1
    revoked = store.abandon(
        "waiting", grace=0, why="revoke", handoff=standby.handoff_id, unclaimed=True
    )
    assert not revoked.elsewhere
    assert (manager.status("api").standbys, manager.status("api").waiting) == (0, 0)


def test_a_rate_limited_instance_sharing_a_busy_hand_off_pool_is_not_starved(env, run_worker):
    """Before rate-aware hand-offs, tasks of a rate-limited instance waited by countdown in a
    hand-off pool and found a slot free only once nothing else was parked: under steady
    contention they ran last, or timed out. Now they take their FIFO turn, at their rate."""
    manager = _pool(env, limit=1)
    manager.assign("inst-b", "api")
    manager.set_rate_limit("inst-b", "1/s")
    app = env.app()
    hold_on = app.tasks["t.hold_on"]

    def send(label: str, seconds: float) -> object:
        return hold_on.delay(label, seconds, instance="inst-b" if label[0] == "b" else INSTANCE)

    labels = [*(f"a{i}" for i in range(6)), "b0", "b1", *(f"a{i}" for i in range(6, 12))]
    with run_worker(app, concurrency=4):
        blocker = hold_on.delay("blocker", 1.0, instance=INSTANCE)
        wait_until(lambda: _started(env, "blocker"), 10, message="blocker never started")
        results = _park_in_order(env, app, manager, labels, 0.25, send=send)
        for result in [blocker, *results]:
            result.get(timeout=60)
    starts = env.probe().starts()
    order = [label for label, _ in starts]
    at = dict(starts)
    assert order[: len(labels[:7]) + 1] == ["blocker", *labels[:7]]  # b0 in its FIFO turn
    assert order.index("b1") < order.index("a11")  # not left until everything else ran
    assert at["b1"] - at["b0"] >= 1.0 - 0.05  # at its rate
    assert env.probe().max_concurrency() == 1


def test_a_copy_of_a_lapsed_hand_off_never_runs_even_after_its_task_ended(env):
    """A hand-off lapses (its message was late, or its releaser died), the task is handed its
    slot again and runs. The first message, arriving after the task ended, must not run it a
    second time: nothing about the task is left in the pool by then but the lapsed id."""
    manager = _pool(env, limit=1)
    store = manager.store
    assert store.acquire(INSTANCE, "holder", lease=30).status is AcquireStatus.OK
    full = store.acquire(INSTANCE, "task", lease=30)
    store.park("task", pool="api", first=full.first, entry='{"info":{}}')
    (lapsing,) = (
        RedisPoolStore(store.client, store.keys, handoff_lease=0.05)
        .release("holder", "api", parked_likely=True)
        .handoffs
    )
    handed_again: list = []

    def handed() -> bool:
        handed_again.extend(
            RedisPoolStore(store.client, store.keys, handoff_lease=30).hand_off("api").handoffs
        )
        return bool(handed_again)

    wait_until(handed, 5, message="the lapsed hand-off was never handed out again")
    (again,) = handed_again
    assert (again.token, again.handoff_id != lapsing.handoff_id) == ("task", True)
    claimed = store.acquire(INSTANCE, "task", lease=30, first=full.first, handoff=again.handoff_id)
    assert (claimed.status, claimed.reason) == (AcquireStatus.OK, "handoff")
    assert store.release("task", "api").released
    late = store.acquire(INSTANCE, "task", lease=30, first=full.first, handoff=lapsing.handoff_id)
    assert late.status is AcquireStatus.STALE
    assert manager.status("api").in_use == 0
    # The id is forgotten after a day (the Redis transport redelivers within an hour).
    expiry = store.client.zscore(store.keys.stale, lapsing.handoff_id)
    seconds, _ = store.client.time()
    assert 23 * 3600 < expiry / 1000 - seconds <= 24 * 3600 + 1


@pytest.mark.parametrize("end", ["delete", "clear"])
def test_a_hand_off_in_flight_when_its_pool_ends_fails_its_task_once(env, run_worker, end):
    """The pool is deleted (or cleared, releasing held slots) between a slot's hand-off and its
    task's start. Whether or not the releasing worker lived to publish the message, the task fails
    once through Celery's failure path (link_error once), and its body never runs."""
    manager = _pool(env, limit=1)
    store = manager.store
    app = env.app()
    assert store.acquire(INSTANCE, "holder", lease=30).status is AcquireStatus.OK
    parked = app.tasks["t.hold"].apply_async(
        ("parked", 0), link_error=app.tasks["t.record_error"].s()
    )
    wait_until(lambda: manager.status("api").waiting == 1, 15, message="the task never parked")
    # The releasing worker reserved the slot for it, and dies before publishing its message.
    (handoff,) = store.release("holder", "api", parked_likely=True).handoffs
    assert handoff.token == parked.id
    if end == "delete":
        manager.delete("api")
        expected: type[Exception] = PoolDeletedError
    else:
        manager.clear("api", release_held=True)
        expected = PoolClearedError
    with run_worker(app, concurrency=1):
        with pytest.raises(expected):
            parked.get(timeout=30)
        # Or it did publish it: that copy is stale. A task sent after it runs after it (one
        # process), so once that one is done the copy was taken and dropped.
        Dispatcher(app, store).settle(Effects("api", (handoff,)))
        assert app.tasks["t.add"].delay(1, 2).get(timeout=30) == 3
    assert not _started(env, "parked")
    assert [e.split("|")[:2] for e in _errbacks(env)] == [[parked.id, expected.__name__]]


def test_the_reaper_logs_one_line_per_pool_and_outcome_not_one_per_task(env, caplog):
    """A clear of thousands of parked tasks must not write thousands of log lines, nor a broker
    outage thousands of tracebacks every reaper round; what is not published is kept."""
    manager = _pool(env, limit=1)
    store = manager.store
    app = env.app()
    assert store.acquire(INSTANCE, "holder", lease=30).status is AcquireStatus.OK
    _park_in_order(env, app, manager, ["c0", "c1", "c2"])
    manager.clear("api")
    unreachable = env.app()
    unreachable.conf.update(
        broker_url="redis://127.0.0.1:1/0", task_publish_retry=False, broker_connection_timeout=1
    )
    with caplog.at_level(logging.INFO, logger="celery_pools.handoff"):
        assert Dispatcher(unreachable, store).publish_expired() == 0
        assert Dispatcher(app, store).publish_expired() == 3
    lines = [(r.levelno, r.getMessage().split(": ")[1], bool(r.exc_info)) for r in caplog.records]
    assert lines == [
        (logging.ERROR, "could not publish 3 parked tasks of pool 'api' (cleared); they are "
         "tried again", True),
        (logging.INFO, "published 3 parked tasks of pool 'api'", False),
    ]  # fmt: skip


def test_a_task_that_gave_back_its_handed_slot_still_tells_stale_copies(env):
    """Handed a slot while its instance is paused, a task gives it back and waits by countdown:
    its own retries (no hand-off id) go on; a copy under another hand-off id stays stale."""
    manager = _pool(env, limit=1)
    store = manager.store
    assert store.acquire(INSTANCE, "holder", lease=30).status is AcquireStatus.OK
    full = store.acquire(INSTANCE, "parked", lease=30)
    store.park("parked", pool="api", first=full.first, entry='{"info":{}}')
    manager.pause(INSTANCE, 30)
    (handoff,) = store.release("holder", "api").handoffs
    given = store.acquire(INSTANCE, "parked", lease=30, handoff=handoff.handoff_id)
    assert (given.status, given.reason) == (AcquireStatus.RATE, "paused")
    status = manager.status("api")
    assert (status.in_use, [w.task_id for w in status.waiters]) == (0, ["parked"])
    assert store.metrics(["api"])[0].handoffs_returned == 1
    stale = store.acquire(INSTANCE, "parked", lease=30, handoff="parked.999")
    assert stale.status is AcquireStatus.STALE
    retry = {"lease": 30, "first": given.first, "waited_uid": given.uid}
    assert store.acquire(INSTANCE, "parked", **retry).status is AcquireStatus.RATE
    manager.resume(INSTANCE)
    assert store.acquire(INSTANCE, "parked", **retry).status is AcquireStatus.OK


def test_parked_tasks_of_a_paused_instance_leave_the_fifo_and_the_slot_goes_on(env):
    """A freed slot skips the parked tasks of a paused instance: they leave the FIFO, in order,
    to be published without a slot (and wait by countdown), and the next task gets the slot."""
    manager = _pool(env, limit=1)
    manager.assign("inst-b", "api")
    store = manager.store
    assert store.acquire(INSTANCE, "holder", lease=30).status is AcquireStatus.OK
    parked = (("a1", INSTANCE), ("a2", INSTANCE), ("b1", "inst-b"))
    for index, (token, instance) in enumerate(parked):
        full = store.acquire(instance, token, lease=30)
        entry = json.dumps({"info": {"instance": instance}})
        # Places a millisecond apart: asked for in one millisecond, they could tie.
        store.park(token, pool="api", first=full.first + index / 1000, entry=entry)
    manager.pause(INSTANCE, 30)
    (handoff,) = store.release("holder", "api").handoffs
    assert handoff.token == "b1"
    assert store.pop_expired() == []  # not an end: none of them fails
    sent_back = store.pop_expired(sent_back=True)
    assert [json.loads(r["entry"])["info"]["instance"] for r in sent_back] == [INSTANCE] * 2
    assert store.metrics(["api"])[0].sent_back == 2
    # Still waiting, by countdown now: a copy under a hand-off id (one that lapsed) is stale,
    # the message published without one goes on.
    assert [w.task_id for w in manager.status("api").waiters] == ["a1", "a2"]
    stale = store.acquire(INSTANCE, "a1", lease=30, handoff="a1.7")
    assert stale.status is AcquireStatus.STALE
    goes_on = store.acquire(INSTANCE, "a1", lease=30)
    assert (goes_on.status, goes_on.reason) == (AcquireStatus.FULL, "countdown")  # b1 holds it
    # Once the pause is over, parked tasks of the instance get slots again.
    manager.resume(INSTANCE)
    full = store.acquire(INSTANCE, "a3", lease=30)
    store.park("a3", pool="api", first=full.first, entry=json.dumps({"info": {}}))
    store.acquire("inst-b", "b1", lease=30, handoff=handoff.handoff_id)
    (again,) = store.release("b1", "api").handoffs
    assert again.token == "a3"


def test_the_claimed_hand_off_delivered_again_runs_in_its_slot(env):
    """A worker died running a handed-off task (acks_late): the broker delivers the same message
    again while the dead worker's lease still holds the slot. It must run, in that slot, not be
    dropped as a stale copy: that would lose the task."""
    manager = _pool(env, limit=1)
    store = manager.store
    assert store.acquire(INSTANCE, "holder", lease=30).status is AcquireStatus.OK
    full = store.acquire(INSTANCE, "task", lease=30)
    store.park("task", pool="api", first=full.first, entry='{"info":{}}')
    (handoff,) = store.release("holder", "api", parked_likely=True).handoffs
    first_run = store.acquire(INSTANCE, "task", lease=30, handoff=handoff.handoff_id)
    assert (first_run.status, first_run.reentrant) == (AcquireStatus.OK, False)
    again = store.acquire(INSTANCE, "task", lease=30, handoff=handoff.handoff_id)
    assert (again.status, again.reentrant) == (AcquireStatus.OK, True)
    assert manager.status("api").in_use == 1  # the same slot, not a second one
    assert store.acquire(INSTANCE, "task", lease=30, handoff="task.0").status is (
        AcquireStatus.STALE
    )


def _redis_now(store):
    seconds, micros = store.client.time()
    return seconds + micros / 1e6


def test_a_claim_says_when_the_pool_gave_the_slot_not_when_the_task_took_it(env):
    """An acquisition tells when its slot was given (``granted``): at the hand-off for a parked
    task, which claims it later, and as it is taken for a slot free at once."""
    manager = _pool(env, limit=1)
    store = manager.store
    taken = store.acquire(INSTANCE, "holder", lease=30)
    assert taken.status is AcquireStatus.OK
    assert taken.granted == taken.now
    full = store.acquire(INSTANCE, "task", lease=30)
    store.park("task", pool="api", first=full.first, entry='{"info":{}}')
    before = _redis_now(store)
    (handoff,) = store.release("holder", "api", parked_likely=True).handoffs
    after = _redis_now(store)
    # The claim comes later by the Redis clock, as a worker's would.
    wait_until(lambda: _redis_now(store) > after + 0.05, 5, message="the Redis clock moving on")
    claim = store.acquire(INSTANCE, "task", lease=30, handoff=handoff.handoff_id)
    assert claim.status is AcquireStatus.OK
    assert before - 0.001 <= claim.granted <= after
    assert round((claim.now - claim.granted) * 1000) >= 50  # whole milliseconds
    again = store.acquire(INSTANCE, "task", lease=30, handoff=handoff.handoff_id)
    assert (again.reentrant, again.granted) == (True, claim.granted)


@pytest.mark.parametrize("how", ["handed", "granted"])
def test_a_clear_keeps_a_task_that_was_handed_its_slot_but_not_yet_started(env, how):
    """A clear drops waiting tasks; one already handed (or granted) a slot holds it, like any
    holder, and runs. Failing it instead left its slot taken until the hand-off lapsed, and a
    lapsed hand-off went back to the FIFO: the task failed, then ran (or failed again)."""
    manager = _pool(env, limit=1)
    store = manager.store
    if how == "granted":
        granted = publisher_for(store).park(INSTANCE, "t", entry=lambda: "{}").granted
        assert granted is not None
        state = {"handoff": granted.handoff, "first": granted.first, "uid": granted.uid}
    else:
        assert store.acquire(INSTANCE, "holder", lease=30).status is AcquireStatus.OK
        full = store.acquire(INSTANCE, "t", lease=30)
        store.park("t", pool="api", first=full.first, entry='{"info":{}}')
        (handoff,) = store.release("holder", "api", parked_likely=True).handoffs
        state = {"handoff": handoff.handoff_id, "first": full.first, "uid": full.uid}
    manager.clear("api")
    claimed = store.acquire(
        INSTANCE,
        "t",
        lease=30,
        first=state["first"],
        waited_uid=state["uid"],
        handoff=state["handoff"],
    )
    assert claimed.status is AcquireStatus.OK
    # With release_held the slot is gone, and so the task (still waiting, then) is cleared.
    store.release("t", "api")
    other = publisher_for(store).park(INSTANCE, "u", entry=lambda: "{}").granted
    assert other is not None
    manager.clear("api", release_held=True)
    ended = store.acquire(
        INSTANCE, "u", lease=30, first=other.first, waited_uid=other.uid,
        handoff=other.handoff,
    )  # fmt: skip
    assert ended.status is AcquireStatus.CLEARED


@pytest.mark.slow
def test_handoff_across_three_prefork_workers_keeps_the_limit(env):
    _pool(env, limit=3, timeout=120)
    for _ in range(3):
        env.worker(concurrency=4)
    app = env.app()
    results = [app.tasks["t.hold"].delay(f"t{i}", 0.2) for i in range(60)]
    assert [r.get(timeout=120) for r in results] == [f"t{i}" for i in range(60)]
    probe = env.probe()
    assert probe.count() == 60
    assert probe.max_concurrency() == 3


@pytest.mark.slow
def test_handoff_starts_waiters_in_fifo_order_across_prefork_workers(env):
    manager = _pool(env, limit=1, timeout=120)
    for _ in range(3):
        env.worker(concurrency=2)
    app = env.app()
    blocker = app.tasks["t.hold"].delay("blocker", 1.0)
    wait_until(lambda: _started(env, "blocker"), 30, message="blocker never started")
    labels = [f"f{i}" for i in range(8)]
    waiters = _park_in_order(env, app, manager, labels, seconds=0.05)
    blocker.get(timeout=30)
    for waiter in waiters:
        waiter.get(timeout=60)
    starts = [label for label, _ in env.probe().starts()]
    assert starts == ["blocker", *labels]
    # Independently of the pool: the order in which Celery first ran each task.
    first_seen = env.probe().client.hgetall(f"probe:{env.name}:first_seen")
    by_first_seen = sorted(waiters, key=lambda w: float(first_seen[w.id]))
    assert [w.id for w in by_first_seen] == [w.id for w in waiters]


@pytest.mark.slow
def test_handoff_survives_a_sigkill_of_the_releasing_worker(env):
    manager = _pool(env, limit=1, timeout=120)
    env.extra_worker_env["CP_HANDOFF_LEASE_SECONDS"] = "2"
    releasing = env.worker(concurrency=1, queues=f"{env.queue}-releasing")
    survivor = env.worker(concurrency=2)
    app = env.app()
    app.tasks["t.hold"].apply_async(("releaser", 3.0), queue=f"{env.queue}-releasing")
    wait_until(lambda: _started(env, "releaser"), 30, message="releaser never started")
    waiter = app.tasks["t.hold"].delay("waiter", 0)
    wait_until(lambda: manager.status("api").waiting == 1, 30, message="waiter never parked")
    # The releasing child dies after reserving the slot for the waiter, before publishing it.
    env.probe().client.set(f"probe:{env.name}:crash-on-handoff", "1")
    crashed_at = time.monotonic()
    assert waiter.get(timeout=60) == "waiter"
    recovered_after = time.monotonic() - crashed_at
    assert env.probe().client.exists(f"probe:{env.name}:crash-on-handoff") == 0
    # Re-handed by a reaper once the 2 s hand-off lease lapsed; run exactly once.
    assert recovered_after <= 3.0 + 2.0 + 3.0, recovered_after
    assert [label for label, _ in env.probe().starts()].count("waiter") == 1
    assert manager.store.metrics(["api"])[0].status.in_use == 0
    assert survivor.running
    assert releasing.running  # its main process lives on; only the releasing child died


@pytest.mark.slow
def test_handoff_deadline_and_clear_across_prefork_workers(env):
    manager = _pool(env, limit=1, timeout=3)
    for _ in range(2):
        env.worker(concurrency=2)
    app = env.app()
    app.tasks["t.hold"].delay("blocker", 8)
    wait_until(lambda: _started(env, "blocker"), 30, message="blocker never started")
    timed_out = app.tasks["t.hold"].delay("timed-out", 0)
    with pytest.raises(PoolTimeoutError):
        timed_out.get(timeout=30)
    manager.update("api", timeout=120)
    cleared = _park_in_order(env, app, manager, ["c0", "c1"])
    manager.clear("api")
    for result in cleared:
        with pytest.raises(PoolClearedError):
            result.get(timeout=30)
    assert {label for label, _ in env.probe().starts()} == {"blocker"}
