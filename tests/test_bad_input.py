"""Bad entries in a stream are set aside with their reason; good ones run.

Case 14 of the shared scenarios: streams are written by old producers, new
producers, operators and other tools, so a worker must survive anything it
reads, in one batch with valid work, and across restarts.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated, Any

import pytest
from pydantic import Field

import taskq
from taskq import TaskQ, Worker
from taskq.scripts import Scripts, pack_message
from tests.test_worker import dead_letters, pending


def test_malformed_entries_are_dead_lettered_once(
    app: TaskQ, caplog: pytest.LogCaptureFixture
) -> None:
    app.topic("jobs", partitions=1)
    ran: list[tuple[str, int]] = []

    @app.task(topic="jobs")
    def greet(name: str, times: Annotated[int, Field(ge=1)]) -> None:
        ran.append((name, times))

    stream = app.keys.partition("jobs", 0).stream
    greet.send(name="a", times=1)  # E1
    ids = [
        app.redis.xadd(stream, fields)
        for fields in (
            {"task": "billing.legacy_export", "payload": '{"x": 1}'},  # E2
            {"task": "greet", "payload": os.urandom(16) + b"\xff"},  # E3
            {"payload": '{"name": "a", "times": 1}'},  # E4
            {"task": "greet", "payload": '{"name": "b", "times": 0}'},  # E5
        )
    ]
    greet.send(name="c", times=2)  # E6

    caplog.set_level(logging.ERROR, logger="taskq")
    Worker(app, concurrency=1, read_batch=10, burst=True).run(install_signals=False)

    assert ran == [("a", 1), ("c", 2)]
    records = dead_letters(app, "jobs")
    assert [r[b"reason"] for r in records] == [
        b"unknown_task",
        b"decode_error",
        b"invalid_envelope",
        b"validation_error",
    ]
    assert [r[b"source_id"] for r in records] == ids
    assert all(r[b"attempts"] == b"1" for r in records)
    assert b"billing.legacy_export" in records[0][b"error"]
    assert b"times" in records[3][b"error"]
    # The original fields are kept byte for byte, for a replay after a fix.
    assert (
        records[1][b"message:payload"]
        == app.redis.xrange(stream, ids[1], ids[1])[0][1][b"payload"]
    )
    assert pending(app, "jobs") == 0

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 4
    for record, entry_id, reason in zip(
        errors,
        ids,
        ["unknown_task", "decode_error", "invalid_envelope", "validation_error"],
        strict=False,
    ):
        text = record.getMessage()
        assert stream in text and entry_id.decode() in text and reason in text
        assert record.exc_info is None  # no traceback flood

    # A restart neither runs nor dead-letters anything again.
    Worker(app, concurrency=1, burst=True).run(install_signals=False)
    assert ran == [("a", 1), ("c", 2)]
    assert len(dead_letters(app, "jobs")) == 4

    # The producer side rejects the same mistakes before writing.
    length = app.redis.xlen(stream)
    with pytest.raises(taskq.ValidationError):
        greet.send(name="d", times=0)
    with pytest.raises(taskq.ValidationError):
        greet.send(name=5)
    assert app.redis.xlen(stream) == length


def test_an_oversized_entry_is_set_aside(app: TaskQ, make_app: Any) -> None:
    app.topic("jobs", partitions=1)
    small = make_app(app.url, max_payload_bytes=64)
    small.topic("jobs", partitions=1)
    ran: list[str] = []

    @small.task(topic="jobs")
    def echo(text: str) -> None:
        ran.append(text)

    stream = app.keys.partition("jobs", 0).stream
    app.redis.xadd(stream, {"task": "echo", "payload": '{"text": "' + "x" * 100 + '"}'})
    app.redis.xadd(stream, {"task": "echo", "payload": '{"text": "short"}'})
    Worker(small, burst=True).run(install_signals=False)
    assert ran == ["short"]
    [record] = dead_letters(app, "jobs")
    assert record[b"reason"] == b"payload_too_large"
    assert b"64 bytes" in record[b"error"]


def test_a_consumer_rejects_events_it_cannot_validate(app: TaskQ) -> None:
    seen: list[int] = []

    @app.consumer("numbers", group="sum")
    def add(event: int) -> None:
        seen.append(event)

    app.publish("numbers", 1)
    app.publish("numbers", "not a number")
    app.publish("numbers", 2)
    Worker(app, burst=True).run(install_signals=False)
    assert sorted(seen) == [1, 2]
    [record] = dead_letters(app, "numbers")
    assert record[b"reason"] == b"validation_error"
    assert record[b"group"] == b"sum"


def test_a_key_of_the_wrong_type_does_not_stop_the_other_partitions(
    redis_app: TaskQ, running: Any, until: Any
) -> None:
    app = redis_app
    ran: list[int] = []

    @app.task(topic="mixed", key="k")
    def job(k: str, n: int) -> None:
        ran.append(n)

    app.partitions("mixed")
    broken = app.keys.partition("mixed", 0).stream
    app.redis.set(broken, "not a stream")
    keys = [k for k in "abcdefghij" if taskq.partition_for(k, 4) != 0][:3]
    for n, k in enumerate(keys):
        job.send(k, n)
    with running(Worker(app)):
        until(lambda: len(ran) == 3, timeout=10)
    assert sorted(ran) == [0, 1, 2]


def _packed(*parts: bytes) -> bytes:
    return b"".join(b"%d:%s" % (len(p), p) for p in parts)


def test_malformed_delayed_members_are_set_aside_and_the_rest_move(
    app: TaskQ, running: Any, until: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app.topic("jobs", partitions=1)
    ran: list[int] = []

    @app.task(topic="jobs")
    def count(n: int) -> None:
        ran.append(n)

    pk = app.keys.partition("jobs", 0)
    good = [
        pack_message(b"g%d" % n, {b"task": b"count", b"payload": b'{"n": %d}' % n})
        for n in (1, 2)
    ]
    bad = [
        b"garbage",  # no length prefix
        _packed(b"tag", b"task"),  # an odd number of fields and values
        _packed(b"tag"),  # no fields at all
        b"99:short",  # runs past its end
        _packed(b"tag", *[b"f%d" % i for i in range(9000)]),  # unpack() limit
    ]
    # Due at once, ordered so the bad ones sit between the good ones.
    members = [good[0], *bad, good[1]]
    app.redis.zadd(pk.delayed, {m: i for i, m in enumerate(members)})

    caplog.set_level(logging.ERROR, logger="taskq")
    with running(Worker(app)):
        until(lambda: sorted(ran) == [1, 2], timeout=10)
        until(lambda: len(dead_letters(app, "jobs")) == len(bad), timeout=10)
    assert app.redis.zcard(pk.delayed) == 0
    records = dead_letters(app, "jobs")
    assert all(r[b"reason"] == b"invalid_envelope" for r in records)
    assert [r[b"delayed_member"] for r in records] == bad
    assert all(r[b"topic"] == b"jobs" and r[b"partition"] == b"0" for r in records)
    errors = [r[b"error"] for r in records]
    assert b"odd number" in errors[1] and b"no fields" in errors[2]
    assert b"more than" in errors[4]
    assert any("Set aside" in r.getMessage() for r in caplog.records)


def test_moving_delayed_members_keeps_the_dead_letter_limit(
    make_app: Any, redis_url: str
) -> None:
    app = make_app(redis_url, dead_letter_max_len=5)
    app.topic("jobs", partitions=1)
    pk = app.keys.partition("jobs", 0)
    app.redis.zadd(pk.delayed, {b"bad-%d" % i: 0 for i in range(300)})
    scripts = Scripts(app.redis)
    handled, next_ms, set_aside = scripts.move_due(pk, 500, app.dead_letter_max_len)
    assert (handled, next_ms, set_aside) == (300, -1, 300)
    # Approximate trimming (MAXLEN ~) keeps about the limit, never all.
    assert app.redis.xlen(pk.dead) < 300


def test_an_entry_with_absurdly_many_fields_is_set_aside(
    app: TaskQ, running: Any, until: Any
) -> None:
    app.topic("jobs", partitions=1)
    ran: list[int] = []

    @app.task(topic="jobs")
    def count(n: int) -> None:
        ran.append(n)

    stream = app.keys.partition("jobs", 0).stream
    fields: dict[bytes, bytes] = {b"task": b"count", b"payload": b'{"n": 1}'}
    fields.update({b"f%d" % i: b"v" for i in range(10_000)})
    [bad] = [app.redis.xadd(stream, fields)]  # type: ignore[arg-type]
    count.send(n=2)
    with running(Worker(app)):
        until(lambda: ran == [2] and dead_letters(app, "jobs"), timeout=10)
        until(lambda: pending(app, "jobs") == 0, timeout=10)
    [record] = dead_letters(app, "jobs")
    assert record[b"reason"] == b"invalid_envelope"
    assert record[b"source_id"] == bad
    assert b"10002 fields" in record[b"error"]
    kept = [f for f in record if f.startswith(b"message:")]
    assert len(kept) == 64
    assert record[b"message:task"] == b"count"


def test_an_unknown_task_name_is_escaped_once(app: TaskQ) -> None:
    app.topic("jobs", partitions=1)

    @app.task(topic="jobs")
    def known() -> None: ...

    stream = app.keys.partition("jobs", 0).stream
    app.redis.xadd(stream, {"task": b"\xff\xfe", "payload": b"{}"})
    app.redis.xadd(stream, {"task": "caf\u00e9\n", "payload": b"{}"})
    Worker(app, burst=True).run(install_signals=False)
    records = dead_letters(app, "jobs")
    assert [r[b"reason"] for r in records] == [b"unknown_task"] * 2
    assert b"no task named '\\xff\\xfe' is registered" in records[0][b"error"]
    assert "no task named 'café\\n'" in records[1][b"error"].decode()
    assert records[0][b"task"] == b"\xff\xfe"  # the name itself, unchanged
