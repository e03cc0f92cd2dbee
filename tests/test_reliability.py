"""Nothing lost, nothing stuck: workers killed, stopped and restarted.

These tests run workers as real processes against the suite's own
redis-server and kill them with real signals. Each follows one of the
shared scenarios (cases 01, 03, 08 and 16) and checks its stated outcome.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from taskq import TaskQ
from tests.support import bind_app, wait_for, worker_process

pytestmark = [pytest.mark.redis, pytest.mark.slow]

APP = "tests.apps.reliability:app"


class Workers:
    """Worker processes of one test, and the events their tasks wrote."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.namespace = namespace
        self.procs: list[subprocess.Popen[bytes]] = []
        import redis

        self.redis = redis.Redis.from_url(url)

    def start(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        proc = worker_process(APP, self.url, self.namespace, *args, env=env)
        self.procs.append(proc)
        return proc

    def events(self) -> list[dict[str, Any]]:
        raw = self.redis.lrange(f"{self.namespace}:test:events", 0, -1)
        return [json.loads(item) for item in raw]

    def of(self, event: str, task: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["event"] == event and e["task"] == task]

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout:
                proc.stdout.close()
        self.redis.close()


@pytest.fixture
def workers(redis_url: str, namespace: str) -> Iterator[Workers]:
    group = Workers(redis_url, namespace)
    yield group
    group.stop_all()


@pytest.fixture
def rel(redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The reliability test app, bound to this test's Redis and namespace."""
    import tests.apps.reliability as module

    app: TaskQ = bind_app(module.app, redis_url, namespace)
    monkeypatch.setattr(module, "EVENTS", f"{namespace}:test:events")
    yield module
    app.close()


def consumers(app: TaskQ, topic: str, partition: int = 0) -> list[dict[str, Any]]:
    stream = app.keys.partition(topic, partition).stream
    return list(app.redis.xinfo_consumers(stream, app.task_group))


def total_pending(app: TaskQ, topic: str) -> int:
    return sum(
        app.redis.xpending(app.keys.partition(topic, p).stream, app.task_group)[
            "pending"
        ]
        for p in range(app.partitions(topic))
    )


def dead(app: TaskQ, topic: str) -> list[dict[bytes, bytes]]:
    return [
        fields
        for p in range(app.partitions(topic))
        for _, fields in app.redis.xrange(app.keys.partition(topic, p).dead)
    ]


# -- case 01: a SIGKILLed worker's entry is reclaimed and finished ------------


def test_entry_of_a_killed_worker_is_reclaimed(rel: Any, workers: Workers) -> None:
    for n in range(1, 7):
        rel.slow.send(f"k{n}", n, 2.0)
    w1 = workers.start("--lease", "3", "-c", "1")
    workers.start("--lease", "3", "-c", "1")
    first = wait_for(
        lambda: [e for e in workers.of("start", "slow") if e["pid"] == w1.pid],
        timeout=20,
    )[0]
    os.kill(w1.pid, signal.SIGKILL)
    t_kill = time.time()
    m = first["n"]

    wait_for(lambda: len(workers.of("end", "slow")) >= 6, timeout=40)
    ends = workers.of("end", "slow")
    starts = workers.of("start", "slow")
    assert sorted(e["n"] for e in ends) == [1, 2, 3, 4, 5, 6]
    m_starts = [e for e in starts if e["n"] == m]
    assert [e["pid"] == w1.pid for e in m_starts] == [True, False]
    assert [e["attempt"] for e in m_starts] == [1, 2]
    assert all(e["attempt"] == 1 for e in starts if e["n"] != m)
    assert sorted(e["n"] for e in starts if e["n"] != m) == [
        n for n in range(1, 7) if n != m
    ]
    [m_end] = [e for e in ends if e["n"] == m]
    timeline = [
        (round(e["t"] - t_kill, 2), e["event"], e["n"], e["pid"] == w1.pid)
        for e in workers.events()
    ]
    assert m_end["t"] <= t_kill + 7.0, timeline
    app = rel.app
    wait_for(lambda: total_pending(app, "jobs") == 0, timeout=5)
    dead_consumer = [
        c for c in consumers(app, "jobs") if f"-{w1.pid}-" in c["name"].decode()
    ]
    assert all(c["pending"] == 0 for c in dead_consumer)


def test_a_killed_recoverer_does_not_stop_recovery(rel: Any, workers: Workers) -> None:
    for n in range(1, 7):
        rel.slow.send(f"k{n}", n, 2.0)
    w1 = workers.start("--lease", "3", "-c", "1")
    w2 = workers.start("--lease", "3", "-c", "1")
    wait_for(
        lambda: any(e["pid"] == w2.pid for e in workers.of("start", "slow")), timeout=20
    )
    os.kill(w2.pid, signal.SIGSTOP)
    w3 = workers.start("--lease", "3", "-c", "1")
    first = wait_for(
        lambda: [e for e in workers.of("start", "slow") if e["pid"] == w1.pid],
        timeout=20,
    )[0]
    m = first["n"]
    os.kill(w1.pid, signal.SIGKILL)
    wait_for(
        lambda: [
            e for e in workers.of("start", "slow") if e["pid"] == w3.pid and e["n"] == m
        ],
        timeout=20,
    )
    os.kill(w3.pid, signal.SIGKILL)
    t_kill2 = time.time()
    os.kill(w2.pid, signal.SIGCONT)

    wait_for(lambda: [e for e in workers.of("end", "slow") if e["n"] == m], timeout=20)
    m_starts = [e for e in workers.of("start", "slow") if e["n"] == m]
    assert [e["pid"] for e in m_starts] == [w1.pid, w3.pid, w2.pid]
    assert [e["attempt"] for e in m_starts] == [1, 2, 3]
    [m_end] = [e for e in workers.of("end", "slow") if e["n"] == m]
    assert m_end["pid"] == w2.pid
    assert m_end["t"] <= t_kill2 + 7.0

    wait_for(
        lambda: {e["n"] for e in workers.of("end", "slow")} == set(range(1, 7)),
        timeout=30,
    )
    app = rel.app
    wait_for(lambda: total_pending(app, "jobs") == 0, timeout=10)
    # Nothing that coordinates workers is left without an expiry: only the
    # data itself (topics, streams, delayed sets, dead letters) persists.
    data = re.compile(
        rf"^{app.keys.namespace}:(topics|test:.*|{{[^}}]+}}:(stream|delayed|dead))$"
    )
    for key in app.redis.scan_iter(f"{app.keys.namespace}:*"):
        if not data.match(key.decode()):
            assert app.redis.ttl(key) > 0, f"{key.decode()} has no expiry"


def test_a_stalled_worker_does_not_run_what_was_taken_from_it(
    rel: Any, workers: Workers
) -> None:
    """A worker stopped (SIGSTOP) for longer than the lease, with entries
    read ahead, finds them done by another worker when it comes back: it
    runs none of them again."""
    for n in range(1, 7):
        rel.slow.send(f"k{n}", n, 0.5)
    w1 = workers.start("--lease", "2", "-c", "1", "--prefetch", "10")
    first = wait_for(lambda: workers.of("start", "slow"), timeout=20)[0]
    os.kill(w1.pid, signal.SIGSTOP)
    workers.start("--lease", "2", "-c", "2")
    wait_for(
        lambda: {e["n"] for e in workers.of("end", "slow")} == set(range(1, 7)),
        timeout=30,
    )
    os.kill(w1.pid, signal.SIGCONT)
    time.sleep(3.0)  # several lease renewals of the resumed worker
    assert [e["n"] for e in workers.of("start", "slow") if e["pid"] == w1.pid] == [
        first["n"]
    ]
    wait_for(lambda: total_pending(rel.app, "jobs") == 0, timeout=10)


# -- case 03: a poison message is dead-lettered after max attempts ----------


def _supervise(workers: Workers, until: Any, timeout: float, *args: str) -> None:
    """Keep one worker alive (restart it whenever it dies) until done."""
    deadline = time.monotonic() + timeout
    proc = workers.start(*args)
    while not until():
        assert time.monotonic() < deadline, "timed out"
        if proc.poll() is not None:
            proc = workers.start(*args)
        time.sleep(0.05)


@pytest.mark.parametrize("task", ["boom", "boom2"])
def test_a_poison_message_is_dead_lettered(
    rel: Any, workers: Workers, task: str
) -> None:
    getattr(rel, task).send("bad")
    started = time.monotonic()
    for i in range(5):
        rel.ok.send(f"g{i}", i)
    app = rel.app

    _supervise(
        workers,
        lambda: len(workers.of("end", "ok")) == 5 and dead(app, "jobs"),
        30,
        "--lease",
        "2",
        "-c",
        "1",
    )
    assert time.monotonic() - started <= 14
    poison_starts = workers.of("start", task)
    assert [e["attempt"] for e in poison_starts] == [1, 2, 3]
    assert sorted(e["n"] for e in workers.of("end", "ok")) == [0, 1, 2, 3, 4]
    [record] = dead(app, "jobs")
    assert record[b"task"] == task.encode()
    assert record[b"key"] == b"bad"
    assert record[b"attempts"] == b"3"
    assert record[b"message:payload"] == b'{"key":"bad"}'
    if task == "boom":
        assert record[b"reason"] == b"worker_lost"
        # The last attempt started when its worker got the entry.
        assert abs(int(record[b"last_attempt"]) / 1000 - poison_starts[-1]["t"]) < 1.5
    else:
        assert record[b"reason"] == b"retries_exhausted"
        assert record[b"error_type"] == b"MemoryError"
    wait_for(lambda: total_pending(app, "jobs") == 0, timeout=5)
    time.sleep(1.0)  # a fourth start would come within a reclaim period
    assert len(workers.of("start", task)) == 3

    listed = subprocess.run(
        [os.sys.executable, "-m", "taskq", "dlq", "list", APP],
        env={
            **os.environ,
            "TASKQ_URL": workers.url,
            "TASKQ_TEST_NAMESPACE": workers.namespace,
        },
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert task in listed and "bad" in listed and record[b"reason"].decode() in listed


# -- case 08: SIGTERM finishes running work and hands back the rest -----------


def test_sigterm_finishes_running_tasks_and_hands_back_the_rest(
    rel: Any, workers: Workers
) -> None:
    for n in range(1, 7):
        rel.slow.send(f"k{n}", n, 3.0)
    args = ("--lease", "60", "-c", "2", "--prefetch", "2", "--shutdown-timeout", "10")
    w1 = workers.start(*args)
    wait_for(lambda: len(workers.of("start", "slow")) >= 2, timeout=20)
    os.kill(w1.pid, signal.SIGTERM)
    t_term = time.time()
    running_at_term = {e["n"] for e in workers.of("start", "slow")}
    time.sleep(0.5)
    workers.start(*args)

    w1_output, _ = w1.communicate(timeout=20)
    t_exit = time.time()
    assert w1.returncode == 0
    log = w1_output.decode()
    assert "waited for 2 running task(s), handed back 2 unstarted entries" in log

    wait_for(lambda: len(workers.of("end", "slow")) >= 6, timeout=30)
    starts = workers.of("start", "slow")
    ends = workers.of("end", "slow")
    assert (
        sorted(e["n"] for e in starts)
        == sorted(e["n"] for e in ends)
        == [1, 2, 3, 4, 5, 6]
    )
    w1_starts = {e["n"] for e in starts if e["pid"] == w1.pid}
    assert w1_starts == running_at_term  # nothing new started after SIGTERM
    last_w1_end = max(e["t"] for e in ends if e["pid"] == w1.pid)
    assert t_exit <= last_w1_end + 1.5
    first_w2 = min(e["t"] for e in starts if e["pid"] != w1.pid)
    assert first_w2 <= t_term + 4.0
    assert max(e["t"] for e in ends) <= t_term + 24.0


def test_sigterm_with_a_short_grace_hands_back_running_tasks(
    rel: Any, workers: Workers
) -> None:
    for n in range(1, 7):
        rel.slow.send(f"k{n}", n, 5.0)
    args = ("--lease", "60", "-c", "2", "--prefetch", "2", "--shutdown-timeout", "1")
    w1 = workers.start(*args)
    wait_for(lambda: len(workers.of("start", "slow")) >= 2, timeout=20)
    interrupted = {e["n"] for e in workers.of("start", "slow")}
    os.kill(w1.pid, signal.SIGTERM)
    time.sleep(0.5)
    workers.start(*args)
    w1_output, _ = w1.communicate(timeout=20)
    t_exit = time.time()
    assert w1.returncode == 0
    assert (
        "2 task(s) still running (after the 1 s shutdown timeout)" in w1_output.decode()
    )

    wait_for(lambda: len(workers.of("end", "slow")) >= 6, timeout=40)
    ends = workers.of("end", "slow")
    assert sorted(e["n"] for e in ends) == [1, 2, 3, 4, 5, 6]
    # The interrupted tasks come back at once, as new entries behind the
    # four W2 had already read (two running, two read ahead): they start
    # when W2 gets to them, long before their 60 s lease would run out.
    for n in interrupted:
        again = [
            e for e in workers.of("start", "slow") if e["n"] == n and e["pid"] != w1.pid
        ]
        assert [e["attempt"] for e in again] == [2]
        assert again[0]["t"] <= t_exit + 2 * 5.0 + 3.0


# -- case 16: retries follow the backoff and end in one dead letter --------


def test_retries_follow_the_backoff_and_end_in_one_dead_letter(
    rel: Any, workers: Workers
) -> None:
    app = rel.app
    other = next(k for k in "bcdefgh" if _partition(k) != _partition("a"))
    workers.start("-c", "1")
    rel.call_api.options(key="a").send(1)
    first = wait_for(lambda: workers.of("end", "call_api"), timeout=20)[0]
    time.sleep(max(0.0, first["t"] + 0.5 - time.time()))
    rel.ping.options(key=other).send()
    pinged = time.time()
    wait_for(lambda: dead(app, "calls"), timeout=30)

    starts = workers.of("start", "call_api")
    ends = workers.of("end", "call_api")
    assert [e["attempt"] for e in starts] == [1, 2, 3, 4]
    gaps = [starts[i + 1]["t"] - ends[i]["t"] for i in range(3)]
    for gap, nominal in zip(gaps, [1, 2, 4], strict=True):
        assert nominal <= gap <= nominal + 1, gaps
    [record] = dead(app, "calls")
    assert record[b"task"] == b"call_api"
    assert record[b"message:payload"] == b'{"n":1}'
    assert record[b"key"] == b"a"
    assert record[b"attempts"] == b"4"
    assert (record[b"error_type"], record[b"error"]) == (
        b"RuntimeError",
        b"upstream 503",
    )
    assert int(record[b"first_attempt"]) / 1000 == pytest.approx(
        starts[0]["t"], abs=0.5
    )
    assert int(record[b"last_attempt"]) / 1000 == pytest.approx(starts[3]["t"], abs=0.5)
    assert workers.of("start", "ping")[0]["t"] <= pinged + 1.0
    assert total_pending(app, "calls") == 0
    time.sleep(3)
    assert len(workers.of("start", "call_api")) == 4


def test_a_pending_retry_survives_its_worker(rel: Any, workers: Workers) -> None:
    app = rel.app
    w1 = workers.start("-c", "1")
    rel.call_api.options(key="a").send(1)
    wait_for(lambda: len(workers.of("end", "call_api")) == 2, timeout=20)
    os.kill(w1.pid, signal.SIGTERM)
    second_end = workers.of("end", "call_api")[1]["t"]
    w1.wait(10)
    time.sleep(max(0.0, second_end + 2.0 - time.time()))
    workers.start("-c", "1")
    wait_for(lambda: dead(app, "calls"), timeout=30)
    starts = workers.of("start", "call_api")
    ends = workers.of("end", "call_api")
    assert [e["attempt"] for e in starts] == [1, 2, 3, 4]
    assert starts[2]["pid"] != w1.pid
    assert 2 <= starts[2]["t"] - ends[1]["t"] <= 4
    assert 4 <= starts[3]["t"] - ends[2]["t"] <= 5
    assert len(dead(app, "calls")) == 1


def test_an_explicit_retry_waits_its_countdown(rel: Any, workers: Workers) -> None:
    workers.start("-c", "1")
    rel.wait_then_retry.options(key="a").send()
    wait_for(lambda: len(workers.of("start", "wait_then_retry")) == 2, timeout=20)
    starts = workers.of("start", "wait_then_retry")
    ends = workers.of("end", "wait_then_retry")
    assert [e["attempt"] for e in starts] == [1, 2]
    assert 5.0 <= starts[1]["t"] - ends[0]["t"] <= 6.0
    time.sleep(0.5)
    assert dead(rel.app, "calls") == []


def _partition(key: str) -> int:
    from taskq import partition_for

    return partition_for(key, 2)
