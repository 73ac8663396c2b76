"""Script calls on the wire (``celery_pools.wire``) and the store's connections across fork."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import redis

from celery_pools.store import AcquireStatus, RedisPoolStore
from celery_pools.store.wire import ScriptCaller

_SOURCES = {
    "echo": "return {KEYS[1], ARGV[1], ARGV[2], ARGV[3], #KEYS, #ARGV}",
    "fail": "return redis.error_reply('ERR refused ' .. ARGV[1])",
    "count": "return redis.call('INCR', KEYS[1])",
    "length": "return redis.call('LLEN', KEYS[1])",
}


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def caller(request, redis_server) -> ScriptCaller:
    resp3 = {"protocol": 3} if request.param == 3 else {}
    if resp3 and redis.VERSION[0] < 5:
        pytest.skip("redis-py before 5.0 speaks RESP2 only")
    client = redis.Redis.from_url(redis_server.url(), decode_responses=True, **resp3)
    yield ScriptCaller(client, _SOURCES)
    client.close()


def test_arguments_are_encoded_as_redis_py_encodes_them(caller):
    """str in the client's encoding, int and float by repr, bytes as they are; the reply decodes
    as redis-py's own EVALSHA reply does."""
    key = "{t}:k:é"
    reply = caller.call("echo", [key], ["ü", 12, 0.25])
    assert reply == [key, "ü", "12", "0.25", 1, 3]
    assert reply == caller.client.evalsha(caller.shas["echo"], 1, key, "ü", 12, 0.25)
    assert caller.call("echo", [key], [b"raw", -3, 1e-7])[1:4] == ["raw", "-3", "1e-07"]


@pytest.mark.parametrize("bad", [True, None, {"a": 1}, [1]])
def test_an_argument_of_another_type_is_refused_before_anything_is_sent(caller, bad):
    key = f"{{t}}:never:{os.getpid()}"
    with pytest.raises(redis.DataError, match="Invalid input of type"):
        caller.run([("count", [key], []), ("echo", [key], [bad, 1, 2])])
    assert caller.client.exists(key) == 0


def test_an_error_reply_is_raised_after_the_whole_batch_was_read(caller, env):
    """The scripts before and after the failing one ran, and the connection is still in step:
    the next call reads its own reply."""
    key = f"{{t}}:count:{env.name}"
    with pytest.raises(redis.ResponseError, match="refused now"):
        caller.run([("count", [key], []), ("fail", [key], ["now"]), ("count", [key], [])])
    assert caller.client.get(key) == "2"
    assert caller.run([("count", [key], []), ("echo", [key], ["a", "b", "c"])]) == [
        3,
        [key, "a", "b", "c", 1, 3],
    ]


def test_scripts_redis_lost_are_loaded_again_and_only_the_failed_calls_run_again(caller, env):
    key = f"{{t}}:count:{env.name}"
    caller.load()
    assert caller.call("count", [key], []) == 1
    caller.client.script_flush()
    assert caller.run([("count", [key], []), ("count", [key], [])]) == [2, 3]
    assert caller.client.get(key) == "3"


def test_a_single_connection_client_goes_through_redis_pys_pipeline(redis_server, env):
    client = redis.Redis.from_url(
        redis_server.url(), decode_responses=True, single_connection_client=True
    )
    caller = ScriptCaller(client, _SOURCES)
    key = f"{{t}}:count:{env.name}"
    caller.load()
    assert caller.run([("count", [key], []), ("count", [key], [])]) == [1, 2]
    client.script_flush()
    assert caller.call("count", [key], []) == 3


@pytest.mark.parametrize("single", [False, True], ids=["packed", "redis-py pipeline"])
def test_a_batch_behind_a_block_runs_as_soon_as_its_list_is_pushed_to(redis_server, env, single):
    """The calls wait for the block in Redis and run after its pop (they see the LIST empty);
    the caller gets their replies alone, the popped value dropped."""
    client = redis.Redis.from_url(
        redis_server.url(), decode_responses=True, single_connection_client=single
    )
    caller = ScriptCaller(client, _SOURCES)
    other = redis.Redis.from_url(redis_server.url(), decode_responses=True)
    key = f"{{t}}:wake:{env.name}"
    seen: list[object] = []
    waiter = threading.Thread(
        target=lambda: seen.append(caller.run([("length", [key], [])], block=(key, 20.0)))
    )
    waiter.start()
    deadline = time.monotonic() + 10
    while not any(c.get("cmd") == "blpop" for c in other.client_list()):
        assert time.monotonic() < deadline, "the batch never blocked"
        time.sleep(0.01)
    assert seen == []
    other.rpush(key, "go", "and more")
    waiter.join(timeout=10)  # far short of the block's 20 s
    assert not waiter.is_alive()
    assert seen == [[1]]  # "go" was popped first; "and more" is left
    # Nothing pushed: the calls run when the block's time is up.
    assert caller.run([("count", [key + ":n"], [])], block=(key + ":empty", 0.05)) == [1]
    client.close()
    other.close()


def test_threads_sharing_a_caller_each_read_their_own_replies(caller, env):
    """Each batch takes a connection of the client's pool for itself: every reply goes to the
    call that asked for it."""
    key = f"{{t}}:count:{env.name}"
    seen: list[list[int]] = []

    def worker() -> None:
        mine = [caller.run([("count", [key], []), ("echo", [key], ["x", 1, 2])])[0]]
        mine += [caller.call("count", [key], []) for _ in range(199)]
        seen.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(mine == sorted(mine) for mine in seen)  # each thread's counts increase
    assert sorted(n for mine in seen for n in mine) == list(range(1, 1601))


class _Interrupted(BaseException):
    """What a signal handler raises between two reads (Celery's soft time limit, Ctrl-C)."""


def test_a_batch_cut_short_leaves_no_reply_behind_for_the_next_call(caller, env, monkeypatch):
    """Interrupted between two replies of a batch, the connection is dropped: the replies still
    on their way never reach the next call, which reads its own."""
    key = f"{{t}}:count:{env.name}"
    caller.load()
    read_response = redis.connection.Connection.read_response
    reads = []
    this_thread = threading.current_thread()

    def interrupted_after_one(self, *args, **kwargs):
        # Only this test's reads: a thread another test left winding down may read meanwhile.
        if threading.current_thread() is this_thread:
            reads.append(1)
            if len(reads) == 2:
                raise _Interrupted()
        return read_response(self, *args, **kwargs)

    monkeypatch.setattr(redis.connection.Connection, "read_response", interrupted_after_one)
    with pytest.raises(_Interrupted):
        caller.run([("count", [key], []), ("count", [key], []), ("count", [key], [])])
    monkeypatch.setattr(redis.connection.Connection, "read_response", read_response)
    assert caller.call("count", [key], []) == 4
    assert caller.call("echo", [key], ["a", "b", "c"]) == [key, "a", "b", "c", 1, 3]


def test_a_dropped_connection_is_made_again_under_the_clients_retry_policy(caller, env):
    key = f"{{t}}:count:{env.name}"
    assert caller.call("count", [key], []) == 1
    caller.client.client_kill_filter(_type="normal", skipme=True)  # every pooled connection
    assert caller.call("count", [key], []) == 2


def test_a_child_forked_while_a_thread_was_inside_the_store_can_use_it(env):
    """A worker's lease and reaper threads use the store while the prefork pool forks children.
    A child forked while one of them was inside the client's connection pool inherits that
    pool's lock held by a thread that does not exist in the child; it must still reach Redis (it
    used to hang for ever on its first call, holding its task's slot)."""
    pools = env.manager()
    pools.create("api", limit=1)
    pools.assign("inst", "api")
    store: RedisPoolStore = pools.store
    store.ping()
    inside, forked = threading.Event(), threading.Event()

    def busy_thread() -> None:
        with store.client.connection_pool._lock:  # where a thread is during any Redis call
            inside.set()
            forked.wait(10)

    parent_connection = store.client.client_id()
    thread = threading.Thread(target=busy_thread)
    thread.start()
    assert inside.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if the store answers; SIGALRM ends a hang
        try:
            signal.alarm(10)
            answer = store.acquire("inst", "child-token", lease=30)
            if store.client.client_id() == parent_connection:
                os._exit(5)  # it talked on the parent's socket
            os._exit(0 if answer.status is AcquireStatus.OK else 3)
        except BaseException:
            os._exit(4)
    forked.set()
    thread.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [holder.task_id for holder in pools.status("api").holders] == ["child-token"]
