"""Periodic jobs: once per tick, catch-up after downtime (case 10),
daylight saving through the scheduler (case 11), several schedulers."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from taskq import ConfigurationError, Context, TaskQ, Worker
from taskq.clock import ManualClock
from taskq.cron import to_ms
from taskq.scheduler import Scheduler
from taskq.schedules import Run
from tests.scheduling import job_runs, ticks, utc, walk

HOUR = timedelta(hours=1)


def hourly_app(app: TaskQ, start: str, **options: Any) -> tuple[ManualClock, list[Any]]:
    clock = ManualClock(utc(start))
    app.clock = clock
    seen: list[tuple[datetime | None, int]] = []

    @app.periodic("0 * * * *", **options)
    def hourly(ctx: Context) -> None:
        seen.append((ctx.scheduled_at, ctx.missed))

    return clock, seen


# -- case 10: downtime ---------------------------------------------------------


def test_downtime_runs_the_latest_missed_tick_once(app: TaskQ) -> None:
    clock, seen = hourly_app(app, "2026-12-08T09:30Z")
    walk(clock, Scheduler(app), utc("2026-12-08T10:59Z"))
    assert job_runs(app, "hourly") == [(utc("2026-12-08T10:00Z"), 0)]

    # Down from 10:59 to 13:30: 11:00, 12:00 and 13:00 were missed.
    clock.set(utc("2026-12-08T13:30Z"))
    second = Scheduler(app)
    second.run_pending()
    assert job_runs(app, "hourly")[1:] == [(utc("2026-12-08T13:00Z"), 3)]
    walk(clock, second, utc("2026-12-08T13:40Z"))
    assert len(job_runs(app, "hourly")) == 2

    # Stopped at 13:40, started at 13:50: nothing was missed.
    clock.set(utc("2026-12-08T13:50Z"))
    third = Scheduler(app)
    walk(clock, third, utc("2026-12-08T13:59:59Z"), timedelta(seconds=1))
    assert len(job_runs(app, "hourly")) == 2
    walk(clock, third, utc("2026-12-08T14:00Z"))
    assert job_runs(app, "hourly")[2:] == [(utc("2026-12-08T14:00Z"), 0)]

    Worker(app, burst=True).run(install_signals=False)
    assert seen == [
        (utc("2026-12-08T10:00Z"), 0),
        (utc("2026-12-08T13:00Z"), 3),
        (utc("2026-12-08T14:00Z"), 0),
    ]
    assert all(tick is not None and tick.tzinfo is not None for tick, _ in seen)


def test_a_flush_neither_bursts_nor_loses_a_tick(app: TaskQ) -> None:
    clock, _ = hourly_app(app, "2026-12-08T13:50Z")
    scheduler = Scheduler(app)
    walk(clock, scheduler, utc("2026-12-08T14:30Z"))
    assert ticks(app, "hourly") == [utc("2026-12-08T14:00Z")]

    app.redis.flushall()
    app.forget_partitions()
    walk(clock, scheduler, utc("2026-12-08T15:30Z"))
    assert job_runs(app, "hourly") == [(utc("2026-12-08T15:00Z"), 0)]

    # A scheduler started after the flush starts from its latest tick.
    app.redis.flushall()
    app.forget_partitions()
    clock.set(utc("2026-12-08T17:45Z"))
    walk(clock, Scheduler(app), utc("2026-12-08T18:00Z"))
    assert job_runs(app, "hourly") == [(utc("2026-12-08T18:00Z"), 0)]


def test_skip_runs_no_missed_tick(app: TaskQ) -> None:
    clock, _ = hourly_app(app, "2026-12-08T09:30Z", catchup="skip")
    walk(clock, Scheduler(app), utc("2026-12-08T10:59Z"))
    clock.set(utc("2026-12-08T13:30Z"))
    scheduler = Scheduler(app)
    scheduler.run_pending()
    assert ticks(app, "hourly") == [utc("2026-12-08T10:00Z")]
    walk(clock, scheduler, utc("2026-12-08T14:00Z"))
    assert job_runs(app, "hourly")[1:] == [(utc("2026-12-08T14:00Z"), 0)]


def test_all_runs_each_missed_tick_up_to_max_catchup(app: TaskQ) -> None:
    clock, _ = hourly_app(app, "2026-12-08T09:30Z", catchup="all", max_catchup=2)
    walk(clock, Scheduler(app), utc("2026-12-08T10:59Z"))
    clock.set(utc("2026-12-08T13:30Z"))
    Scheduler(app).run_pending()
    # 11:00 is dropped; the oldest run counts it.
    assert job_runs(app, "hourly")[1:] == [
        (utc("2026-12-08T12:00Z"), 2),
        (utc("2026-12-08T13:00Z"), 1),
    ]


def test_a_tick_a_little_late_is_not_missed(app: TaskQ) -> None:
    clock, _ = hourly_app(app, "2026-12-08T12:30Z")
    Scheduler(app).run_pending()
    clock.set(utc("2026-12-08T13:00:20Z"))
    Scheduler(app).run_pending()
    assert job_runs(app, "hourly") == [(utc("2026-12-08T13:00Z"), 0)]


def test_the_catch_up_comes_within_a_second_of_the_start(
    app: TaskQ, until: Any
) -> None:
    clock, _ = hourly_app(app, "2026-12-08T09:30Z")
    walk(clock, Scheduler(app), utc("2026-12-08T10:59Z"))
    clock.set(utc("2026-12-08T13:30Z"))
    scheduler = Scheduler(app)
    started = time.monotonic()
    scheduler.start()
    try:
        until(lambda: len(job_runs(app, "hourly")) == 2, timeout=5)
        assert time.monotonic() - started < 1.0
    finally:
        scheduler.stop()
    assert job_runs(app, "hourly")[1] == (utc("2026-12-08T13:00Z"), 3)


# -- several schedulers ---------------------------------------------------------


def test_schedulers_side_by_side_run_each_tick_once(app: TaskQ) -> None:
    clock = ManualClock(utc("2026-12-08T09:59:30Z"))
    app.clock = clock

    @app.periodic("*/10 * * * * *")
    def often() -> None: ...

    schedulers = [Scheduler(app) for _ in range(3)]
    walk(clock, schedulers, utc("2026-12-08T10:05Z"), timedelta(seconds=3))
    expected = [utc("2026-12-08T10:00Z") + timedelta(seconds=10 * n) for n in range(31)]
    assert ticks(app, "often") == [
        utc("2026-12-08T09:59:40Z"),
        utc("2026-12-08T09:59:50Z"),
        *expected,
    ]


def test_a_stalled_scheduler_is_replaced_and_writes_nothing_twice(
    make_app: Any, redis_url: str
) -> None:
    app = make_app(redis_url)
    clock, _ = hourly_app(app, "2026-12-08T09:30Z")
    stalled = Scheduler(app, lock_s=0.5)
    other = Scheduler(app, lock_s=0.5)
    walk(clock, [stalled, other], utc("2026-12-08T09:59Z"))
    clock.set(utc("2026-12-08T10:00Z"))
    # The first takes the lock and stops before doing anything.
    keys = app.keys.schedule("hourly")
    assert stalled.scripts.schedule_lock(keys, stalled.id, stalled.lock_ms)
    assert other.run_pending() == []
    assert ticks(app, "hourly") == []
    time.sleep(0.6)  # the lock runs out
    clock.advance(1)
    [fired] = other.run_pending()
    assert fired.written and ticks(app, "hourly") == [utc("2026-12-08T10:00Z")]
    # The stalled one wakes up and goes on with its stale plan.
    again = stalled._run(app.schedules["hourly"], Run(utc("2026-12-08T10:00Z")))
    assert not again.written
    assert stalled.run_pending() == []
    assert ticks(app, "hourly") == [utc("2026-12-08T10:00Z")]


def test_a_manual_run_is_idempotent_per_tick(app: TaskQ) -> None:
    clock, _ = hourly_app(app, "2026-12-08T09:30Z")
    scheduler = Scheduler(app)
    walk(clock, scheduler, utc("2026-12-08T10:30Z"))
    manual = Scheduler(app)
    assert manual.run_tick("hourly", utc("2026-12-08T10:15Z")).written
    assert not manual.run_tick("hourly", utc("2026-12-08T10:15Z")).written
    assert not manual.run_tick("hourly", utc("2026-12-08T10:00Z")).written
    walk(clock, scheduler, utc("2026-12-08T11:00Z"))
    assert ticks(app, "hourly") == [
        utc("2026-12-08T10:00Z"),
        utc("2026-12-08T10:15Z"),
        utc("2026-12-08T11:00Z"),
    ]
    with pytest.raises(ConfigurationError, match="no periodic job or digest 'nope'"):
        manual.run_tick("nope", utc("2026-12-08T11:00Z"))


def test_a_periodic_job_is_a_task(app: TaskQ, running: Any, until: Any) -> None:
    clock = ManualClock(utc("2026-12-08T09:59:30Z"))
    app.clock = clock
    attempts: list[int] = []

    @app.periodic("0 * * * *", retries=1, backoff=0)
    def flaky(ctx: Context) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError("upstream down")

    walk(clock, Scheduler(app), utc("2026-12-08T10:00Z"))

    def dead() -> list[dict[bytes, bytes]]:
        return [
            fields
            for p in range(app.partitions("default"))
            for _, fields in app.redis.xrange(app.keys.partition("default", p).dead)
        ]

    with running(Worker(app)):
        until(lambda: len(dead()) == 1)
    assert attempts == [1, 2]
    [letter] = dead()
    assert letter[b"task"] == b"flaky"
    assert letter[b"message:tick"] == str(to_ms(utc("2026-12-08T10:00Z"))).encode()


def test_bad_schedules_are_rejected_when_decorated(app: TaskQ) -> None:
    with pytest.raises(
        ConfigurationError, match="invalid cron expression '61 \\* \\* \\* \\*'"
    ):
        app.periodic("61 * * * *")
    with pytest.raises(ConfigurationError, match="unknown time zone 'Europe/Nowhere'"):
        app.periodic("0 * * * *", tz="Europe/Nowhere")
    with pytest.raises(ConfigurationError, match="catchup='sometimes'"):

        @app.periodic("0 * * * *", catchup="sometimes")  # type: ignore[arg-type]
        def job() -> None: ...

    with pytest.raises(
        ConfigurationError, match="every parameter needs a default; n has"
    ):

        @app.periodic("0 * * * *")
        def needs(n: int) -> None: ...

    assert "needs" not in app.tasks and "needs" not in app.schedules
    with pytest.raises(ConfigurationError, match="needs a cron expression"):
        app.periodic(lambda: None)  # type: ignore[arg-type]


# -- case 11: daylight saving, through the scheduler ---------------------------

DST_JOBS = {
    "a": ("30 2 * * *", "Europe/Berlin"),
    "b": ("0 20 * * *", "Europe/Berlin"),
    "c": ("*/30 * * * *", "Europe/Berlin"),
    "d": ("0 * * * *", "Europe/Berlin"),
    "e": ("0 2 * * 0", "Europe/Berlin"),
    "f": ("0 12 * * 0", "Europe/Berlin"),
    "g": ("30 2 * * *", "UTC"),
}


def dst_app(app: TaskQ, start: datetime) -> ManualClock:
    clock = ManualClock(start)
    app.clock = clock
    for name, (expression, tz) in DST_JOBS.items():
        app.periodic(expression, tz=tz, name=name)(lambda: None)
    return clock


def hhmm(runs: list[datetime]) -> list[str]:
    return [t.astimezone(UTC).strftime("%m-%d %H:%MZ") for t in runs]


def in_local_day(runs: list[datetime], day: str) -> list[datetime]:
    berlin = ZoneInfo("Europe/Berlin")
    return [t for t in runs if t.astimezone(berlin).date().isoformat() == day]


@pytest.mark.parametrize("backend_url", ["redis"], indirect=True)
def test_dst_spring_forward_through_the_scheduler(
    app: TaskQ, caplog: pytest.LogCaptureFixture
) -> None:
    start = datetime.fromisoformat("2026-03-28T00:00+01:00")
    clock = dst_app(app, start)
    scheduler = Scheduler(app)
    with caplog.at_level(logging.INFO, logger="taskq"):
        walk(clock, scheduler, datetime.fromisoformat("2026-03-31T00:00+02:00"))
    runs = {name: ticks(app, name) for name in DST_JOBS}
    assert hhmm(runs["a"]) == ["03-28 01:30Z", "03-29 01:00Z", "03-30 00:30Z"]
    assert hhmm(runs["b"]) == ["03-28 19:00Z", "03-29 18:00Z", "03-30 18:00Z"]
    assert len(in_local_day(runs["c"], "2026-03-29")) == 46
    assert hhmm(in_local_day(runs["c"], "2026-03-29")[2:6]) == [
        "03-29 00:00Z",
        "03-29 00:30Z",
        "03-29 01:00Z",
        "03-29 01:30Z",
    ]
    assert len(in_local_day(runs["d"], "2026-03-29")) == 23
    assert hhmm(runs["e"]) == ["03-29 01:00Z"]
    assert hhmm(runs["f"]) == ["03-29 10:00Z"]
    assert hhmm(runs["g"]) == ["03-28 02:30Z", "03-29 02:30Z", "03-30 02:30Z"]
    check_runs(runs, caplog)


@pytest.mark.parametrize("backend_url", ["redis"], indirect=True)
def test_dst_fall_back_through_the_scheduler(
    app: TaskQ, caplog: pytest.LogCaptureFixture
) -> None:
    start = datetime.fromisoformat("2026-10-24T00:00+02:00")
    clock = dst_app(app, start)
    scheduler = Scheduler(app)
    with caplog.at_level(logging.INFO, logger="taskq"):
        walk(clock, scheduler, datetime.fromisoformat("2026-10-27T00:00+01:00"))
    runs = {name: ticks(app, name) for name in DST_JOBS}
    assert hhmm(runs["a"]) == ["10-24 00:30Z", "10-25 00:30Z", "10-26 01:30Z"]
    assert hhmm(runs["b"]) == ["10-24 18:00Z", "10-25 19:00Z", "10-26 19:00Z"]
    day = in_local_day(runs["c"], "2026-10-25")
    assert len(day) == 50
    assert {"10-25 00:00Z", "10-25 00:30Z", "10-25 01:00Z", "10-25 01:30Z"} <= set(
        hhmm(day)
    )
    assert len(in_local_day(runs["d"], "2026-10-25")) == 25
    assert hhmm(runs["e"]) == ["10-25 00:00Z"]
    assert hhmm(runs["f"]) == ["10-25 11:00Z"]
    assert hhmm(runs["g"]) == ["10-24 02:30Z", "10-25 02:30Z", "10-26 02:30Z"]
    check_runs(runs, caplog)


def check_runs(
    runs: dict[str, list[datetime]], caplog: pytest.LogCaptureFixture
) -> None:
    total = 0
    for name, instants in runs.items():
        assert all(t.tzinfo is not None for t in instants)
        assert instants == sorted(set(instants)), f"{name}: repeated or out of order"
        total += len(instants)
    # One log record per run, plus one per job when it first registers.
    records = [r for r in caplog.records if r.name.startswith("taskq.scheduler")]
    assert len(records) <= total + len(runs)


@pytest.mark.parametrize("backend_url", ["redis"], indirect=True)
def test_dst_in_new_york_through_the_scheduler(app: TaskQ) -> None:
    clock = ManualClock(datetime.fromisoformat("2026-03-07T00:00-05:00"))
    app.clock = clock
    jobs = {
        "fixed_gap": "30 2 * * *",
        "fixed_fold": "30 1 * * *",
        "hourly": "0 * * * *",
        "half_hourly": "*/30 * * * *",
    }
    for name, expression in jobs.items():
        app.periodic(expression, tz="America/New_York", name=name)(lambda: None)
    scheduler = Scheduler(app)
    new_york = ZoneInfo("America/New_York")

    def on(day: str, name: str) -> list[datetime]:
        return [
            t
            for t in ticks(app, name)
            if t.astimezone(new_york).date().isoformat() == day
        ]

    # Spring: 2026-03-08, 02:00 EST -> 03:00 EDT at 07:00Z.
    walk(clock, scheduler, datetime.fromisoformat("2026-03-10T00:00-04:00"))
    assert hhmm(ticks(app, "fixed_gap")) == [
        "03-07 07:30Z",
        "03-08 07:00Z",
        "03-09 06:30Z",
    ]
    assert len(on("2026-03-08", "hourly")) == 23
    assert len(on("2026-03-08", "half_hourly")) == 46
    # Autumn: 2026-11-01, 02:00 EDT -> 01:00 EST at 06:00Z.
    autumn_start = datetime.fromisoformat("2026-10-31T00:00-04:00")
    clock.set(autumn_start)
    scheduler = Scheduler(app)  # skipping the summer: one catch-up run each
    walk(clock, scheduler, datetime.fromisoformat("2026-11-03T00:00-05:00"))
    autumn = [t for t in ticks(app, "fixed_fold") if t >= autumn_start]
    assert hhmm(autumn) == ["10-31 05:30Z", "11-01 05:30Z", "11-02 06:30Z"]
    assert len(on("2026-11-01", "hourly")) == 25
    assert len(on("2026-11-01", "half_hourly")) == 50
    for name in jobs:
        runs = ticks(app, name)
        assert runs == sorted(set(runs))
