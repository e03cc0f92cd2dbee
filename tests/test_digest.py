"""Digests: collection, windows, one call per key and tick (case 17)."""

from __future__ import annotations

import random
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from taskq import ConfigurationError, Context, TaskQ, Worker, deadletters, defaults
from taskq.clock import ManualClock
from taskq.cron import to_ms
from taskq.digest import Digest, close, window_sizes
from taskq.scheduler import Scheduler
from tests.scheduling import utc, walk


class Note(BaseModel):
    user_id: str
    text: str


def berlin(text: str) -> datetime:
    return datetime.fromisoformat(text + "+01:00")


class Calls:
    """What a digest handler was called with, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: (key, texts, tick, attempt, succeeded)
        self.all: list[tuple[str, list[str], datetime | None, int, bool]] = []

    def add(self, key: str, events: list[Note], ctx: Context, ok: bool) -> None:
        with self.lock:
            self.all.append(
                (key, [e.text for e in events], ctx.scheduled_at, ctx.attempt, ok)
            )

    def succeeded(self) -> list[tuple[str, list[str], datetime | None]]:
        with self.lock:
            return [(k, texts, tick) for k, texts, tick, _, ok in self.all if ok]

    def attempts(self, key: str) -> list[tuple[list[str], int, bool]]:
        with self.lock:
            return [
                (texts, attempt, ok)
                for k, texts, _, attempt, ok in self.all
                if k == key
            ]


def publish(
    app: TaskQ,
    clock: ManualClock,
    when: datetime,
    user: str,
    text: str,
    until: Any,
    digest: Digest,
) -> None:
    """Publish an event at ``when`` and wait until it is collected."""
    clock.set(when)
    before = window_sizes(app, digest)[0]
    app.publish("notifications", Note(user_id=user, text=text), key=user)
    until(lambda: window_sizes(app, digest)[0] > before, what=f"{text} to be collected")


# -- case 17 --------------------------------------------------------------------


def test_each_event_in_one_window_and_one_call_per_key(
    app: TaskQ, running: Any, until: Any
) -> None:
    clock = ManualClock(berlin("2026-12-07T00:00:00"))
    app.clock = clock
    calls = Calls()
    u1_may_finish = threading.Event()

    @app.digest(
        "notifications",
        key="user_id",
        cron="0 8 * * *",
        tz="Europe/Berlin",
        retries=2,
        backoff=0,
    )
    def daily_mail(user_id: str, events: list[Note], ctx: Context) -> None:
        if user_id == "u2" and ctx.attempt == 1:
            calls.add(user_id, events, ctx, ok=False)
            raise RuntimeError("mail server busy")
        if user_id == "u1" and [e.text for e in events] == ["e1", "e2", "e3"]:
            # T1's handler is still running when e4 comes in.
            assert u1_may_finish.wait(10)
        calls.add(user_id, events, ctx, ok=True)

    t1 = berlin("2026-12-08T08:00:00")
    t2 = berlin("2026-12-09T08:00:00")
    schedulers = [Scheduler(app), Scheduler(app)]
    with running(Worker(app, concurrency=4)):
        walk(clock, schedulers, berlin("2026-12-07T00:00:00"))
        publish(
            app, clock, berlin("2026-12-07T10:00:00"), "u1", "e1", until, daily_mail
        )
        publish(
            app, clock, berlin("2026-12-07T12:00:00"), "u2", "f1", until, daily_mail
        )
        publish(
            app, clock, berlin("2026-12-07T23:59:59"), "u1", "e2", until, daily_mail
        )
        publish(
            app, clock, berlin("2026-12-08T07:59:59.900"), "u1", "e3", until, daily_mail
        )
        clock.set(t1)
        fired = [f for s in schedulers for f in s.run_pending()]
        assert sum(f.batches for f in fired) == 2 and sum(f.events for f in fired) == 4
        publish(
            app, clock, berlin("2026-12-08T08:00:00.500"), "u1", "e4", until, daily_mail
        )
        u1_may_finish.set()
        until(lambda: len(calls.succeeded()) == 2, what="T1's calls")

        # Running T1 again, by hand and by the other scheduler, adds nothing.
        assert not Scheduler(app).run_tick("daily_mail", t1).written
        assert close(
            app,
            schedulers[1].scripts,
            daily_mail,
            to_ms(t1),
            0,
            budget=100,
            renew=lambda: None,
        ) == (0, 0)
        assert [f for s in schedulers for f in s.run_pending()] == []
        # After T1 only e4 is kept.
        assert window_sizes(app, daily_mail) == (1, 0)
        assert stored_events(app, daily_mail) == ["e4"]

        walk(clock, schedulers, t2, timedelta(hours=1))
        until(lambda: len(calls.succeeded()) == 3, what="T2's call")
        assert window_sizes(app, daily_mail) == (0, 0)

    assert sorted(calls.succeeded()) == sorted(
        [
            ("u1", ["e1", "e2", "e3"], t1.astimezone(UTC)),
            ("u2", ["f1"], t1.astimezone(UTC)),
            ("u1", ["e4"], t2.astimezone(UTC)),
        ]
    )
    assert calls.attempts("u2") == [(["f1"], 1, False), (["f1"], 2, True)]
    assert calls.attempts("u3") == []


def stored_events(app: TaskQ, digest: Digest) -> list[str]:
    texts = []
    for partition in range(app.partitions(digest.topic)):
        items = app.redis.hvals(
            app.keys.partition(digest.topic, partition).digest(digest.name).items
        )
        texts += [
            Note.model_validate_json(item.split(b" ", 2)[2]).text for item in items
        ]
    return sorted(texts)


def test_a_batch_that_fails_every_attempt_is_dead_lettered_whole(
    app: TaskQ, running: Any, until: Any
) -> None:
    clock = ManualClock(utc("2026-12-07T00:00Z"))
    app.clock = clock
    calls = Calls()

    @app.digest("notifications", key="user_id", cron="0 8 * * *", retries=1, backoff=0)
    def fragile(user_id: str, events: list[Note], ctx: Context) -> None:
        calls.add(user_id, events, ctx, ok=False)
        if user_id == "u1":
            raise RuntimeError("template broken")

    scheduler = Scheduler(app)
    with running(Worker(app, concurrency=2)):
        walk(clock, scheduler, utc("2026-12-07T00:00Z"))
        publish(app, clock, utc("2026-12-07T09:00Z"), "u1", "a", until, fragile)
        publish(app, clock, utc("2026-12-07T10:00Z"), "u1", "b", until, fragile)
        publish(app, clock, utc("2026-12-07T11:00Z"), "u2", "c", until, fragile)
        walk(clock, scheduler, utc("2026-12-08T08:00Z"), timedelta(hours=1))
        until(
            lambda: len(dead_letters(app)) == 1 and window_sizes(app, fragile) == (0, 0)
        )
        publish(app, clock, utc("2026-12-08T09:00Z"), "u1", "d", until, fragile)
        walk(clock, scheduler, utc("2026-12-09T08:00Z"), timedelta(hours=1))
        until(lambda: len(dead_letters(app)) == 2)

    first, second = dead_letters(app)
    assert first[b"reason"] == b"retries_exhausted"
    assert first[b"attempts"] == b"2"
    assert first[b"key"] == b"u1"
    assert first[b"message:tick"] == str(to_ms(utc("2026-12-08T08:00Z"))).encode()
    assert b'"text":"a"' in first[b"message:payload"]
    assert b'"text":"b"' in first[b"message:payload"]
    # The dead batch's events are not handed over again.
    assert second[b"message:tick"] == str(to_ms(utc("2026-12-09T08:00Z"))).encode()
    assert b'"text":"d"' in second[b"message:payload"]
    assert b'"text":"a"' not in second[b"message:payload"]
    assert [texts for texts, _, _ in calls.attempts("u1")] == [
        ["a", "b"],
        ["a", "b"],
        ["d"],
        ["d"],
    ]
    assert window_sizes(app, fragile) == (0, 0)

    # Replaying the dead batch hands over the same events again.
    [ref] = [
        letter.ref
        for letter in deadletters.iterate(app, "notifications")
        if letter.record[b"message:tick"] == first[b"message:tick"]
    ]
    deadletters.replay(app, deadletters.find(app, ref))  # type: ignore[arg-type]
    with running(Worker(app, concurrency=2)):
        until(lambda: len(dead_letters(app)) == 2 and len(calls.attempts("u1")) == 6)
    assert [texts for texts, _, _ in calls.attempts("u1")[4:]] == [
        ["a", "b"],
        ["a", "b"],
    ]


def dead_letters(app: TaskQ) -> list[dict[bytes, bytes]]:
    return [
        fields
        for p in range(app.partitions("notifications"))
        for _, fields in app.redis.xrange(app.keys.partition("notifications", p).dead)
    ]


def test_a_missed_tick_coalesced_gets_every_event_since_the_last_close(
    app: TaskQ, running: Any, until: Any
) -> None:
    clock = ManualClock(utc("2026-12-01T07:30Z"))
    app.clock = clock
    calls = Calls()
    missed: list[int] = []

    @app.digest("notifications", key="user_id", cron="0 8 * * *")
    def daily_digest(user_id: str, events: list[Note], ctx: Context) -> None:
        missed.append(ctx.missed)
        calls.add(user_id, events, ctx, ok=True)

    with running(Worker(app, concurrency=2)):
        walk(clock, Scheduler(app), utc("2026-12-01T09:00Z"), timedelta(minutes=30))
        # No scheduler runs from here until 12-04 09:30; workers still collect.
        publish(app, clock, utc("2026-12-01T10:00Z"), "u1", "mon", until, daily_digest)
        publish(app, clock, utc("2026-12-02T12:00Z"), "u1", "tue", until, daily_digest)
        publish(app, clock, utc("2026-12-03T20:00Z"), "u2", "wed", until, daily_digest)
        publish(app, clock, utc("2026-12-04T07:00Z"), "u1", "thu", until, daily_digest)
        publish(app, clock, utc("2026-12-04T08:30Z"), "u1", "late", until, daily_digest)
        clock.set(utc("2026-12-04T09:30Z"))
        [fired] = Scheduler(app).run_pending()
        assert (fired.tick, fired.missed) == (utc("2026-12-04T08:00Z"), 3)
        until(lambda: len(calls.succeeded()) == 2)
    assert sorted(calls.succeeded()) == [
        ("u1", ["mon", "tue", "thu"], utc("2026-12-04T08:00Z")),
        ("u2", ["wed"], utc("2026-12-04T08:00Z")),
    ]
    assert missed == [3, 3]
    assert window_sizes(app, daily_digest) == (1, 0)


# -- many events, many keys -------------------------------------------------------


def test_a_key_with_many_events_is_handed_over_in_chunks(
    app: TaskQ, running: Any, until: Any, monkeypatch: Any
) -> None:
    clock = ManualClock(utc("2026-12-07T00:00Z"))
    app.clock = clock
    sizes: list[int] = []
    received: list[int] = []
    lock = threading.Lock()

    @app.digest("notifications", key="user_id", cron="0 8 * * *", max_events=100)
    def chunked(user_id: str, events: list[dict[str, Any]]) -> None:
        with lock:
            sizes.append(len(events))
            received.extend(int(e["n"]) for e in events)

    scheduler = Scheduler(app)
    walk(clock, scheduler, utc("2026-12-07T10:00Z"), timedelta(hours=1))
    for n in range(1234):
        app.publish("notifications", {"user_id": "busy", "n": n}, key="busy")
    with running(Worker(app, concurrency=4)):
        until(lambda: window_sizes(app, chunked)[0] == 1234, timeout=30)
        seals = Counter[int]()
        original = scheduler.scripts.digest_seal

        def counting(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            seals[args[0].partition] += 1
            return result

        monkeypatch.setattr(scheduler.scripts, "digest_seal", counting)
        monkeypatch.setattr(defaults, "DIGEST_SEAL_BUDGET", 250)
        clock.set(utc("2026-12-08T08:00Z"))
        [fired] = scheduler.run_pending()
        assert (fired.batches, fired.events) == (13, 1234)
        until(lambda: len(received) == 1234, timeout=30)
    assert max(sizes) == 100 and sum(sizes) == 1234 and len(sizes) == 13
    assert sorted(received) == list(range(1234))
    # The busy key's partition was closed in several bounded steps.
    assert max(seals.values()) >= 5


def test_digest_soak_seven_days(app: TaskQ, running: Any, until: Any) -> None:
    """1,000 events over 20 users and 7 simulated days: each event in
    exactly one successful call, in its tick's window, at most one
    successful call per user and tick."""
    rng = random.Random(17)
    start = berlin("2026-12-07T00:00:00")
    clock = ManualClock(start)
    app.clock = clock
    calls: list[tuple[str, list[int], datetime]] = []
    failures = Counter[str]()
    lock = threading.Lock()

    @app.digest(
        "notifications",
        key="user_id",
        cron="0 8 * * *",
        tz="Europe/Berlin",
        retries=3,
        backoff=0,
    )
    def soak(user_id: str, events: list[dict[str, Any]], ctx: Context) -> None:
        assert ctx.scheduled_at is not None
        # A fifth of first attempts fail, to mix retries in.
        if ctx.attempt == 1 and rng.random() < 0.2:
            with lock:
                failures[user_id] += 1
            raise RuntimeError("transient")
        with lock:
            calls.append((user_id, [int(e["n"]) for e in events], ctx.scheduled_at))

    users = [f"u{n}" for n in range(20)]
    times = sorted(
        start + timedelta(seconds=rng.uniform(0, 7 * 86400)) for _ in range(1000)
    )
    events = [(n, when, rng.choice(users)) for n, when in enumerate(times)]
    collected_at: dict[int, datetime] = {}
    schedulers = [Scheduler(app), Scheduler(app)]
    ticks = [berlin(f"2026-12-{day:02d}T08:00:00") for day in range(7, 15)]
    pending = list(events)
    with running(Worker(app, concurrency=4)):
        walk(clock, schedulers, start)
        for tick in ticks:
            batch = [e for e in pending if e[1] < tick]
            pending = pending[len(batch) :]
            for n, when, user in batch:
                clock.set(when)
                # A tenth go out without the digest key as message key, so
                # they are moved to their key's partition first.
                key = None if n % 10 == 0 else user
                app.publish("notifications", {"user_id": user, "n": n}, key=key)
                collected_at[n] = when
            expected = sum(1 for _, when, _ in events if when < tick)
            until(
                lambda expected=expected: collected_count(app, soak, calls) == expected,
                timeout=30,
                what="collection",
            )
            walk(clock, schedulers, tick, timedelta(hours=6))
        until(
            lambda: (
                sum(len(c[1]) for c in calls)
                == sum(1 for e in events if e[1] < ticks[-1])
            ),
            timeout=30,
        )
    delivered = Counter(n for _, numbers, _ in calls for n in numbers)
    assert set(delivered.values()) == {1}
    assert set(delivered) == {n for n, when, _ in events if when < ticks[-1]}
    per_user_tick = Counter((user, tick) for user, _, tick in calls)
    assert set(per_user_tick.values()) == {1}
    owner = {n: user for n, _, user in events}
    for user, numbers, tick in calls:
        previous = tick - timedelta(days=1)
        assert all(owner[n] == user for n in numbers)
        assert all(previous <= collected_at[n] < tick for n in numbers)
    assert sum(failures.values()) > 0


def collected_count(app: TaskQ, digest: Digest, calls: list[Any]) -> int:
    open_events, sealed = window_sizes(app, digest)
    return open_events + sealed + sum(len(c[1]) for c in calls)


# -- collecting exactly once ---------------------------------------------------------


def test_collecting_recognises_copies_and_stale_workers(app: TaskQ) -> None:
    clock = ManualClock(utc("2026-12-07T09:00Z"))
    app.clock = clock
    app.topic("notifications", partitions=1)

    @app.digest("notifications", key="user_id", cron="0 8 * * *")
    def once(user_id: str, events: list[Note]) -> None: ...

    pk = app.keys.partition("notifications", 0)
    message = app.publish("notifications", Note(user_id="u1", text="x"), key="u1")
    entry = message.rsplit(":", 1)[1]
    app.redis.xgroup_create(pk.stream, "once", id="0")
    app.redis.xreadgroup("once", "worker-a", {pk.stream: ">"})
    decoded = once.decode(app.redis.xrange(pk.stream)[0][1][b"payload"])

    def context(worker: str) -> Context:
        return Context(
            topic="notifications",
            partition=0,
            message_id=message,
            key="u1",
            attempt=1,
            max_attempts=4,
            group="once",
            worker=worker,
            entry_id=entry,
        )

    once.call(decoded, context("worker-a"))
    once.call(decoded, context("worker-a"))  # delivered again: no second copy
    assert window_sizes(app, once) == (1, 0)
    # worker-b takes the entry over; worker-a, waking up, must not collect.
    app.redis.xclaim(pk.stream, "once", "worker-b", 0, [entry])
    app.redis.hdel(pk.digest("once").items, message)
    app.redis.delete(pk.digest("once").open, pk.digest("once").keys)
    once.call(decoded, context("worker-a"))
    assert window_sizes(app, once) == (0, 0)
    once.call(decoded, context("worker-b"))
    assert window_sizes(app, once) == (1, 0)
    # The batch's end acknowledges the collecting copy if its worker died
    # before doing so, so it is never collected again.
    clock.set(utc("2026-12-08T08:00Z"))
    Scheduler(app).run_tick("once", utc("2026-12-08T08:00Z"))
    [batch_id] = [
        e for e, f in app.redis.xrange(pk.stream) if f.get(b"group") == b"once"
    ]
    batch = once.decode(
        app.redis.xrange(pk.stream, batch_id, batch_id)[0][1][b"payload"]
    )
    once.call(batch, context("worker-c"))
    assert app.redis.xpending(pk.stream, "once")["pending"] == 0
    assert window_sizes(app, once) == (0, 0)


def test_bad_digests_are_rejected_when_decorated(app: TaskQ) -> None:
    with pytest.raises(ConfigurationError, match="annotate 'events' as list"):

        @app.digest("n", key="user_id", cron="0 8 * * *")
        def untyped(user_id: str, events: Note) -> None: ...

    with pytest.raises(ConfigurationError, match="takes \\(key, events\\)"):

        @app.digest("n", key="user_id", cron="0 8 * * *")
        def too_few(events: list[Note]) -> None: ...

    with pytest.raises(ConfigurationError, match="key='user' is no field of Note"):

        @app.digest("n", key="user", cron="0 8 * * *")
        def wrong_key(user_id: str, events: list[Note]) -> None: ...

    with pytest.raises(ConfigurationError, match="invalid cron expression"):
        app.digest("n", key="user_id", cron="0 25 * * *")
    with pytest.raises(ConfigurationError, match="max_events must be"):

        @app.digest("n", key="user_id", cron="0 8 * * *", max_events=0)
        def none(user_id: str, events: list[Note]) -> None: ...


def test_an_async_digest(app: TaskQ, running: Any, until: Any) -> None:
    clock = ManualClock(utc("2026-12-07T09:00Z"))
    app.clock = clock
    got: list[tuple[str, list[str]]] = []

    @app.digest("notifications", key="user_id", cron="0 8 * * *")
    async def gentle(user_id: str, events: list[Note]) -> None:
        got.append((user_id, [e.text for e in events]))

    scheduler = Scheduler(app)
    scheduler.run_pending()
    with running(Worker(app)):
        publish(app, clock, utc("2026-12-07T10:00Z"), "u1", "hi", until, gentle)
        clock.set(utc("2026-12-08T08:00Z"))
        scheduler.run_pending()
        until(lambda: got == [("u1", ["hi"])])


def test_a_batch_whose_worker_died_on_its_last_attempt_leaves_nothing_behind(
    app: TaskQ, running: Any, until: Any
) -> None:
    clock = ManualClock(utc("2026-12-07T09:00Z"))
    app.clock = clock
    app.topic("notifications", partitions=1)
    ran: list[str] = []

    @app.digest("notifications", key="user_id", cron="0 8 * * *", retries=0, lease=0.5)
    def once_only(user_id: str, events: list[Note]) -> None:
        ran.append(user_id)

    scheduler = Scheduler(app)
    scheduler.run_pending()
    with running(Worker(app)):
        publish(app, clock, utc("2026-12-07T10:00Z"), "u1", "x", until, once_only)
    clock.set(utc("2026-12-08T08:00Z"))
    scheduler.run_pending()
    # A worker takes the batch and dies while running its only attempt.
    stream = app.keys.partition("notifications", 0).stream
    app.redis.xreadgroup("once_only", "ghost", {stream: ">"})
    with running(Worker(app)):
        until(lambda: len(dead_letters(app)) == 1, timeout=10)
        until(lambda: window_sizes(app, once_only) == (0, 0))
    [letter] = dead_letters(app)
    assert letter[b"reason"] == b"worker_lost"
    assert b'"text":"x"' in letter[b"message:payload"]
    assert ran == []


def test_a_call_gets_its_events_in_the_order_they_were_published(
    app: TaskQ, running: Any, until: Any
) -> None:
    clock = ManualClock(utc("2026-12-07T00:00Z"))
    app.clock = clock
    received: list[list[int]] = []

    @app.digest("notifications", key="user_id", cron="0 8 * * *")
    def in_order(user_id: str, events: list[dict[str, Any]]) -> None:
        received.append([int(e["n"]) for e in events])

    scheduler = Scheduler(app)
    walk(clock, scheduler, utc("2026-12-07T10:00Z"), timedelta(hours=1))
    for n in range(60):
        app.publish("notifications", {"user_id": "u1", "n": n}, key="u1")
    # Eight handler threads collect side by side, in whatever order.
    with running(Worker(app, concurrency=8)):
        until(lambda: window_sizes(app, in_order)[0] == 60, timeout=30)
        clock.set(utc("2026-12-08T08:00Z"))
        scheduler.run_pending()
        until(lambda: received, timeout=30)
    assert received == [list(range(60))]
