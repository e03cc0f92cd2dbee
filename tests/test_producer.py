"""Producing: validation before writing, routing, batches, options."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field

import taskq
from taskq import TaskQ, partition_for


def _lengths(app: TaskQ, topic: str) -> list[int]:
    return [
        app.redis.xlen(app.keys.partition(topic, p).stream)
        for p in range(app.partitions(topic))
    ]


def test_send_writes_one_entry_and_returns_its_id(app: TaskQ) -> None:
    @app.task(topic="mail", key="to")
    def send_email(to: str, subject: str) -> None: ...

    message_id = send_email.send("a@example.org", subject="Hi")
    topic, partition, entry_id = message_id.split(":")
    assert topic == "mail"
    assert int(partition) == partition_for("a@example.org", 4)
    [(stored_id, fields)] = app.redis.xrange(
        app.keys.partition("mail", int(partition)).stream
    )
    assert stored_id.decode() == entry_id
    assert fields[b"task"] == send_email.name.encode()
    assert fields[b"key"] == b"a@example.org"
    assert fields[b"payload"] == b'{"to":"a@example.org","subject":"Hi"}'


def test_wrong_type_raises_before_anything_is_written(app: TaskQ) -> None:
    @app.task(topic="mail")
    def greet(name: str, times: Annotated[int, Field(ge=1)]) -> None: ...

    app.partitions("mail")
    with pytest.raises(taskq.ValidationError) as caught:
        greet.send(name="d", times=0)
    assert "greet" in str(caught.value) and "times" in str(caught.value)
    with pytest.raises(taskq.ValidationError, match="name"):
        greet.send(name=5, times=1)
    with pytest.raises(taskq.ValidationError, match="times"):
        greet.send("x")
    with pytest.raises(taskq.ValidationError, match=r"unexpected|extra|not permitted"):
        greet.send("x", 1, colour="red")
    with pytest.raises(taskq.ValidationError):
        greet.send_many([{"name": "ok", "times": 1}, {"name": "bad", "times": "many"}])
    assert _lengths(app, "mail") == [0, 0, 0, 0]
    assert isinstance(caught.value, taskq.TaskqError)


class Address(BaseModel):
    street: str
    zip: str


def test_pydantic_models_travel_as_json(app: TaskQ) -> None:
    @app.task(topic="t")
    def ship(address: Address, when: datetime) -> None: ...

    ship.send({"street": "Main", "zip": "1"}, when=datetime(2026, 1, 1, tzinfo=UTC))
    payloads = [
        f[b"payload"]
        for p in range(4)
        for _, f in app.redis.xrange(app.keys.partition("t", p).stream)
    ]
    assert payloads == [
        b'{"address":{"street":"Main","zip":"1"},"when":"2026-01-01T00:00:00Z"}'
    ]


def test_keyless_messages_spread_evenly(app: TaskQ) -> None:
    @app.task(topic="spread")
    def job(n: int) -> None: ...

    for n in range(40):
        job.send(n)
    assert _lengths(app, "spread") == [10, 10, 10, 10]


def test_one_key_one_partition(app: TaskQ) -> None:
    @app.task(topic="keyed", key="user")
    def job(user: str, n: int) -> None: ...

    other = next(
        k
        for k in ("a", "b", "c", "d", "e")
        if partition_for(k, 4) != partition_for("u-1", 4)
    )
    for n in range(20):
        job.send("u-1", n)
    job.options(key=other).send("u-1", 99)
    lengths = _lengths(app, "keyed")
    assert lengths[partition_for("u-1", 4)] == 20
    assert lengths[partition_for(other, 4)] == 1


def test_send_many_is_one_round_trip_per_batch(app: TaskQ, monkeypatch: Any) -> None:
    @app.task(topic="bulk")
    def job(n: int) -> None: ...

    import taskq.producer

    app.partitions("bulk")
    executions = []
    for name in ("_pipelined", "_on_one_connection"):
        original = getattr(taskq.producer, name)

        def counting(client: Any, commands: Any, original: Any = original) -> Any:
            executions.append(len(commands))
            return original(client, commands)

        monkeypatch.setattr(taskq.producer, name, counting)
    ids = job.send_many([{"n": n} for n in range(2500)] + [(n,) for n in range(10)])
    assert len(ids) == len(set(ids)) == 2510
    assert executions == [1000, 1000, 510]
    assert sum(_lengths(app, "bulk")) == 2510


def test_send_many_routes_by_key_and_returns_the_stored_ids(app: TaskQ) -> None:
    def key_of(args: dict[str, Any]) -> int | None:
        return None if args["n"] % 3 == 0 else args["n"] % 5

    @app.task(topic="routed", key=key_of)
    def job(n: int, label: str = "x") -> None: ...

    ids = job.send_many([(n,) for n in range(30)] + [{"n": 31, "label": "y"}])
    assert len(ids) == 31
    for n, message_id in zip([*range(30), 31], ids, strict=True):
        _, partition, entry_id = message_id.split(":")
        stream = app.keys.partition("routed", int(partition)).stream
        [(_, fields)] = app.redis.xrange(stream, entry_id, entry_id)
        assert json.loads(fields[b"payload"])["n"] == n
        if n % 3:
            assert fields[b"key"] == str(n % 5).encode()
            assert int(partition) == partition_for(str(n % 5), 4)
        else:
            assert b"key" not in fields
    with pytest.raises(taskq.ValidationError, match=r"item 1: .*takes 2 arguments"):
        job.send_many([(1,), (1, "a", "extra")])


def test_payload_too_large(app: TaskQ) -> None:
    small = TaskQ(app.url, namespace=app.keys.namespace, max_payload_bytes=100)

    @small.task(topic="big")
    def job(blob: str) -> None: ...

    with pytest.raises(taskq.PayloadTooLarge) as caught:
        job.send("x" * 200)
    assert caught.value.size > 200 and caught.value.limit == 100
    assert "job" in str(caught.value) and "100" in str(caught.value)
    assert _lengths(small, "big") == [0, 0, 0, 0]


def test_publish_raw_events(app: TaskQ) -> None:
    message_id = app.publish("signups", {"user_id": 7}, key=7)
    topic, partition, _ = message_id.split(":")
    assert (topic, int(partition)) == ("signups", partition_for("7", 4))
    with pytest.raises(taskq.ValidationError, match="signups"):
        app.publish("signups", {"when": object()})


def test_delayed_send_options_are_checked(app: TaskQ) -> None:
    @app.task(topic="later")
    def job(n: int) -> None: ...

    with pytest.raises(ValueError, match="aware"):
        job.options(eta=datetime(2030, 1, 1)).send(1)
    with pytest.raises(ValueError, match="delay"):
        job.options(delay=-1).send(1)
    with pytest.raises(ValueError, match="not both"):
        job.options(delay=1, eta=datetime.now(UTC)).send(1)
    message_id = job.options(delay=60).send(1)
    assert message_id.startswith("later:")
    job.options(eta=datetime.now(UTC) + timedelta(hours=1)).send(2)
    delayed = sum(
        app.redis.zcard(app.keys.partition("later", p).delayed) for p in range(4)
    )
    assert delayed == 2
    assert _lengths(app, "later") == [0, 0, 0, 0]


NON_FINITE = [float("nan"), float("inf"), float("-inf")]


@pytest.mark.parametrize("value", NON_FINITE, ids=["nan", "inf", "-inf"])
def test_nan_and_infinity_are_refused_before_anything_is_written(
    app: TaskQ, value: float
) -> None:
    class Reading(BaseModel):
        level: float
        extra: Any = None

    app.topic("numbers", partitions=1)

    @app.task(topic="numbers")
    def scale(factor: float, labels: dict[str, Any] | None = None) -> None: ...

    for call in (
        lambda: scale.send(factor=value),
        lambda: scale.send(factor=1.0, labels={"x": [value]}),
        lambda: scale.send_many([{"factor": 1.0}, {"factor": value}]),
        lambda: scale.options(key="k").send(factor=value),
        lambda: app.publish("readings", {"level": value}),
        lambda: app.publish("readings", Reading(level=1.0, extra={"x": value})),
    ):
        with pytest.raises(taskq.ValidationError, match=r"finite|JSON"):
            call()
    for delay in (value, float("nan")):
        with pytest.raises(taskq.ValidationError, match="finite number of seconds"):
            scale.options(delay=delay).send(factor=1.0)
    with pytest.raises(taskq.ValidationError, match="wait"):
        scale.options(wait=float("nan")).send(factor=1.0)
    assert _lengths(app, "numbers") == [0]
    assert app.redis.zcard(app.keys.partition("numbers", 0).delayed) == 0
    assert sum(_lengths(app, "readings")) == 0
    # Strings that merely look like the constants are fine.
    scale.send(factor=1.5, labels={"NaN": "Infinity"})
    assert _lengths(app, "numbers") == [1]


def test_a_stream_key_of_the_wrong_type_is_a_clear_error(app: TaskQ) -> None:
    app.topic("jobs", partitions=1)

    @app.task(topic="jobs")
    def job(n: int) -> None: ...

    app.topic("events", partitions=1)
    pk = app.keys.partition("jobs", 0)
    events = app.keys.partition("events", 0).stream
    app.redis.set(pk.stream, "not a stream")
    app.redis.set(events, "not a stream")
    app.redis.rpush(pk.delayed, "not a sorted set")
    for call, key in (
        (lambda: job.send(1), pk.stream),
        (lambda: job.send_many([{"n": 1}, {"n": 2}]), pk.stream),
        (lambda: app.publish("events", {"n": 1}), events),
    ):
        with pytest.raises(taskq.WrongKeyType, match=key) as caught:
            call()
        assert "string, not a stream" in str(caught.value)
    with pytest.raises(taskq.WrongKeyType, match=pk.delayed):
        job.options(delay=5).send(1)


def test_a_refused_batch_says_what_was_written(app: TaskQ) -> None:
    app.topic("jobs", partitions=2)

    @app.task(topic="jobs", key="k")
    def job(k: str) -> None: ...

    broken = next(k for k in "abcdefgh" if partition_for(k, 2) == 0)
    fine = [k for k in "abcdefgh" if partition_for(k, 2) == 1][:3]
    app.redis.set(app.keys.partition("jobs", 0).stream, "not a stream")
    with pytest.raises(taskq.WrongKeyType) as caught:
        job.send_many([(broken,), *((k,) for k in fine)])
    assert len(caught.value.sent) == 3
    assert app.redis.xlen(app.keys.partition("jobs", 1).stream) == 3


def test_a_topics_hash_of_the_wrong_type_is_a_clear_error(app: TaskQ) -> None:
    @app.task(topic="jobs")
    def job(n: int) -> None: ...

    app.redis.set(app.keys.topics, "not a hash")
    with pytest.raises(taskq.WrongKeyType, match=app.keys.topics) as caught:
        job.send(1)
    assert "string, not a hash" in str(caught.value)
    with pytest.raises(taskq.WrongKeyType):
        taskq.Worker(app).start()


def test_topic_partition_count_is_stored_and_checked(app: TaskQ, make_app: Any) -> None:
    app.topic("orders", partitions=8)
    assert app.partitions("orders") == 8
    other = make_app(app.url)
    assert other.partitions("orders") == 8  # undeclared: uses the stored count
    third = make_app(app.url)
    third.topic("orders", partitions=3)
    with pytest.raises(taskq.TopicMismatchError, match="8 partitions"):
        third.partitions("orders")


def test_plain_call_runs_inline(app: TaskQ) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    assert add(2, 3) == 5


def test_bad_decorator_options_fail_at_import_time(app: TaskQ) -> None:
    @app.task(name="unique")
    def one() -> None: ...

    with pytest.raises(taskq.ConfigurationError, match="unique"):

        @app.task(name="unique")
        def two() -> None: ...

    with pytest.raises(taskq.ConfigurationError, match="names no parameter"):

        @app.task(key="nope")
        def keyed(user: str) -> None: ...

    with pytest.raises(taskq.ConfigurationError, match="retries"):

        @app.task(retries=-1)
        def negative() -> None: ...

    with pytest.raises(taskq.ConfigurationError, match="timeout"):

        @app.task(timeout=0)
        def instant() -> None: ...

    with pytest.raises(taskq.ConfigurationError, match=r"\*args"):

        @app.task
        def variadic(*args: int) -> None: ...

    with pytest.raises(ValueError, match="topic name"):

        @app.task(topic="no spaces")
        def spaced() -> None: ...

    with pytest.raises(taskq.ConfigurationError, match="backoff"):

        @app.task(backoff="soon")  # type: ignore[arg-type]
        def odd() -> None: ...

    with pytest.raises(taskq.ConfigurationError, match="topic"):
        app.consumer(lambda e: None)  # type: ignore[arg-type]


def test_unreachable_redis_is_one_clear_error(make_app: Any) -> None:
    from tests.support import free_port

    app = make_app(f"redis://127.0.0.1:{free_port()}/0")

    @app.task
    def job() -> None: ...

    with pytest.raises(
        taskq.ConnectionError, match=r"cannot reach Redis at redis://127\.0\.0\.1"
    ):
        job.send()


def test_url_comes_from_the_environment(monkeypatch: Any) -> None:
    monkeypatch.setenv("TASKQ_URL", "memory://from-env")
    assert TaskQ().url == "memory://from-env"
    monkeypatch.delenv("TASKQ_URL")
    assert TaskQ().url == "redis://localhost:6379/0"
