"""The clock schedules read: the system's, or one a test moves by hand.

Schedulers and digest collection ask a clock for the time instead of
calling :func:`time.time` themselves, so a test can walk a scheduler
through a daylight-saving night or a day of downtime in milliseconds.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """What a scheduler needs from a clock."""

    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        """Wait until ``seconds`` of this clock's time have passed or
        ``stop`` is set; returns whether ``stop`` is set."""
        ...


class SystemClock:
    """The system's wall clock."""

    def now(self) -> float:
        return time.time()

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        return stop.wait(max(0.0, seconds))

    def __repr__(self) -> str:
        return "<SystemClock>"


class ManualClock:
    """A clock that stands still until it is moved; for tests.

    ::

        clock = ManualClock(datetime(2026, 3, 28, tzinfo=timezone.utc))
        app = TaskQ(url, clock=clock)
        clock.advance(3600)
    """

    def __init__(self, start: datetime | float) -> None:
        self._now = _seconds(start)
        self._changed = threading.Condition()

    def __repr__(self) -> str:
        return f"<ManualClock {self.as_datetime().isoformat()}>"

    def now(self) -> float:
        with self._changed:
            return self._now

    def as_datetime(self) -> datetime:
        """The time as an aware UTC datetime."""
        return datetime.fromtimestamp(self.now(), UTC)

    def set(self, when: datetime | float) -> None:
        """Move the clock to ``when`` (an aware datetime or epoch seconds)."""
        with self._changed:
            self._now = _seconds(when)
            self._changed.notify_all()

    def advance(self, seconds: float) -> None:
        with self._changed:
            self._now += seconds
            self._changed.notify_all()

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        with self._changed:
            deadline = self._now + max(0.0, seconds)
            # Checking the stop event needs a real-time timeout: setting it
            # does not notify this condition.
            while self._now < deadline and not stop.is_set():
                self._changed.wait(0.02)
        return stop.is_set()


def _seconds(when: datetime | float) -> float:
    if isinstance(when, datetime):
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError(
                f"give an aware datetime, not the naive {when.isoformat()}"
            )
        return when.timestamp()
    return float(when)
