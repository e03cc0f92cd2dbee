"""Backoff schedules: how long a failed message waits before its next try.

``@app.task(backoff=...)`` takes any of these forms:

* ``None`` (default): :func:`exponential` with its defaults;
* a number: that many seconds before every retry (:func:`fixed`);
* a sequence of numbers: the delay before retry 1, 2, ...; the last one
  repeats (:func:`schedule`);
* a callable taking the attempt that failed (1 for the first) and
  returning seconds;
* a :class:`Backoff` built by one of the functions below.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from taskq.errors import ConfigurationError


@dataclass(frozen=True)
class Backoff:
    """A delay, in seconds, for each failed attempt."""

    delay_for: Callable[[int], float]
    description: str

    def delay(self, failed_attempt: int) -> float:
        return max(0.0, float(self.delay_for(failed_attempt)))


def exponential(
    initial: float = 1.0,
    factor: float = 2.0,
    cap: float = 300.0,
    jitter: bool = True,
) -> Backoff:
    """``initial * factor ** (attempt - 1)`` seconds, at most ``cap``.

    With ``jitter`` the delay is drawn uniformly from the upper half of that
    value, so retries of many failed messages spread out instead of hitting
    the recovering service at once; it never exceeds the nominal delay.
    """
    if initial < 0 or factor < 1 or cap < 0:
        raise ConfigurationError(
            "exponential backoff needs initial >= 0, factor >= 1 and cap >= 0"
        )

    def delay_for(attempt: int) -> float:
        nominal = min(cap, initial * factor ** max(0, attempt - 1))
        if jitter:
            return nominal / 2 + random.uniform(0, nominal / 2)
        return nominal

    text = f"exponential(initial={initial:g}, factor={factor:g}, cap={cap:g}"
    return Backoff(delay_for, text + f", jitter={jitter})")


def fixed(seconds: float) -> Backoff:
    """The same delay before every retry."""
    if seconds < 0:
        raise ConfigurationError("a backoff delay cannot be negative")
    return Backoff(lambda attempt: seconds, f"fixed({seconds:g})")


def schedule(delays: Sequence[float]) -> Backoff:
    """Delay ``delays[n - 1]`` after attempt n; the last delay repeats."""
    steps = [float(d) for d in delays]
    if not steps or any(d < 0 for d in steps):
        raise ConfigurationError("a backoff schedule needs one or more delays >= 0")

    def delay_for(attempt: int) -> float:
        return steps[min(len(steps), max(1, attempt)) - 1]

    return Backoff(delay_for, f"schedule({steps})")


BackoffOption = float | Sequence[float] | Callable[[int], float] | Backoff | None


def make_backoff(option: BackoffOption) -> Backoff:
    """Turn a ``backoff=`` option into a :class:`Backoff`."""
    if option is None:
        return exponential()
    if isinstance(option, Backoff):
        return option
    if isinstance(option, bool):
        raise ConfigurationError("backoff must be seconds, a list, or a callable")
    if isinstance(option, (int, float)):
        return fixed(float(option))
    if isinstance(option, Sequence) and not isinstance(option, (str, bytes)):
        return schedule(option)
    if callable(option):
        return Backoff(option, getattr(option, "__name__", "custom"))
    raise ConfigurationError(
        f"backoff={option!r} is not understood: pass seconds, a list of "
        "seconds, a callable(attempt) -> seconds, or taskq.exponential(...)"
    )
