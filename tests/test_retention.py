"""Streams do not grow forever, and nothing a group needs is trimmed."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import taskq
from taskq import TaskQ, Worker


def _length(app: TaskQ, topic: str) -> int:
    return sum(
        app.redis.xlen(app.keys.partition(topic, p).stream)
        for p in range(app.partitions(topic))
    )


def test_trimming_keeps_what_any_group_still_needs(app: TaskQ) -> None:
    app.topic("events", partitions=1)
    seen: dict[str, int] = {"fast": 0, "slow": 0}

    @app.consumer("events", group="fast")
    def fast(event: int) -> None:
        seen["fast"] += 1

    @app.consumer("events", group="slow")
    def slow(event: int) -> None:
        seen["slow"] += 1

    pk = app.keys.partition("events", 0)
    for n in range(10):
        app.publish("events", n)
    Worker(app, burst=True, groups=["fast"]).run(install_signals=False)
    assert seen == {"fast": 10, "slow": 0}
    # "slow" has its group (the worker made it) but has read nothing yet.
    app.redis.xgroup_create(pk.stream, "slow", id="0")
    assert app.scripts.trim(pk) == 0
    assert _length(app, "events") == 10

    Worker(app, burst=True, groups=["slow"]).run(install_signals=False)
    assert seen == {"fast": 10, "slow": 10}
    assert app.scripts.trim(pk) == 10
    assert _length(app, "events") == 0


def test_trimming_keeps_pending_entries(app: TaskQ) -> None:
    app.topic("jobs", partitions=1)
    pk = app.keys.partition("jobs", 0)
    app.redis.xgroup_create(pk.stream, "g", id="0", mkstream=True)
    for n in range(5):
        app.redis.xadd(pk.stream, {"payload": str(n)})
    delivered = app.redis.xreadgroup("g", "c", {pk.stream: ">"}, count=3)
    ids = [entry_id for entry_id, _ in delivered[0][1]]
    app.redis.xack(pk.stream, "g", ids[0], ids[2])  # the second stays pending
    assert app.scripts.trim(pk) == 1
    remaining = [entry_id for entry_id, _ in app.redis.xrange(pk.stream)]
    assert remaining[0] == ids[1]
    assert len(remaining) == 4


def test_a_full_partition_refuses_instead_of_dropping(app: TaskQ) -> None:
    app.topic("capped", partitions=1, max_len=3)

    @app.task(topic="capped")
    def job(n: int) -> None: ...

    for n in range(3):
        job.send(n)
    with pytest.raises(taskq.QueueFull) as caught:
        job.send(3)
    assert (caught.value.topic, caught.value.max_len) == ("capped", 3)
    with pytest.raises(taskq.QueueFull) as batch:
        job.send_many([{"n": 4}])
    assert batch.value.sent == []
    assert _length(app, "capped") == 3

    Worker(app, burst=True).run(install_signals=False)
    # Handled entries do not count: the next send trims them and goes in.
    job.send(5)
    assert _length(app, "capped") == 1


def test_a_producer_may_wait_for_room(app: TaskQ, running: Any) -> None:
    app.topic("capped", partitions=1, max_len=2)
    release = threading.Event()

    @app.task(topic="capped")
    def job(n: int) -> None:
        release.wait(5)

    job.send(1)
    job.send(2)
    with running(Worker(app, concurrency=1)):
        started = time.monotonic()
        threading.Timer(0.3, release.set).start()
        job.options(wait=10).send(3)
        assert 0.25 <= time.monotonic() - started < 10
    with pytest.raises(ValueError, match="wait"):
        job.options(wait=-1)


def test_departed_consumers_are_forgotten(app: TaskQ) -> None:
    app.topic("jobs", partitions=1)

    @app.task(topic="jobs")
    def job() -> None: ...

    for _ in range(3):
        job.send()
        Worker(app, burst=True).run(install_signals=False)
    pk = app.keys.partition("jobs", 0)
    assert len(app.redis.xinfo_consumers(pk.stream, app.task_group)) == 3
    assert app.scripts.forget_consumers(pk, app.task_group, idle_ms=0) == 3
    assert app.redis.xinfo_consumers(pk.stream, app.task_group) == []


def test_retention_keeps_recent_entries_for_replays(app: TaskQ) -> None:
    app.topic("kept", partitions=1, retention=3600)

    @app.consumer("kept", group="reader")
    def read(event: int) -> None: ...

    pk = app.keys.partition("kept", 0)
    for n in range(5):
        app.publish("kept", n)
    Worker(app, burst=True).run(install_signals=False)
    # Every group is done with them, but they are younger than an hour.
    assert app.scripts.trim(pk, 3600_000) == 0
    assert app.scripts.trim(pk, 0) == 5
    with pytest.raises(taskq.ConfigurationError, match="retention"):
        app.topic("bad", retention=0)
