"""Cron expressions, time zones and the daylight-saving rule (case 11)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from croniter import croniter

from taskq import ConfigurationError
from taskq.cron import Cron


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def ticks(expression: str, tz: str, start: str, end: str) -> list[str]:
    """The ticks in [start, end), as UTC times 'MM-DD HH:MMZ'."""
    cron = Cron(expression, tz)
    begin = utc(start) - timedelta(seconds=1)
    found = [t.astimezone(UTC) for t in cron.ticks(begin, utc(end))]
    return [t.strftime("%m-%d %H:%MZ") for t in found if t < utc(end)]


# Window S: 2026-03-29, clocks jump 02:00 CET -> 03:00 CEST (01:00Z).
S = ("2026-03-28T00:00+01:00", "2026-03-31T00:00+02:00")
S_DAY = ("2026-03-29T00:00+01:00", "2026-03-30T00:00+02:00")
# Window F: 2026-10-25, clocks go 03:00 CEST -> 02:00 CET (01:00Z).
F = ("2026-10-24T00:00+02:00", "2026-10-27T00:00+01:00")
F_DAY = ("2026-10-25T00:00+02:00", "2026-10-26T00:00+01:00")
BERLIN = "Europe/Berlin"


def test_spring_forward_in_berlin() -> None:
    assert ticks("30 2 * * *", BERLIN, *S) == [
        "03-28 01:30Z",
        "03-29 01:00Z",
        "03-30 00:30Z",
    ]
    assert ticks("0 20 * * *", BERLIN, *S) == [
        "03-28 19:00Z",
        "03-29 18:00Z",
        "03-30 18:00Z",
    ]
    every_half_hour = ticks("*/30 * * * *", BERLIN, *S_DAY)
    assert len(every_half_hour) == 46
    assert every_half_hour[1:6] == [
        "03-28 23:30Z",
        "03-29 00:00Z",
        "03-29 00:30Z",
        "03-29 01:00Z",
        "03-29 01:30Z",
    ]
    assert len(ticks("0 * * * *", BERLIN, *S_DAY)) == 23
    assert ticks("0 2 * * 0", BERLIN, *S) == ["03-29 01:00Z"]
    assert ticks("0 12 * * 0", BERLIN, *S) == ["03-29 10:00Z"]


def test_fall_back_in_berlin() -> None:
    assert ticks("30 2 * * *", BERLIN, *F) == [
        "10-24 00:30Z",
        "10-25 00:30Z",
        "10-26 01:30Z",
    ]
    assert ticks("0 20 * * *", BERLIN, *F) == [
        "10-24 18:00Z",
        "10-25 19:00Z",
        "10-26 19:00Z",
    ]
    every_half_hour = ticks("*/30 * * * *", BERLIN, *F_DAY)
    assert len(every_half_hour) == 50
    assert every_half_hour[4:8] == [
        "10-25 00:00Z",
        "10-25 00:30Z",
        "10-25 01:00Z",
        "10-25 01:30Z",
    ]
    assert len(ticks("0 * * * *", BERLIN, *F_DAY)) == 25
    assert ticks("0 2 * * 0", BERLIN, *F) == ["10-25 00:00Z"]
    assert ticks("0 12 * * 0", BERLIN, *F) == ["10-25 11:00Z"]


def test_utc_jobs_ignore_daylight_saving() -> None:
    for window in (S, F):
        days = ticks("30 2 * * *", "UTC", *window)
        assert [d[-6:] for d in days] == ["02:30Z"] * 3


def test_new_york() -> None:
    # 2026-03-08: 02:00 EST -> 03:00 EDT at 07:00Z.
    spring = ("2026-03-07T00:00-05:00", "2026-03-10T00:00-04:00")
    assert ticks("30 2 * * *", "America/New_York", *spring) == [
        "03-07 07:30Z",
        "03-08 07:00Z",
        "03-09 06:30Z",
    ]
    assert ticks("0 2 * * 0", "America/New_York", *spring) == ["03-08 07:00Z"]
    day = ("2026-03-08T00:00-05:00", "2026-03-09T00:00-04:00")
    assert len(ticks("0 * * * *", "America/New_York", *day)) == 23
    assert len(ticks("*/30 * * * *", "America/New_York", *day)) == 46
    # 2026-11-01: 02:00 EDT -> 01:00 EST at 06:00Z; 01:00-01:59 occurs twice.
    fall = ("2026-10-31T00:00-04:00", "2026-11-03T00:00-05:00")
    assert ticks("30 1 * * *", "America/New_York", *fall) == [
        "10-31 05:30Z",
        "11-01 05:30Z",
        "11-02 06:30Z",
    ]
    assert ticks("0 20 * * *", "America/New_York", *fall) == [
        "11-01 00:00Z",
        "11-02 01:00Z",
        "11-03 01:00Z",
    ]
    day = ("2026-11-01T00:00-04:00", "2026-11-02T00:00-05:00")
    hourly = ticks("0 * * * *", "America/New_York", *day)
    assert len(hourly) == 25
    assert hourly[1:4] == ["11-01 05:00Z", "11-01 06:00Z", "11-01 07:00Z"]
    assert len(ticks("*/30 * * * *", "America/New_York", *day)) == 50


def test_next_tick_is_always_later() -> None:
    cron = Cron("*/30 * * * *", BERLIN)
    instant = utc(F[0])
    for _ in range(200):
        following = cron.next_after(instant)
        assert following > instant
        instant = following


def test_six_fields_have_seconds_first() -> None:
    cron = Cron("*/15 * * * * *")
    start = utc("2026-01-01T00:00:00Z")
    assert [t.second for t in cron.ticks(start, start + timedelta(seconds=59))] == [
        15,
        30,
        45,
    ]
    assert Cron("30 0 12 * * *").next_after(start) == utc("2026-01-01T12:00:30Z")


def test_aliases() -> None:
    start = utc("2026-01-01T10:00:00Z")
    assert Cron("@daily").next_after(start) == utc("2026-01-02T00:00:00Z")
    assert Cron("@hourly").next_after(start) == utc("2026-01-01T11:00:00Z")


@pytest.mark.parametrize(
    "expression, tz, reason",
    [
        ("61 * * * *", None, r"minute 61 is out of range \(0-59\)"),
        ("0 25 * * *", None, r"hour 25 is out of range \(0-23\)"),
        ("0 8 * 13 *", None, r"month 13 is out of range \(1-12\)"),
        ("70 0 8 * * *", None, r"second 70 is out of range \(0-59\)"),
        ("* * *", None, "has 3 fields"),
        ("* * * * * * *", None, "has 7 fields"),
        ("*/0 * * * *", None, "step"),
        ("0 0 30 2 *", None, "no date ever matches it"),
        ("often", None, "has 1 fields"),
        ("0 8 * * *", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
    ],
)
def test_bad_expressions_are_rejected_with_the_reason(
    expression: str, tz: str | None, reason: str
) -> None:
    with pytest.raises(ConfigurationError, match=reason):
        Cron(expression, tz)


# -- against a reference --------------------------------------------------------

MINUTE = timedelta(minutes=1)


def reference(cron: Cron, start: datetime, end: datetime) -> list[datetime]:
    """The rule, applied minute by minute in real time."""
    found: set[datetime] = set()
    previous = (start - MINUTE).astimezone(cron.tz)
    instant = start
    while instant <= end:
        local = instant.astimezone(cron.tz)
        wall = local.replace(tzinfo=None, fold=0)
        if croniter.match(cron._croniter_expr, wall) and (
            not cron.fixed_time or local.fold == 0
        ):
            found.add(instant)
        if cron.fixed_time and local.utcoffset() > previous.utcoffset():  # type: ignore[operator]
            # Wall times skipped by the jump run at the jump.
            skipped = previous.replace(tzinfo=None) + MINUTE
            while skipped < wall:
                if croniter.match(cron._croniter_expr, skipped):
                    found.add(instant)
                skipped += MINUTE
        previous = local
        instant += MINUTE
    return sorted(found)


@pytest.mark.parametrize(
    "tz, start",
    [
        ("Europe/Berlin", "2026-03-28T12:00Z"),
        ("Europe/Berlin", "2026-10-24T12:00Z"),
        ("America/New_York", "2026-03-07T12:00Z"),
        ("America/New_York", "2026-10-31T12:00Z"),
    ],
)
def test_ticks_match_the_rule_from_any_instant(tz: str, start: str) -> None:
    rng = random.Random(f"{tz}{start}")
    begin = utc(start)
    end = begin + timedelta(hours=48)
    for expression in [
        "30 2 * * *",
        "15 * * * *",
        "*/20 1-3 * * *",
        "0,30 2 * * *",
        "59 1 * * *",
    ]:
        cron = Cron(expression, tz)
        expected = reference(cron, begin, end)
        got = [t.astimezone(UTC) for t in cron.ticks(begin - timedelta(seconds=1), end)]
        assert got == expected, expression
        for _ in range(20):
            instant = begin + timedelta(seconds=rng.randrange(24 * 3600))
            following = next(t for t in expected if t > instant)
            assert cron.next_after(instant) == following, (expression, instant)
