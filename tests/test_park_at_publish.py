"""Parking at publication: in a hand-off pool, ``apply_async`` parks the task in Redis instead of
publishing it, so the broker only ever carries messages that hold a slot."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
import redis
from celery import Celery, chain, chord, group
from kombu.exceptions import EncodeError, OperationalError

from celery_pools import PooledTask, PoolTimeoutError, get_extension, producer, signals
from celery_pools.producer import publisher_for
from celery_pools.store import AcquireStatus, RedisPoolStore
from tests.support.redis_server import commands_served
from tests.workerapp import INSTANCE


def _pool(env, limit, timeout=30.0, wait="handoff"):
    manager = env.manager()
    manager.create("api", limit=limit, timeout=timeout, wait=wait)
    manager.assign(INSTANCE, "api")
    return manager


def _redis_now(store):
    seconds, micros = store.client.time()
    return seconds + micros / 1e6


def _queued(env):
    """Messages waiting in the test's broker queue (read from the broker, not from the pool)."""
    client = redis.Redis.from_url(env.broker)
    try:
        return client.llen(env.queue)
    finally:
        client.close()


def test_a_burst_costs_one_broker_message_per_task(env, run_worker, publications):
    manager = _pool(env, limit=2)
    app = env.app()
    handed: list[str] = []
    instances: set[str] = set()

    def record(handoff_id: str = "", instance: str = "", **_: object) -> None:
        handed.append(handoff_id)
        instances.add(instance)

    signals.slot_handoff.connect(record, weak=False)
    results = [app.tasks["t.hold"].delay(f"b{i}", 0.05) for i in range(12)]
    # No worker yet: the two tasks handed a slot are in the broker, the other ten in Redis.
    assert _queued(env) == 2
    status = manager.status("api")
    assert (status.in_use, status.waiting) == (2, 10)
    assert [r.state for r in results] == ["PENDING"] * 12
    with run_worker(app, concurrency=6):
        assert [r.get(timeout=30) for r in results] == [f"b{i}" for i in range(12)]
    signals.slot_handoff.disconnect(record)
    assert publications.count("t.hold") == 12
    # Granted at publication (the producer) or handed on (a worker): each names its instance.
    assert instances == {INSTANCE}
    # Slots went out oldest first: a hand-off id is "<task id>.<the pool's hand-off count>".
    by_grant = sorted(handed, key=lambda handoff_id: int(handoff_id.rsplit(".", 1)[1]))
    assert [handoff_id.rsplit(".", 1)[0] for handoff_id in by_grant] == [r.id for r in results]
    assert env.probe().max_concurrency() == 2
    (metrics,) = manager.store.metrics(["api"])
    assert (metrics.acquired_immediate, metrics.acquired_waited) == (2, 10)
    assert manager.status("api").in_use == 0


def test_a_burst_into_an_empty_pool_costs_one_broker_message_per_task(
    env, run_worker, monkeypatch, publications
):
    """The calls a grant lets go as usual are not seen by the next grant's count of free slots
    until they reach a worker: the producer keeps their slots for them (neither granted nor
    handed out meanwhile), and each takes its slot ahead of the tasks parked after it was
    published. So the burst sends one message per slot, parks the rest, and costs one broker
    message per task in all; without the kept slots, the calls sent as usual found the pool
    full and were published a second time."""
    monkeypatch.setattr(producer, "_IN_FLIGHT_SECONDS", 60.0)  # however slow this machine is
    limit, calls = 10, 30
    manager = _pool(env, limit=limit)
    app = env.app()
    results = [app.tasks["t.hold"].delay(f"b{i}", 0.02) for i in range(calls)]
    # No worker yet: grants and calls published as usual, one per slot; the rest in Redis.
    assert _queued(env) == limit
    status = manager.status("api")
    assert status.waiting == calls - limit
    assert status.in_use < limit  # the calls published as usual hold no slot yet
    with run_worker(app, concurrency=6):
        assert [r.get(timeout=60) for r in results] == [f"b{i}" for i in range(calls)]
    assert publications.count("t.hold") == calls
    assert env.probe().max_concurrency() <= limit
    # First come, first served: the calls published as usual did not wait behind later ones.
    (metrics,) = manager.store.metrics(["api"])
    assert (metrics.acquired_immediate, metrics.acquired_waited) == (limit, calls - limit)


def test_chain_chord_and_callbacks_keep_their_shape_when_parked(env, run_worker):
    _pool(env, limit=1)
    app = env.app()
    blocker = app.tasks["t.hold"].delay("blocker", 1.0)
    chained = chain(app.tasks["t.add"].s(1, 2), app.tasks["t.add"].s(10))()
    chorded = chord(group(app.tasks["t.add"].s(i, i) for i in range(3)), app.tasks["t.total"].s())()
    linked = app.tasks["t.add"].apply_async((5, 5), link=app.tasks["t.add"].s(100))
    # All of them wait in Redis behind the blocker; nothing of theirs is in the broker.
    assert _queued(env) == 1
    with run_worker(app, concurrency=4):
        blocker.get(timeout=30)
        assert chained.get(timeout=30) == 13
        assert chorded.get(timeout=30) == 6
        assert linked.get(timeout=30) == 10
        (callback,) = linked.children
        assert callback.get(timeout=30) == 110
    assert env.probe().max_concurrency() == 1


def test_a_parked_call_from_a_task_keeps_its_parent_and_root(env, run_worker):
    _pool(env, limit=1)
    app = env.app()
    with run_worker(app, concurrency=3):
        outer = app.tasks["t.spawn"].delay("child", 0.0)
        child_id = outer.get(timeout=30)
        child = app.AsyncResult(child_id)
        assert child.get(timeout=30) == "child"
        # Its parent is the task that called it, not the one whose release handed it a slot.
        assert app.backend.get_task_meta(child_id)["parent_id"] == outer.id
    # The spawning task held the pool's only slot, so its child was parked, not published.
    assert env.probe().client.hget(f"probe:{env.name}:spawned", child_id) == "parked"


def test_a_hand_off_keeps_the_parent_of_its_caller_not_of_the_releasing_task(env, run_worker):
    _pool(env, limit=1)
    app = env.app()
    with run_worker(app, concurrency=3):
        blocker = app.tasks["t.hold"].delay("blocker", 0.5)
        top = app.tasks["t.hold"].delay("top")  # parked by this process, outside any task
        assert top.get(timeout=30) == "top"
        blocker.get(timeout=30)
    # The blocker's release published it, from inside the blocker: still no parent.
    assert "parent_id" not in app.backend.get_task_meta(top.id)
    assert top.id not in {child.id for child in blocker.children or ()}


def test_a_call_reusing_the_id_of_a_running_task_is_published_as_usual(env):
    """``Task.replace`` and a retry without a countdown send a new run under the running task's
    id: it must not be taken for a copy of a parked task and dropped."""
    manager = _pool(env, limit=1)
    store = manager.store
    assert store.acquire(INSTANCE, "running", lease=30).status.value == "OK"
    parking = publisher_for(store).park(INSTANCE, "running", entry=lambda: '{"info": {}}')
    assert (parking.parked, parking.reason) == (False, "held")
    # ...and that answer is not remembered for the instance's other tasks.
    assert publisher_for(store).park(INSTANCE, "other", entry=lambda: '{"info": {}}').parked


def test_a_producer_without_pools_settings_publishes_as_usual():
    app = Celery("no-pools", broker="memory://", set_as_current=False)

    @app.task(base=PooledTask, connector_instance="inst", name="np.call", shared=False)
    def call() -> None:  # pragma: no cover  (never run)
        pass

    result = call.delay()
    with app.connection_for_read() as connection:
        message = connection.SimpleQueue("celery").get(timeout=5)
    assert message.headers["id"] == result.id


@pytest.mark.parametrize("how", ["countdown pool", "rate limit", "eta", "countdown", "task"])
def test_tasks_that_do_not_wait_by_handoff_are_published_as_usual(env, how):
    manager = _pool(env, limit=1, wait="countdown" if how == "countdown pool" else "handoff")
    if how == "rate limit":
        manager.set_rate_limit(INSTANCE, "100/s")
    app = env.app()
    task = app.tasks["t.hold"]
    for i in range(3):
        if how == "eta":
            task.apply_async((f"e{i}",), eta=datetime.now(timezone.utc) + timedelta(seconds=1))
        elif how == "countdown":
            task.apply_async((f"c{i}",), countdown=0.01)
        elif how == "task":  # a task whose pool_wait is "countdown"
            app.tasks["t.hold_countdown"].delay(f"c{i}")
        else:
            task.delay(f"p{i}")
    # All three are in the broker; none is parked.
    assert _queued(env) == 3
    assert manager.status("api").waiting == 0


def test_a_parked_task_past_its_deadline_fails_without_running(env, run_worker):
    _pool(env, limit=1, timeout=1)
    app = env.app()
    blocker = app.tasks["t.hold"].delay("blocker", 3.0)
    late = app.tasks["t.hold"].apply_async(("late",), link_error=app.tasks["t.record_error"].s())
    with run_worker(app, concurrency=3):
        with pytest.raises(PoolTimeoutError, match="within its timeout of 1 s"):
            late.get(timeout=30)
        blocker.get(timeout=30)
    assert "late" not in {label for label, _ in env.probe().starts()}
    errbacks = env.probe().client.lrange(f"probe:{env.name}:errbacks", 0, -1)
    assert errbacks
    assert errbacks[0].startswith(f"{late.id}|PoolTimeoutError|")


def test_with_the_pools_redis_down_tasks_are_published_as_usual(private_env, private_redis):
    env = private_env
    _pool(env, limit=1)
    app = env.app(pools_redis_socket_timeout=0.5)
    app.tasks["t.hold"].delay("first")
    assert _queued(env) == 1
    private_redis.kill()
    try:
        app.tasks["t.hold"].delay("second")
        assert _queued(env) == 2  # published as usual: the worker waits for Redis
    finally:
        private_redis.restart()


def _wait_for(predicate, timeout=10.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_a_free_slot_is_granted_without_parking_and_a_lapsed_grant_comes_back(env):
    manager = _pool(env, limit=1)
    store = RedisPoolStore(manager.store.client, manager.store.keys, handoff_lease=0.3)
    keys = store.keys.pool("api")

    def never() -> str:
        raise AssertionError("a granted call must not be parked")

    granted = publisher_for(store).park(INSTANCE, "g1", entry=never)
    assert not granted.parked
    assert granted.granted is not None
    assert granted.granted.pool == "api"
    assert granted.granted.handoff.startswith("g1.")
    assert store.client.hlen(keys.parked) == 0  # nothing of it is stored but its slot
    assert store.client.hlen(keys.handoffs) == 0
    assert (manager.status("api").in_use, manager.status("api").waiting) == (1, 0)
    # The slot is taken: the next call parks, with its entry, in the same answer.
    parked = publisher_for(store).park(INSTANCE, "g2", entry=lambda: '{"info": {}}')
    assert (parked.parked, parked.position) == (True, 1)

    # The grant's message never came (its producer died before publishing): when its lease
    # lapses the slot comes back, without a leak warning, and goes to the parked task.
    handed: list[str] = []

    def lapsed() -> bool:
        effects = RedisPoolStore(store.client, store.keys, handoff_lease=30).hand_off("api")
        assert effects.reclaimed == ()
        handed.extend(h.token for h in effects.handoffs)
        return bool(handed)

    _wait_for(lapsed, what="the grant to lapse")
    assert handed == ["g2"]
    (metrics,) = store.metrics(["api"])
    assert (metrics.handoffs, metrics.handoffs_retried, metrics.grants_lapsed) == (2, 0, 1)
    assert store.client.hlen(keys.handoffs) == 1  # g2's hand-off, not g1's grant

    # Its message, arriving late after all, does not run on the lapsed grant: it waits.
    late = store.acquire(INSTANCE, "g1", lease=30, handoff=granted.granted.handoff)
    assert (late.status.value, late.reason) == ("FULL", "handoff")


def test_the_slots_kept_for_calls_on_their_way_are_neither_granted_nor_handed_out(env):
    """A producer that published calls as usual while its pool looked ample keeps as many free
    slots as those calls have not taken yet: grants and hand-offs give out only the others. Each
    such call takes a free slot ahead of the tasks that parked after it was published, and a
    call published after them waits behind them."""
    manager = _pool(env, limit=3)
    store = manager.store
    info = {"instance": INSTANCE}
    published = _redis_now(store)  # when the producer published two calls as usual
    on_way = (2, 0, 30.0)  # two on their way; the pool's count of slots taken read 0
    granted = store.park_at_publish(INSTANCE, "g1", entry=None, info=info, reserve=on_way)
    assert granted.granted is not None  # 3 free, 2 kept: one to grant
    refused = store.park_at_publish(INSTANCE, "g2", entry=None, info=info, reserve=on_way)
    assert (refused.granted, refused.reason) == (None, "contended")
    parked = store.park_at_publish(INSTANCE, "p1", entry='{"info": {}}', info=info, reserve=on_way)
    assert (parked.parked, parked.position, parked.handoffs) == (True, 1, ())
    assert store.hand_off("api").handoffs == ()  # a worker's hand-off keeps them too
    status = manager.status("api")  # what an operator sees: kept, not free
    assert (status.in_use, status.free, status.reserved) == (1, 0, 2)
    after = _redis_now(store)
    _wait_for(lambda: _redis_now(store) > after + 0.002, what="the Redis clock to move on")
    # A call published after p1 parked must park behind it, though a kept slot is free.
    late = store.acquire(INSTANCE, "late", lease=30, published=_redis_now(store))
    assert (late.status.value, late.reason) == ("FULL", "handoff")
    # The calls on their way arrive: each takes a kept slot, ahead of p1.
    for token in ("u1", "u2"):
        arrived = store.acquire(INSTANCE, token, lease=30, published=published)
        assert arrived.status.value == "OK", token
    status = manager.status("api")
    assert (status.in_use, [w.task_id for w in status.waiters]) == (3, ["p1"])
    assert (status.free, status.reserved) == (0, 0)
    # Nothing is kept any more: the next freed slot goes to p1, the oldest in line.
    (handoff,) = store.release("g1", "api", parked_likely=True).handoffs
    assert handoff.token == "p1"


def test_a_standby_leaves_a_slot_kept_for_a_call_on_its_way(env):
    """Neither the hand-off that wakes standbys nor a standby's own acquire takes a slot a
    producer keeps for a call it published as usual: the call takes it when it arrives."""
    manager = _pool(env, limit=1)
    store = RedisPoolStore(manager.store.client, manager.store.keys, standby_max=1)
    assert store.acquire(INSTANCE, "holder", lease=30).status is AcquireStatus.OK
    published = _redis_now(store)  # a call published as usual, before s asked
    _wait_for(lambda: _redis_now(store) > published + 0.002, what="the Redis clock to move on")
    full = store.acquire(INSTANCE, "s", lease=30)
    _, parked = store.park("s", pool="api", first=full.first, entry='{"info": {}}')
    (promoted,) = [h for h in parked.handoffs if h.standby]  # the pool is full: s stands by
    info = {"instance": INSTANCE}
    kept = store.park_at_publish(
        INSTANCE, "x", entry='{"info": {}}', info=info, reserve=(1, "", 30)
    )
    assert kept.parked
    # The holder's slot comes free: it is kept, not handed to the standby.
    assert store.release("holder", "api", parked_likely=True).handoffs == ()
    standing = store.acquire(
        INSTANCE, "s", lease=30, first=full.first, handoff=promoted.handoff_id, standby=0.01
    )
    assert (standing.status, standing.reason) == (AcquireStatus.FULL, "standby")
    arrived = store.acquire(INSTANCE, "u", lease=30, published=published)
    assert arrived.status is AcquireStatus.OK


def test_a_call_published_as_usual_that_parks_anyway_keeps_its_place_from_its_publication(
    env, run_worker, monkeypatch
):
    """A call published as usual whose slot was not kept (here none is) and that finds its pool
    full parks at its publication's place, ahead of a task parked after it was published, and
    is handed the next freed slot before it; its deadline still counts from when it first
    asked."""
    monkeypatch.setattr(producer, "_IN_FLIGHT_SECONDS", 0.0)  # no slot kept for it
    manager = _pool(env, limit=4)
    store, keys = manager.store, manager.store.keys.pool("api")
    app = env.app()
    # A grant to a call no worker here takes (3 slots left free: one call may go as usual) ...
    app.tasks["t.hold"].apply_async(("granted",), queue=f"elsewhere-{env.name}")
    usual = app.tasks["t.hold"].delay("usual")  # ... and that call
    with redis.Redis.from_url(env.broker) as broker:
        (raw,) = broker.lrange(env.queue, 0, -1)
    published = json.loads(raw)["headers"]["celery_pools"]["published"]
    for token in ("h1", "h2", "h3"):  # the pool fills up before it arrives
        assert store.acquire(INSTANCE, token, lease=60).status is AcquireStatus.OK
    _wait_for(lambda: _redis_now(store) > published + 0.005, what="the Redis clock to move on")
    later = app.tasks["t.hold"].delay("later")  # parked at publication, after it
    assert manager.status("api").waiting == 1
    with run_worker(app, concurrency=1):
        _wait_for(lambda: manager.status("api").waiting == 2, what="the call to park")
        assert store.client.zrange(keys.queue, 0, -1) == [usual.id, later.id]
        assert store.client.zscore(keys.waiters, usual.id) / 1000 > published + 30.004
        released = store.release("h1", "api", parked_likely=True)
        assert [handoff.token for handoff in released.handoffs] == [usual.id]
        get_extension(app).dispatcher.settle(released.effects)  # its message goes out
        assert usual.get(timeout=30) == "usual"
        assert later.get(timeout=30) == "later"  # handed the slot "usual" gave back
    assert [label for label, _ in env.probe().starts()] == ["usual", "later"]


def test_the_status_counts_a_live_reservation_less_its_arrivals_and_nothing_else(env):
    manager = _pool(env, limit=3)
    keys = manager.store.keys.pool("api")
    client = manager.store.client
    later_ms = int((_redis_now(manager.store) + 60) * 1000)

    def shown(reserve: str) -> tuple[int, int]:
        client.hset(keys.config, "reserve", reserve)
        status = manager.status("api")
        return status.free, status.reserved

    assert shown(f"2|0|{later_ms}") == (1, 2)
    client.hset(keys.stats, "as_usual_arrived", 1)  # one of the two arrived since
    assert shown(f"2|0|{later_ms}") == (2, 1)
    assert shown(f"9|1|{later_ms}") == (0, 3)  # never more than the free slots
    assert shown("2|1|1") == (3, 0)  # lapsed
    assert shown("two|1|x") == (3, 0)  # not a reservation


def test_slots_kept_for_calls_that_never_arrive_go_to_parked_tasks_when_the_reservation_lapses(
    env,
):
    manager = _pool(env, limit=1)
    store = manager.store
    info = {"instance": INSTANCE}
    on_way = (1, 0, 0.3)  # kept for 0.3 s at most
    parked = store.park_at_publish(INSTANCE, "p1", entry='{"info": {}}', info=info, reserve=on_way)
    assert (parked.parked, parked.handoffs) == (True, ())
    handed: list[str] = []

    def lapsed() -> bool:
        handed.extend(h.token for h in store.hand_off("api").handoffs)
        return bool(handed)

    _wait_for(lapsed, what="the reservation to lapse")
    assert handed == ["p1"]
    assert store.client.hget(store.keys.pool("api").config, "reserve") is None


def test_a_grant_whose_answer_was_lost_is_claimed_by_the_message_published_as_usual(env):
    """Redis granted the slot but its answer never reached the producer, which then publishes
    the call as usual, without the grant's id: that one message must claim the slot, not be
    taken for a stale copy (it is the only one there is)."""
    manager = _pool(env, limit=1)
    store = manager.store
    before = _redis_now(store)
    assert publisher_for(store).park(INSTANCE, "lost", entry=lambda: "{}").granted is not None
    after = _redis_now(store)
    _wait_for(lambda: _redis_now(store) > after + 0.05, what="the Redis clock to move on")
    claimed = store.acquire(INSTANCE, "lost", lease=30)  # no hand-off id in its headers
    assert (claimed.status.value, claimed.reason) == ("OK", "granted")
    # The slot was given at publication, not as its message arrived.
    assert before - 0.001 <= claimed.granted <= after
    assert manager.status("api").in_use == 1
    (metrics,) = store.metrics(["api"])
    assert (metrics.acquired_immediate, metrics.acquired_waited) == (1, 0)
    # A copy delivered again under the same id (a redelivery) takes no second slot.
    again = store.acquire(INSTANCE, "lost", lease=30)
    assert (again.status.value, again.reentrant, again.granted) == ("OK", True, claimed.granted)
    assert manager.status("api").in_use == 1


def test_a_granted_task_claims_its_slot_and_runs_once(env, run_worker, publications):
    manager = _pool(env, limit=3)
    app = env.app()
    result = app.tasks["t.hold"].delay("granted")
    with redis.Redis.from_url(env.broker) as broker:
        (raw,) = broker.lrange(env.queue, 0, -1)
    headers = json.loads(raw)["headers"]
    assert headers["celery_pools"]["handoff"].startswith(f"{result.id}.")
    assert manager.status("api").in_use == 1  # held for it while its message waits
    with run_worker(app, concurrency=2):
        assert result.get(timeout=30) == "granted"
    assert publications.count("t.hold") == 1
    assert [label for label, _ in env.probe().starts()] == ["granted"]
    (metrics,) = manager.store.metrics(["api"])
    assert (metrics.acquired_immediate, metrics.acquired_waited) == (1, 0)
    assert manager.status("api").in_use == 0


def test_a_grant_whose_message_cannot_be_published_raises_and_gives_the_slot_back(
    env, private_redis
):
    """Celery's own publish fails as usual (the broker is down), and the slot granted for the
    call is given back at once, to the next task parked behind it if there is one."""
    env.broker = private_redis.url(2)
    manager = _pool(env, limit=1)
    store = manager.store
    app = env.app(broker_connection_timeout=0.5)
    private_redis.kill()
    try:
        with pytest.raises(OperationalError):
            app.tasks["t.hold"].apply_async(("lost",), retry=False)
    finally:
        private_redis.restart()
    (metrics,) = store.metrics(["api"])
    assert (metrics.handoffs, metrics.grants_withdrawn) == (1, 1)  # granted, and given back
    assert manager.status("api").in_use == 0
    assert _queued(env) == 0
    result = app.tasks["t.hold"].delay("next")
    assert _queued(env) == 1  # the next call is granted the slot, not parked
    assert manager.status("api").in_use == 1
    assert result.id in store.client.hgetall(manager.store.keys.held)


def test_an_unserializable_call_gives_its_granted_slot_back(env):
    manager = _pool(env, limit=1)
    app = env.app()
    with pytest.raises(EncodeError):
        app.tasks["t.hold"].delay(object())  # the json serializer refuses it
    assert manager.status("api").in_use == 0
    app.tasks["t.hold"].delay("next")
    assert _queued(env) == 1


def test_the_same_id_sent_again_while_its_grant_is_unclaimed_runs_once(
    env, run_worker, publications
):
    """A slot was granted for a call whose publication then failed (and was not given back:
    the producer died); the application sends the call again under the same id. It must be
    published, not taken for a parked copy, and claim the grant."""
    manager = _pool(env, limit=2)
    store = manager.store
    first = publisher_for(store).park(INSTANCE, f"same-id-{env.name}", entry=lambda: "{}")
    assert first.granted is not None
    app = env.app()
    result = app.tasks["t.hold"].apply_async(("again",), task_id=f"same-id-{env.name}")
    assert _queued(env) == 1
    with run_worker(app, concurrency=2):
        assert result.get(timeout=30) == "again"
    assert [label for label, _ in env.probe().starts()] == ["again"]
    assert publications.count("t.hold") == 1
    (metrics,) = store.metrics(["api"])
    assert (metrics.acquired_immediate, metrics.acquired_waited, metrics.grants_lapsed) == (1, 0, 0)
    assert manager.status("api").in_use == 0


def test_a_call_whose_grant_answer_was_lost_is_published_as_usual_and_runs_once(
    env, run_worker, publications
):
    """Redis grants the slot but the answer never reaches the producer (the connection drops
    after the script ran): the call is published as usual, and that message claims the grant."""
    manager = _pool(env, limit=2)
    app = env.app()
    store = get_extension(app).store
    real = store._scripts.run
    lost: list[bool] = []

    def drop_the_first_grant_answer(calls, **options):
        replies = real(calls, **options)
        if not lost and calls[0][0] == "park" and replies[0][0] == "GRANTED":
            lost.append(True)
            raise redis.ConnectionError("connection lost after the script ran")
        return replies

    store._scripts.run = drop_the_first_grant_answer
    try:
        result = app.tasks["t.hold"].delay("lost-answer")
    finally:
        del store._scripts.run
    assert lost == [True]
    with redis.Redis.from_url(env.broker) as broker:
        (raw,) = broker.lrange(env.queue, 0, -1)
    assert "celery_pools" not in json.loads(raw)["headers"]  # published as usual
    assert manager.status("api").in_use == 1  # the grant, waiting for its claim
    with run_worker(app, concurrency=2):
        assert result.get(timeout=30) == "lost-answer"
    assert [label for label, _ in env.probe().starts()] == ["lost-answer"]
    assert publications.count("t.hold") == 1
    (metrics,) = manager.store.metrics(["api"])
    assert (metrics.acquired_immediate, metrics.grants_lapsed) == (1, 0)
    assert manager.status("api").in_use == 0


def _scripts_run(env) -> int:
    """EVALSHA calls the pools' Redis server has served (its own count, not the pool code's)."""
    client = redis.Redis.from_url(env.pools_url)
    try:
        return commands_served(client, "evalsha")
    finally:
        client.close()


def test_an_ample_hand_off_pool_costs_no_script_at_publication(private_env, run_worker):
    """A grant that finds slots free beyond its own lets the next calls (half of those slots,
    for up to 10 seconds) be published as usual: their worker's acquire takes the slot, one
    script, as in a countdown pool, also when calls come a while apart. (Pools on a Redis of this
    test alone: its script count is this test's.)"""
    env = private_env
    manager = _pool(env, limit=20)
    app = env.app()
    before = _scripts_run(env)
    results = []
    for i in range(8):
        results.append(app.tasks["t.hold"].delay(f"a{i}", 0.0))
        if i in (2, 5):
            time.sleep(0.6)  # a pool with little traffic: calls seconds apart, not a burst
    assert _scripts_run(env) - before == 1  # the first call's grant; the other 7 none
    assert _queued(env) == 8
    assert manager.status("api").in_use == 1  # only the grant holds a slot before they run
    with run_worker(app, concurrency=4):
        assert [r.get(timeout=30) for r in results] == [f"a{i}" for i in range(8)]
    (metrics,) = manager.store.metrics(["api"])
    assert metrics.acquired_immediate == 8
    assert metrics.handoffs == 1


def test_steady_calls_into_an_ample_pool_keep_the_whole_budget(env, run_worker, monkeypatch):
    """Calls that reached a worker between two grants are known to have (the grant answers the
    pool's count of slots taken without waiting), so they do not shrink the next budget: one
    grant per five calls into a pool of 10 with one slot in use at a time, as when each call was
    the first."""
    monkeypatch.setattr(producer, "_IN_FLIGHT_SECONDS", 60.0)  # arrivals known by count, not age
    manager = _pool(env, limit=10)
    app = env.app()
    with run_worker(app, concurrency=2):
        for i in range(20):  # each done before the next is published
            assert app.tasks["t.hold"].delay(f"s{i}", 0.0).get(timeout=30) == f"s{i}"
    (metrics,) = manager.store.metrics(["api"])
    # Calls 1, 6, 11 and 16 are granted (9 free: 4 go as usual after each), the rest as usual.
    assert metrics.handoffs == 4
    assert (metrics.acquired_immediate, metrics.acquired_waited) == (20, 0)


def test_a_call_published_as_usual_in_an_ample_pool_waits_behind_parked_tasks(env, run_worker):
    manager = _pool(env, limit=4)
    app = env.app()
    first = app.tasks["t.hold"].delay("first", 0.0)  # granted; 3 free: one call may go as usual
    store = manager.store
    for token in ("x", "y", "z"):  # the pool fills up behind this producer's back
        assert store.acquire(INSTANCE, token, lease=30).status.value == "OK"
    parked = env.app().tasks["t.hold"].delay("parked", 0.0)  # another producer: it parks
    assert manager.status("api").waiting == 1
    late = app.tasks["t.hold"].delay("late", 0.0)  # published as usual (the ample budget)
    assert _queued(env) == 2  # first's and late's messages; parked's is in Redis
    with run_worker(app, concurrency=4):
        first.get(timeout=30)  # its release hands its slot to the parked task
        assert parked.get(timeout=30) == "parked"
        for token in ("x", "y", "z"):
            get_extension(app).dispatcher.settle(store.release(token, "api").effects)
        assert late.get(timeout=30) == "late"
    starts = [label for label, _ in env.probe().starts()]
    assert starts.index("parked") < starts.index("late")
