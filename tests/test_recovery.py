"""Redis going away: deleted streams, lost groups, restarts, dead servers.

Case 06 of the shared scenarios, Redis restarts with persistence, and the
chaos test: workers killed at random while Redis restarts once.
"""

from __future__ import annotations

import logging
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import taskq
from taskq import TaskQ, Worker
from tests.support import (
    RedisServer,
    bind_app,
    find_redis_server,
    wait_for,
    worker_process,
)
from tests.test_worker import dead_letters, pending

pytestmark = pytest.mark.redis


def _reader_blocked(app: TaskQ, worker: Worker) -> bool:
    clients = app.redis.client_list()
    return any(
        c["name"] == f"taskq-reader:{worker.id}"
        and c["cmd"] == "xreadgroup"
        and "b" in c["flags"]
        for c in clients
    )


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("taskq")
    ]


# -- case 06: NOGROUP after the stream key disappears ---------------------------


def test_a_deleted_stream_gets_its_group_back_from_the_start(
    redis_app: TaskQ, running: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = redis_app
    app.topic("jobs", partitions=1)
    ran: list[int] = []

    @app.task(topic="jobs")
    def t(i: int) -> None:
        ran.append(i)

    stream = app.keys.partition("jobs", 0).stream
    caplog.set_level(logging.WARNING, logger="taskq")
    with running(Worker(app)) as worker:
        wait_for(lambda: _reader_blocked(app, worker), what="the reader to block")
        app.redis.delete(stream)
        sent = time.monotonic()
        for i in (1, 2, 3):
            t.send(i)  # XADD makes the stream again, without the group
        wait_for(lambda: sorted(ran) == [1, 2, 3], timeout=10)
        assert time.monotonic() - sent <= 7.0
    assert sorted(ran) == [1, 2, 3]
    [group] = app.redis.xinfo_groups(stream)
    assert group["name"] == app.task_group.encode()
    warnings = _warnings(caplog)
    assert 1 <= len(warnings) <= 3
    assert any(
        stream in w
        and app.task_group in w
        and "created again" in w
        and "may be gone" in w
        for w in warnings
    )


def test_an_idle_worker_on_a_deleted_stream_does_not_spin(
    redis_app: TaskQ, running: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = redis_app
    app.topic("jobs", partitions=1)

    @app.task(topic="jobs")
    def t(i: int) -> None: ...

    stream = app.keys.partition("jobs", 0).stream
    caplog.set_level(logging.WARNING, logger="taskq")
    seen: list[dict[str, Any]] = []
    stop = threading.Event()

    def watch() -> None:
        monitor_client = redis.Redis.from_url(app.url)
        with monitor_client.monitor() as monitor:
            while not stop.is_set():
                seen.append(monitor.next_command())
        monitor_client.close()

    with running(Worker(app)) as worker:
        wait_for(lambda: _reader_blocked(app, worker), what="the reader to block")
        mine = {
            f"{c['addr']}"
            for c in app.redis.client_list()
            if c["name"].endswith(worker.id)
        }
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        time.sleep(0.2)
        app.redis.delete(stream)
        time.sleep(10)
        mine |= {
            f"{c['addr']}"
            for c in app.redis.client_list()
            if c["name"].endswith(worker.id)
        }
        stop.set()
        app.redis.ping()  # one more command, so the watcher sees the flag
        watcher.join(5)
        assert worker.subscriptions  # still alive and serving
    sent = [
        c
        for c in seen
        if c.get("client_type") != "lua"
        and f"{c['client_address']}:{c['client_port']}" in mine
    ]
    assert 0 < len(sent) <= 20, "\n".join(
        f"{c['time']:.2f} {c['command'][:50]}" for c in sent
    )
    assert len(_warnings(caplog)) <= 3


def test_losing_the_group_mid_task_is_one_warning(
    redis_app: TaskQ, running: Any, until: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = redis_app
    app.topic("jobs", partitions=1)
    started = threading.Event()
    done: list[str] = []

    @app.task(topic="jobs")
    def slow() -> None:
        started.set()
        time.sleep(1.5)
        done.append("slow")

    @app.task(topic="jobs")
    def later() -> None:
        done.append("later")

    stream = app.keys.partition("jobs", 0).stream
    caplog.set_level(logging.WARNING, logger="taskq")
    slow.send()
    with running(Worker(app)):
        assert started.wait(10)
        app.redis.delete(stream)
        until(lambda: done == ["slow"], timeout=10)
        later.send()
        until(lambda: done == ["slow", "later"], timeout=15)
    acks = [w for w in _warnings(caplog) if "Acknowledged 0 of 1" in w]
    assert len(acks) == 1 and stream in acks[0], _warnings(caplog)


# -- keys of the wrong type at start ---------------------------------------------


def test_keys_of_the_wrong_type_do_not_stop_a_worker_starting(
    redis_app: TaskQ, running: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = redis_app
    app.topic("plain", partitions=1)
    app.topic("ordered", partitions=4)
    ran: list[str] = []

    @app.task(topic="plain")
    def plain(n: int) -> None:
        ran.append(f"plain-{n}")

    @app.task(topic="ordered", key="key", ordered=True)
    def ordered(key: str, n: int) -> None:
        ran.append(f"{key}-{n}")

    group = app.task_group
    keys = app.keys
    app.redis.set(keys.group_config("plain", group), "not a hash")
    app.redis.hset(keys.group_config("ordered", group), "until_ms", "soon")
    app.redis.set(keys.members("ordered", group), "not a sorted set")
    broken = [keys.partition("ordered", p) for p in range(3)]
    app.redis.rpush(broken[0].fence(group), "not a counter")
    app.redis.set(broken[1].fence(group), "not a number")
    app.redis.rpush(broken[2].owner(group), "not a lease")
    by_partition = {taskq.partition_for(k, 4): k for k in "abcdefghijklmnop"}
    plain.send(1)
    ordered.send(by_partition[3], 1)

    caplog.set_level(logging.WARNING, logger="taskq")
    with running(Worker(app)):
        wait_for(lambda: sorted(ran) == sorted(["plain-1", f"{by_partition[3]}-1"]))
    errors = "\n".join(
        r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR
    )
    for key in (
        keys.group_config("plain", group),
        keys.group_config("ordered", group),
        keys.members("ordered", group),
        broken[0].fence(group),
        broken[1].fence(group),
        broken[2].owner(group),
    ):
        assert key in errors, key


# -- Redis restarts ---------------------------------------------------------------


@pytest.fixture
def persistent_redis(tmp_path: Any) -> Iterator[RedisServer]:
    yield from _redis_server(tmp_path, persistent=True)


def test_a_retry_waiting_in_redis_survives_a_restart(
    persistent_redis: RedisServer, make_app: Any, running: Any, until: Any
) -> None:
    app = make_app(persistent_redis.url)
    attempts: list[int] = []

    @app.task(topic="jobs", retries=1, backoff=2.0)
    def flaky(ctx: taskq.Context) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")

    flaky.send()
    with running(Worker(app)):
        until(lambda: attempts == [1])
        until(
            lambda: sum(
                app.redis.zcard(app.keys.partition("jobs", p).delayed) for p in range(4)
            )
        )
    persistent_redis.restart()
    with running(Worker(app)):
        until(lambda: attempts == [1, 2], timeout=10)
        until(lambda: pending(app, "jobs") == 0)
    assert dead_letters(app, "jobs") == []


def test_a_worker_rides_out_a_redis_restart(
    persistent_redis: RedisServer, make_app: Any, running: Any, until: Any
) -> None:
    app = make_app(persistent_redis.url)
    ran: list[int] = []

    @app.task(topic="jobs")
    def job(n: int) -> None:
        ran.append(n)

    with running(Worker(app)):
        job.send(1)
        until(lambda: ran == [1])
        persistent_redis.kill()
        time.sleep(1.0)
        persistent_redis.start()
        job.send(2)
        until(lambda: ran == [1, 2], timeout=15)


def test_a_producer_facing_a_dead_redis_fails_in_bounded_time(make_app: Any) -> None:
    # A server that accepts connections and never answers.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        app = make_app(
            f"redis://127.0.0.1:{silent.getsockname()[1]}/0", socket_timeout=0.5
        )

        @app.task
        def job() -> None: ...

        started = time.monotonic()
        with pytest.raises(taskq.ConnectionError, match="cannot reach Redis"):
            job.send()
        assert time.monotonic() - started < 5
    finally:
        silent.close()


@pytest.fixture
def own_redis(tmp_path: Any) -> Iterator[RedisServer]:
    """A redis-server of the test's own, which it may stop (SIGSTOP)."""
    yield from _redis_server(tmp_path, persistent=False)


def _redis_server(tmp_path: Any, *, persistent: bool) -> Iterator[RedisServer]:
    binary = find_redis_server()
    if binary is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(binary, tmp_path, persistent=persistent)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.process.send_signal(signal.SIGCONT)
    server.stop()


def test_a_second_signal_stops_a_worker_whose_redis_hangs(
    own_redis: RedisServer, namespace: str
) -> None:
    server = own_redis
    assert server.process is not None
    import tests.apps.counter as counter

    app = bind_app(counter.app, server.url, namespace)
    starts = f"{namespace}:test:starts"
    worker = worker_process("tests.apps.counter:app", server.url, namespace, "-c", "2")
    try:
        counter.record.send_many(
            [{"key": f"k{n}", "n": n, "sleep": 60} for n in range(2)]
        )
        wait_for(lambda: app.redis.llen(starts) == 2, timeout=20)
        server.process.send_signal(signal.SIGSTOP)
        worker.send_signal(signal.SIGTERM)
        time.sleep(1.5)  # past the grace for a signal delivered twice
        worker.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        output = worker.communicate(timeout=30)[0].decode()
        assert time.monotonic() - signalled < 6.0, output
        assert worker.returncode == 0, output
        assert "lease runs out" in output
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        server.process.send_signal(signal.SIGCONT)
        app.close()


# -- leases ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_long_task_is_never_taken_over_while_it_runs(
    counter: Any, redis_url: str, namespace: str
) -> None:
    """A 30-second task, a 3-second lease and an idle second worker."""
    app = counter.app
    runs_key = counter.RUNS
    procs = []
    try:
        counter.record.send("k", 1, sleep=30.0)
        for _ in range(2):
            procs.append(
                worker_process(
                    "tests.apps.counter:app",
                    redis_url,
                    namespace,
                    "--lease",
                    "3",
                )
            )
        wait_for(lambda: app.redis.hget(runs_key, "1"), timeout=45, interval=0.2)
        time.sleep(2)
        assert app.redis.hget(runs_key, "1") == b"1"
        assert app.redis.llen(counter.STARTS) == 1
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()


# -- chaos -----------------------------------------------------------------------


@pytest.mark.slow
def test_chaos_kills_and_a_redis_restart_lose_nothing(
    persistent_redis: RedisServer, namespace: str, counter: Any
) -> None:
    """3 workers over 20,000 tasks; one SIGKILLed every ~2 s and started
    again; Redis restarted once. Every task runs; none is stuck."""
    url = persistent_redis.url
    app = bind_app(counter.app, url, namespace)
    total = 20_000
    counter.record.send_many(
        [{"key": f"k{n % 50}", "n": n, "sleep": 0.01} for n in range(total)]
    )
    env = {"TASKQ_TEST_RETRIES": "20"}
    args = ("--lease", "2", "-c", "8", "--shutdown-timeout", "2")
    procs = [
        worker_process("tests.apps.counter:app", url, namespace, *args, env=env)
        for _ in range(3)
    ]
    runs_key = counter.RUNS
    rng = random.Random(7)
    started = time.monotonic()
    restarted = False
    kills = 0
    try:
        while True:
            done = _count(app, runs_key)
            if done >= total:
                break
            assert time.monotonic() - started < 150, f"only {done} of {total} ran"
            time.sleep(2.0)
            victim = rng.randrange(len(procs))
            procs[victim].kill()
            procs[victim].wait()
            assert procs[victim].stdout is not None
            procs[victim].stdout.close()
            kills += 1
            if not restarted and kills == 3:
                persistent_redis.kill()
                time.sleep(1.0)
                persistent_redis.start()
                restarted = True
            procs[victim] = worker_process(
                "tests.apps.counter:app", url, namespace, *args, env=env
            )
        wait_for(lambda: pending(app, "jobs") == 0, timeout=30, interval=0.2)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except Exception:
                proc.kill()
            assert proc.stdout is not None
            proc.stdout.close()
    counts = [int(v) for v in app.redis.hvals(runs_key)]
    assert len(counts) == total
    assert max(counts) <= 5
    assert kills >= 3 and restarted
    assert dead_letters(app, "jobs") == []


def _count(app: TaskQ, key: str) -> int:
    try:
        return int(app.redis.hlen(key))
    except (redis.ConnectionError, taskq.ConnectionError):
        return 0


def test_a_stream_replaced_under_held_entries_stops_only_its_partition(
    redis_app: TaskQ, running: Any
) -> None:
    """Renewing the entries of a stream that became another type fails;
    those entries are dropped, and the worker's other partitions go on
    (before, the failed renewal kept every delivery held back)."""
    app = redis_app
    app.topic("jobs", partitions=2)
    ran: list[int] = []

    @app.task(topic="jobs", retries=0, lease=3.0)
    def job(n: int, sleep: float = 0.0) -> None:
        time.sleep(sleep)
        ran.append(n)

    def add(partition: int, n: int, sleep: float) -> None:
        payload = job.signature.dump(job.signature.validate({"n": n, "sleep": sleep}))
        app.redis.xadd(
            app.keys.partition("jobs", partition).stream,
            {b"task": job.name.encode(), b"payload": payload},
        )

    with running(Worker(app, concurrency=1, prefetch=3)):
        add(0, 1, 3.5)
        add(0, 2, 0)
        add(0, 3, 0)
        time.sleep(0.5)
        broken = app.keys.partition("jobs", 0).stream
        app.redis.delete(broken)
        app.redis.set(broken, "not a stream")
        for n in range(10, 15):
            add(1, n, 0)
        wait_for(lambda: set(range(10, 15)) <= set(ran), timeout=15)


def test_a_batch_is_not_written_twice_when_redis_stalls(
    own_redis: RedisServer, namespace: str
) -> None:
    """A send_many whose reply does not come within the socket timeout
    raises; it does not send the batch again (the server may have taken
    it, and would then hold every message twice)."""
    server = own_redis
    assert server.process is not None
    app = TaskQ(server.url, namespace=namespace)
    app.topic("jobs", partitions=4)

    @app.task(topic="jobs")
    def job(n: int, pad: str) -> None: ...

    items = [{"n": n, "pad": "x" * 2000} for n in range(1000)]
    job.send_many(items[:1])
    returned = 1
    # Stalled a little longer than the socket timeout (5 s): a batch sent
    # again after the timeout would reach the server once it goes on.
    stop = threading.Timer(0.05, server.process.send_signal, (signal.SIGSTOP,))
    go_on = threading.Timer(6.0, server.process.send_signal, (signal.SIGCONT,))
    try:
        stop.start()
        go_on.start()
        with pytest.raises(taskq.ConnectionError):
            for _ in range(20):
                returned += len(job.send_many(items))
    finally:
        stop.join()
        go_on.join()
        server.process.send_signal(signal.SIGCONT)
    time.sleep(1.0)  # the server works off what was written to it meanwhile
    written = sum(
        app.redis.xlen(app.keys.partition("jobs", p).stream) for p in range(4)
    )
    # At most the batch in flight went in without its ids being returned.
    assert returned <= written <= returned + len(items)
    app.close()
