"""Consuming: the worker's contract, on memory:// and on a real Redis."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

import taskq
from taskq import Context, TaskQ, Worker


def pending(app: TaskQ, topic: str, group: str | None = None) -> int:
    group = group or app.task_group
    total = 0
    for p in range(app.partitions(topic)):
        stream = app.keys.partition(topic, p).stream
        if app.redis.exists(stream):
            total += app.redis.xpending(stream, group)["pending"]
    return total


def dead_letters(app: TaskQ, topic: str) -> list[dict[bytes, bytes]]:
    return [
        fields
        for p in range(app.partitions(topic))
        for _, fields in app.redis.xrange(app.keys.partition(topic, p).dead)
    ]


def test_tasks_run_once_and_are_acknowledged(app: TaskQ) -> None:
    runs: Counter[int] = Counter()
    lock = threading.Lock()

    @app.task(topic="jobs")
    def job(n: int) -> None:
        with lock:
            runs[n] += 1

    job.send_many([{"n": n} for n in range(200)])
    Worker(app, concurrency=4, burst=True).run(install_signals=False)
    assert runs == Counter(range(200))
    assert pending(app, "jobs") == 0


def test_every_group_receives_every_event(app: TaskQ) -> None:
    seen: dict[str, list[int]] = {"mail": [], "stats": []}

    @app.consumer("signups", group="mail")
    def mail(event: dict[str, int]) -> None:
        seen["mail"].append(event["user_id"])

    @app.consumer("signups", group="stats")
    def stats(event: dict[str, int]) -> None:
        seen["stats"].append(event["user_id"])

    for user_id in range(10):
        app.publish("signups", {"user_id": user_id}, key=user_id)
    Worker(app, burst=True).run(install_signals=False)
    assert sorted(seen["mail"]) == sorted(seen["stats"]) == list(range(10))
    assert pending(app, "signups", "mail") == pending(app, "signups", "stats") == 0


def test_a_worker_can_serve_one_group(app: TaskQ) -> None:
    seen: list[str] = []

    @app.consumer("events", group="a")
    def a(event: Any) -> None:
        seen.append("a")

    @app.consumer("events", group="b")
    def b(event: Any) -> None:
        seen.append("b")

    app.publish("events", 1)
    Worker(app, burst=True, groups=["b"]).run(install_signals=False)
    assert seen == ["b"]


def test_async_handlers_and_context(app: TaskQ) -> None:
    contexts: list[Context] = []

    @app.task(topic="async", key="user", retries=2)
    async def notify(user: str, ctx: Context) -> None:
        await asyncio.sleep(0.01)
        contexts.append(ctx)

    message_id = notify.send("u1")
    Worker(app, burst=True).run(install_signals=False)
    [ctx] = contexts
    assert ctx.message_id == message_id
    assert (ctx.topic, ctx.key, ctx.attempt, ctx.max_attempts) == ("async", "u1", 1, 3)
    assert ctx.group == app.task_group


def test_failures_are_retried_with_the_same_message_id(
    app: TaskQ, running: Any, until: Any
) -> None:
    attempts: list[tuple[int, str]] = []

    @app.task(topic="flaky", retries=3, backoff=0.05)
    def flaky(ctx: Context) -> None:
        attempts.append((ctx.attempt, ctx.message_id))
        if ctx.attempt < 3:
            raise RuntimeError("not yet")

    message_id = flaky.send()
    with running(Worker(app)):
        until(lambda: len(attempts) == 3)
        until(lambda: pending(app, "flaky") == 0)
    assert attempts == [(1, message_id), (2, message_id), (3, message_id)]
    assert dead_letters(app, "flaky") == []


def test_exhausted_retries_end_in_one_dead_letter(
    app: TaskQ, running: Any, until: Any
) -> None:
    @app.task(topic="calls", key="k", retries=2, backoff=0.01)
    def call_api(k: str, n: int) -> None:
        raise RuntimeError("upstream 503")

    call_api.send("a", 1)
    with running(Worker(app)):
        until(lambda: dead_letters(app, "calls"))
        until(lambda: pending(app, "calls") == 0)
    [record] = dead_letters(app, "calls")
    assert record[b"reason"] == b"retries_exhausted"
    assert record[b"task"] == b"call_api"
    assert record[b"key"] == b"a"
    assert record[b"attempts"] == b"3"
    assert record[b"error_type"] == b"RuntimeError"
    assert record[b"error"] == b"upstream 503"
    assert b"Traceback" in record[b"traceback"]
    assert record[b"message:payload"] == b'{"k":"a","n":1}'
    assert int(record[b"first_attempt"]) <= int(record[b"last_attempt"])


def test_a_dead_letter_is_found_by_its_id_or_its_message_id(
    app: TaskQ, running: Any, until: Any
) -> None:
    from taskq import deadletters

    @app.task(topic="calls", retries=0)
    def fail(n: int) -> None:
        raise RuntimeError("no")

    message_id = fail.send(1)
    with running(Worker(app)):
        until(lambda: dead_letters(app, "calls"))
    [letter] = list(deadletters.iterate(app, "calls"))
    assert deadletters.find(app, letter.ref) == letter
    assert deadletters.find(app, message_id) == letter
    assert deadletters.find(app, "calls:0:1-1") is None


def test_explicit_retry_with_delay(app: TaskQ, running: Any, until: Any) -> None:
    starts: list[float] = []

    @app.task(topic="retry", retries=1)
    def wait_then_retry() -> None:
        starts.append(time.monotonic())
        if len(starts) == 1:
            raise taskq.Retry(delay=0.5)

    wait_then_retry.send()
    with running(Worker(app)):
        until(lambda: len(starts) == 2)
    assert 0.45 <= starts[1] - starts[0] <= 2.0


def test_delayed_send_runs_after_its_delay(
    app: TaskQ, running: Any, until: Any
) -> None:
    ran: list[float] = []

    @app.task(topic="later")
    def later() -> None:
        ran.append(time.monotonic())

    with running(Worker(app)):
        sent = time.monotonic()
        later.options(delay=0.6).send()
        until(lambda: ran, timeout=5)
    assert 0.55 <= ran[0] - sent <= 2.0


def test_time_limit(app: TaskQ, running: Any, until: Any) -> None:
    finished: list[int] = []

    @app.task(topic="slow", timeout=0.2, retries=0)
    def slow() -> None:
        for _ in range(100):
            time.sleep(0.05)
        finished.append(1)

    @app.task(topic="slow", timeout=0.2, retries=0)
    async def slow_async() -> None:
        await asyncio.sleep(5)

    slow.send()
    slow_async.send()
    with running(Worker(app)):
        until(lambda: len(dead_letters(app, "slow")) == 2, timeout=5)
    assert finished == []
    assert {r[b"error_type"] for r in dead_letters(app, "slow")} == {
        b"TimeLimitExceeded"
    }


def test_graceful_stop_finishes_running_tasks(app: TaskQ, until: Any) -> None:
    started = threading.Event()
    finished: list[int] = []

    @app.task(topic="long")
    def long(n: int) -> None:
        started.set()
        time.sleep(0.5)
        finished.append(n)

    long.send(1)
    worker = Worker(app, concurrency=1)
    thread = threading.Thread(target=worker.run, kwargs={"install_signals": False})
    thread.start()
    assert started.wait(5)
    worker.stop()
    thread.join(10)
    assert finished == [1]
    assert pending(app, "long") == 0


def test_burst_waits_for_a_retry_that_is_due_at_once(app: TaskQ) -> None:
    attempts: list[int] = []

    @app.task(topic="again", retries=1, backoff=0)
    def flaky(ctx: Context) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("once")

    for _ in range(5):
        flaky.send()
    Worker(app, burst=True).run(install_signals=False)
    assert sorted(attempts) == [1] * 5 + [2] * 5
