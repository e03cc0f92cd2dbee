"""Periodic jobs, and which runs are due after a pause.

A *schedule* is a periodic job (``@app.periodic``) or a digest
(``@app.digest``): a name, a :class:`~taskq.cron.Cron` and a catch-up
policy. The scheduler keeps each schedule's last tick done in Redis; when
it looks again, every tick since then is due, and :func:`plan` decides
what runs:

* a tick less than the grace period (``CATCHUP_GRACE_S``) old runs as
  usual, whatever the policy: it is merely a little late;
* older ticks were *missed* (no scheduler ran while they passed), and the
  policy decides: ``latest`` runs the newest of them once, telling the
  handler how many it stands for; ``all`` runs each of them (the newest
  ``max_catchup``); ``skip`` runs none.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, get_args

from taskq import defaults
from taskq import message as wire
from taskq.cron import Cron, to_ms
from taskq.errors import ConfigurationError

if TYPE_CHECKING:
    from taskq.handlers import Task

Catchup = Literal["latest", "all", "skip"]
CATCHUP_POLICIES: tuple[str, ...] = get_args(Catchup)


class Schedule:
    """What a scheduler needs to know of a periodic job or digest."""

    #: ``job`` or ``digest``, for listings.
    kind = ""

    def __init__(
        self, name: str, cron: Cron, *, catchup: str, max_catchup: int
    ) -> None:
        what = f"{self.kind or 'schedule'} {name!r}"
        if catchup not in CATCHUP_POLICIES:
            raise ConfigurationError(
                f"{what}: catchup={catchup!r} is not one of "
                f"{', '.join(repr(p) for p in CATCHUP_POLICIES)}"
            )
        if (
            not isinstance(max_catchup, int)
            or isinstance(max_catchup, bool)
            or max_catchup < 1
        ):
            raise ConfigurationError(f"{what}: max_catchup must be a whole number >= 1")
        self.name = name
        self.cron = cron
        self.catchup = catchup
        self.max_catchup = max_catchup

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name} {self.cron.expression!r} "
            f"{self.cron.tz_name} catchup={self.catchup}>"
        )


class Periodic(Schedule):
    """A task that a scheduler sends at every tick of its cron expression.

    Its runs carry the job's name as their key, so they all go to one
    partition of the task's topic and run in tick order.
    """

    kind = "job"

    def __init__(
        self, task: Task[Any, Any], cron: Cron, *, catchup: str, max_catchup: int
    ) -> None:
        super().__init__(task.name, cron, catchup=catchup, max_catchup=max_catchup)
        self.task = task
        missing = [
            name
            for name, field in task.signature.model.model_fields.items()
            if field.is_required()
        ]
        if missing:
            raise ConfigurationError(
                f"periodic job {task.name!r} is called without arguments, so "
                f"every parameter needs a default; {', '.join(missing)} has none"
            )
        self.payload = task.signature.encode((), {})

    def fields(self, tick: datetime, missed: int) -> dict[bytes, bytes]:
        """The message of one run."""
        fields = {
            wire.TASK: self.task.name.encode(),
            wire.PAYLOAD: self.payload,
            wire.KEY: self.name.encode(),
            wire.TICK: str(to_ms(tick)).encode(),
        }
        if missed:
            fields[wire.MISSED] = str(missed).encode()
        return fields


@dataclass(frozen=True)
class Run:
    """One run a scheduler makes: a tick and how many ticks it stands for
    that did not run on time (``Context.missed``)."""

    tick: datetime
    missed: int = 0


@dataclass(frozen=True)
class Plan:
    runs: list[Run]
    #: The newest tick due, which becomes the last tick done; None when
    #: nothing is due.
    newest: datetime | None
    #: Ticks missed (counted up to ``MISSED_COUNT_MAX``), run or not.
    missed: int


def plan(
    schedule: Schedule,
    last: datetime,
    now: datetime,
    *,
    grace_s: float = defaults.CATCHUP_GRACE_S,
    count_limit: int = defaults.MISSED_COUNT_MAX,
) -> Plan:
    """What runs at ``now`` for a schedule whose last tick done is ``last``."""
    cron = schedule.cron
    cutoff = now - timedelta(seconds=grace_s)
    recent = [Run(tick) for tick in cron.ticks(max(last, cutoff), now)]
    late_newest = cron.last_at_or_before(cutoff) if last < cutoff else None
    if late_newest is None or late_newest <= last:
        return Plan(recent, recent[-1].tick if recent else None, 0)
    missed = cron.count(last, late_newest, count_limit)
    runs: list[Run] = []
    if schedule.catchup == "latest":
        runs.append(Run(late_newest, missed))
    elif schedule.catchup == "all":
        late = cron.last_ticks(last, late_newest, schedule.max_catchup)
        # Ticks beyond max_catchup do not run; the oldest run counts them,
        # so the runs' missed counts add up to the ticks missed.
        dropped = missed - len(late)
        runs.extend(
            Run(tick, 1 + (dropped if n == 0 else 0)) for n, tick in enumerate(late)
        )
    return Plan(runs + recent, recent[-1].tick if recent else late_newest, missed)
