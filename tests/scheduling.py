"""Helpers for the scheduling tests: a manual clock, walking schedulers
through time, and reading what they wrote."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from taskq import TaskQ
from taskq import message as wire
from taskq.clock import ManualClock
from taskq.scheduler import Fired, Scheduler


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def walk(
    clock: ManualClock,
    schedulers: Scheduler | Iterable[Scheduler],
    until: datetime,
    step: timedelta = timedelta(minutes=1),
) -> list[Fired]:
    """Move the clock to ``until`` step by step; every scheduler does a
    pass at every step. Returns what ran."""
    group = [schedulers] if isinstance(schedulers, Scheduler) else list(schedulers)
    fired: list[Fired] = []
    while True:
        for scheduler in group:
            fired.extend(scheduler.run_pending())
        now = clock.as_datetime()
        if now >= until:
            return fired
        clock.set(min(now + step, until))


def job_runs(app: TaskQ, job: str) -> list[tuple[datetime, int]]:
    """(tick, missed) of every run of a periodic job written so far."""
    topic = app.tasks[job].topic
    runs = []
    for partition in range(app.partitions(topic)):
        stream = app.keys.partition(topic, partition).stream
        for _, fields in app.redis.xrange(stream):
            if fields.get(wire.TASK) == job.encode():
                tick = wire.tick_of(fields)
                assert tick is not None
                runs.append((tick, wire.int_field(fields, wire.MISSED)))
    return runs


def ticks(app: TaskQ, job: str) -> list[datetime]:
    return [tick for tick, _ in job_runs(app, job)]
