"""Cron expressions in a time zone, with a fixed rule for daylight saving.

An expression has five fields (minute, hour, day of month, month, day of
week) or six, with seconds first. croniter parses it and walks the
calendar; this module turns the local wall-clock times croniter finds into
real instants, by this rule:

* a wall time that occurs once is that instant;
* a **fixed-time** job (no ``*`` or step in its minute or hour field,
  such as ``30 2 * * *``) whose wall time does not exist that day (the
  clocks jump over it) runs once, at the first instant after the jump;
  one whose wall time occurs twice (the clocks go back) runs once, at the
  first occurrence;
* any other job (``*/30 * * * *``, ``0 * * * *``) runs at every real
  instant whose wall time matches: a wall time skipped by the jump does
  not run, one that occurs twice runs twice.

croniter is only asked about naive wall-clock times, where no
daylight-saving question arises; the zone is applied here with
``zoneinfo``. So the rule above holds whatever croniter version is
installed (croniter 7.0 itself yields a repeated fixed time twice).
"""

from __future__ import annotations

import collections
import itertools
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from taskq.errors import ConfigurationError

_SECOND = timedelta(seconds=1)

#: The usual shorthands, as five fields.
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_DAY = timedelta(days=1)

#: Rounds of one next-tick search before giving up: a guard, far above
#: what any expression needs (a round per clock change passed, or per
#: skipped second occurrence of a fixed time).
_MAX_STEPS = 10_000


def zone(tz: str | tzinfo | None) -> tzinfo:
    """A time zone from its IANA name (``Europe/Berlin``) or a tzinfo."""
    if tz is None:
        return UTC
    if isinstance(tz, tzinfo):
        return tz
    if not isinstance(tz, str) or not tz:
        raise ConfigurationError(f"tz must be an IANA time zone name, not {tz!r}")
    if tz.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(
            f"unknown time zone {tz!r} ({exc}); use an IANA name such as "
            "'Europe/Berlin' or 'UTC'"
        ) from None


def zone_name(tz: tzinfo) -> str:
    return str(getattr(tz, "key", None) or tz)


#: Names and ranges of the fields, seconds first when there are six.
_FIELDS = [
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
]


def _bad_field(fields: list[str]) -> str | None:
    """Which field holds a number out of its range, said plainly; None
    when that is not the fault (croniter's message says it then)."""
    named = _FIELDS if len(fields) == 6 else _FIELDS[1:]
    for text, (name, low, high) in zip(fields, named, strict=True):
        for number in re.findall(r"\d+", text.split("/")[0]):
            if not low <= int(number) <= high:
                return f"{name} {number} is out of range ({low}-{high})"
    return None


class Cron:
    """A cron expression in a time zone: which instants are its ticks.

    Raises :class:`taskq.ConfigurationError`, with the reason, for an
    expression croniter rejects, one that never matches, or an unknown
    time zone.
    """

    def __init__(self, expression: str, tz: str | tzinfo | None = None) -> None:
        if not isinstance(expression, str):
            raise ConfigurationError(
                f"a cron expression is a string, not {expression!r}"
            )
        self.expression = expression.strip()
        self.tz = zone(tz)
        fields = ALIASES.get(self.expression.lower(), self.expression).split()
        if len(fields) not in (5, 6):
            raise ConfigurationError(
                f"invalid cron expression {expression!r}: it has {len(fields)} "
                "fields; give 5 (minute hour day-of-month month day-of-week) or "
                "6 (second minute hour day-of-month month day-of-week)"
            )
        self.has_seconds = len(fields) == 6
        # croniter reads a sixth field as seconds *last*; taskq's is first.
        self._croniter_expr = " ".join(
            fields[1:] + fields[:1] if self.has_seconds else fields
        )
        minute, hour = fields[-5], fields[-4]
        #: A fixed-time job runs once per local day even when the clocks
        #: change (see the module's docstring).
        self.fixed_time = not any(c in field for field in (minute, hour) for c in "*/?")
        try:
            first = croniter(self._croniter_expr, datetime(2000, 1, 1)).get_next(
                datetime
            )
        except CroniterBadDateError:
            raise ConfigurationError(
                f"invalid cron expression {expression!r}: no date ever matches it"
            ) from None
        except CroniterError as exc:
            raise ConfigurationError(
                f"invalid cron expression {expression!r}: {_bad_field(fields) or exc}"
            ) from None
        if not isinstance(first, datetime):
            raise ConfigurationError(f"invalid cron expression {expression!r}")

    def __repr__(self) -> str:
        return f"<Cron {self.expression!r} {zone_name(self.tz)}>"

    @property
    def tz_name(self) -> str:
        return zone_name(self.tz)

    # -- ticks ---------------------------------------------------------------

    def next_after(self, instant: datetime) -> datetime:
        """The first tick strictly after ``instant`` (an aware datetime),
        as an aware UTC datetime.

        UTC on purpose: Python compares two datetimes of the same zone by
        their wall times, so 02:00 of the second pass through a repeated
        hour would compare as earlier than 02:30 of the first.
        """
        # Ticks fall on whole seconds, so one is after `instant` exactly
        # when it is after `instant` rounded down to the second.
        after = _utc(instant).replace(microsecond=0)
        # Real time is cut into stretches of one UTC offset; within one, a
        # wall time and an instant are the same thing shifted. Each round
        # looks for the next matching wall time in the current stretch and
        # moves on to the next stretch if it lies beyond.
        offset = self._offset(after)
        stretch = after
        for _ in range(_MAX_STEPS):
            wall = self._next_wall(after + offset)
            tick = (wall - offset).replace(tzinfo=UTC)
            change = self._first_change(stretch, tick, offset)
            if change is None:
                if self.fixed_time and self._repeated(wall, tick):
                    after = tick  # the first occurrence was the tick
                    continue
                return tick
            new_offset = self._offset(change)
            if self.fixed_time and new_offset > offset:
                # The clocks jump at `change`: a fixed time they skip
                # runs at the jump.
                skipped = self._next_wall(change + offset - _SECOND)
                if skipped < _naive(change + new_offset):
                    return change
            after, offset, stretch = change - _SECOND, new_offset, change
        raise ConfigurationError(
            f"cron expression {self.expression!r}: no tick found after "
            f"{instant.isoformat()} in {_MAX_STEPS} steps"
        )

    def ticks(self, after: datetime, until: datetime) -> Iterator[datetime]:
        """Every tick in ``(after, until]``, in order."""
        tick = self.next_after(after)
        while tick <= until:
            yield tick
            tick = self.next_after(tick)

    def count(self, after: datetime, until: datetime, limit: int) -> int:
        """How many ticks lie in ``(after, until]``, counting up to ``limit``."""
        return sum(1 for _ in itertools.islice(self.ticks(after, until), limit))

    def last_ticks(
        self, after: datetime, until: datetime, count: int
    ) -> list[datetime]:
        """The last ``count`` ticks in ``(after, until]``, oldest first."""
        span = _SECOND
        while True:
            start = max(_utc(after), _utc(until) - span)
            last = collections.deque(self.ticks(start, until), maxlen=count)
            if len(last) >= count or start <= _utc(after):
                return list(last)
            span *= 2

    def last_at_or_before(self, instant: datetime) -> datetime | None:
        """The latest tick at or before ``instant``, or None if there is
        none in the preceding ten years."""
        until = _utc(instant)
        span = timedelta(seconds=1)
        limit = timedelta(days=3660)
        while span <= limit:
            tick = self.next_after(until - span)
            if tick <= until:
                # The shorter span before had no tick, so the ticks of this
                # one lie in its first half: few of them for any schedule.
                latest = tick
                for later in self.ticks(tick, until):
                    latest = later
                return latest
            span *= 2
        return None

    # -- wall times and instants -------------------------------------------------

    def _offset(self, instant: datetime) -> timedelta:
        return instant.astimezone(self.tz).utcoffset() or timedelta(0)

    def _wall(self, instant: datetime) -> datetime:
        return instant.astimezone(self.tz).replace(tzinfo=None, fold=0)

    def _next_wall(self, after: datetime) -> datetime:
        """The first wall time matching the expression after ``after``."""
        try:
            wall = croniter(self._croniter_expr, _naive(after)).get_next(datetime)
        except CroniterError as exc:
            raise ConfigurationError(
                f"cron expression {self.expression!r} has no tick after "
                f"{after.isoformat()}: {exc}"
            ) from None
        assert isinstance(wall, datetime)
        return wall

    def _first_change(
        self, start: datetime, end: datetime, offset: timedelta
    ) -> datetime | None:
        """The first instant in ``(start, end]`` whose UTC offset is not
        ``offset`` (the offset at ``start``), or None.

        The offset is probed a day apart and the change then narrowed down
        to the second; zones do not change their offset twice in a day.
        """
        probe = start
        while probe < end:
            step = min(probe + _DAY, end)
            if self._offset(step) != offset:
                low, high = probe, step
                while high - low > _SECOND:
                    middle = (low + (high - low) / 2).replace(microsecond=0)
                    if self._offset(middle) != offset:
                        high = middle
                    else:
                        low = middle
                return high
            probe = step
        return None

    def _repeated(self, wall: datetime, tick: datetime) -> bool:
        """Whether ``tick`` is the second occurrence of ``wall``."""
        first = wall.replace(tzinfo=self.tz, fold=0).astimezone(UTC)
        return first < tick and self._wall(first) == wall


def _naive(instant: datetime) -> datetime:
    """The wall-clock reading of an instant shifted by its offset."""
    return instant.replace(tzinfo=None)


def _utc(instant: datetime) -> datetime:
    if not isinstance(instant, datetime) or instant.tzinfo is None:
        raise ValueError(f"an aware datetime is needed, not {instant!r}")
    return instant.astimezone(UTC)


def from_ms(ms: int) -> datetime:
    """An aware UTC datetime from milliseconds since the epoch."""
    return datetime.fromtimestamp(ms / 1000, UTC)


def to_ms(instant: datetime) -> int:
    return round(_utc(instant).timestamp() * 1000)
