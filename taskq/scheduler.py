"""The scheduler: sends periodic jobs and closes digest windows at their
ticks, once per tick however many schedulers run.

Each schedule has two keys (``Keys.schedule``): its last tick done, which
never expires and only moves forward, and a lock that expires after
``SCHEDULE_LOCK_S``. A scheduler that finds a tick due takes the lock,
reads the last tick done, runs what :func:`~taskq.schedules.plan` says,
records the newest tick and releases the lock. Schedulers that find the
lock taken look again shortly; one that stops or stalls while holding it
is replaced once the lock expires.

The lock keeps schedulers from doing the same work; it is not what makes
a tick run once. That is each run's own step, idempotent per tick in the
partition it writes to: a periodic job's run is written only if the job's
``fired`` record there is older (``fire_tick.lua``), and a digest window
is sealed only once (``digest_seal.lua``). So a scheduler that stalled
while holding the lock and wakes up after another took over writes
nothing twice.

A schedule with no record in Redis (first deployment, or its data was
flushed) starts at its latest tick: nothing before it is caught up, so a
flush never causes a burst. A scheduler that was running when the record
went away goes on from the last tick it saw, so the flush loses no tick
either.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import TYPE_CHECKING

import redis

from taskq import defaults
from taskq.clock import Clock
from taskq.connection import CONNECTION_ERRORS, Outage
from taskq.cron import from_ms, to_ms
from taskq.digest import DigestSchedule, close
from taskq.errors import ConfigurationError, TaskqError
from taskq.keys import PartitionKeys, ScheduleKeys
from taskq.partitioning import partition_for
from taskq.schedules import Periodic, Run, Schedule, plan
from taskq.scripts import Scripts

if TYPE_CHECKING:
    from taskq.app import TaskQ

log = logging.getLogger("taskq.scheduler")

#: How soon a scheduler looks again at a job whose lock another holds, s.
LOCK_RETRY_S = 0.2


@dataclass(frozen=True)
class Fired:
    """What one run of a schedule did."""

    name: str
    tick: datetime
    missed: int
    #: False when nothing was done because the tick had run before (by
    #: another scheduler, say). A digest close that finds its window closed
    #: already reports True with no batches.
    written: bool
    #: Digests: batches written and the events in them.
    batches: int = 0
    events: int = 0


def make_scheduler_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(2).hex()}"


class Scheduler:
    """Runs the periodic jobs and digests of an app at their ticks.

    ``clock`` is where it reads the time (default: the app's clock), so
    tests can move it by hand. :meth:`run_pending` does one pass;
    :meth:`run` and :meth:`start` keep doing passes until stopped.
    """

    def __init__(
        self,
        app: TaskQ,
        *,
        clock: Clock | None = None,
        scheduler_id: str | None = None,
        lock_s: float = defaults.SCHEDULE_LOCK_S,
        grace_s: float = defaults.CATCHUP_GRACE_S,
        poll_s: float = defaults.SCHEDULER_POLL_S,
    ) -> None:
        self.app = app
        self.clock = clock or app.clock
        self.id = scheduler_id or make_scheduler_id()
        self.lock_ms = int(lock_s * 1000)
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.outage = Outage(app.url, log)
        #: Schedule name -> clock time (s) at which to look at it again.
        self._due: dict[str, float] = {}
        #: Schedule name -> the last tick done, as last seen in Redis.
        self._last: dict[str, datetime] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Scheduler {self.id}>"

    def _connect(self) -> tuple[redis.Redis, Scripts]:
        # The app's client: its pool serves the scheduler thread beside the
        # app's other users, and closes with the app.
        return self.app.redis, self.app.scripts

    @property
    def client(self) -> redis.Redis:
        """The Redis client the scheduler uses (the app's)."""
        return self._connect()[0]

    @property
    def scripts(self) -> Scripts:
        return self._connect()[1]

    @property
    def schedules(self) -> list[Schedule]:
        return list(self.app.schedules.values())

    # -- one pass --------------------------------------------------------------

    def run_pending(self) -> list[Fired]:
        """Run every schedule that is due now; returns what ran."""
        now = self.clock.now()
        fired: list[Fired] = []
        for schedule in self.schedules:
            if self._due.get(schedule.name, now) > now:
                continue
            try:
                fired.extend(self._handle(schedule, now))
            except CONNECTION_ERRORS:
                raise
            except (redis.RedisError, ConfigurationError) as exc:
                log.error("Schedule %s failed: %s", schedule.name, exc)
                self._due[schedule.name] = now + self.poll_s
        return fired

    def _handle(self, schedule: Schedule, now_s: float) -> list[Fired]:
        keys = self.app.keys.schedule(schedule.name)
        if not self.scripts.schedule_lock(keys, self.id, self.lock_ms):
            self._due[schedule.name] = now_s + LOCK_RETRY_S
            return []
        now = datetime.fromtimestamp(now_s, UTC)
        fired: list[Fired] = []
        try:
            last = self._read_last(schedule)
            if last is None and schedule.name in self._last:
                # The record went away under a running scheduler (Redis
                # was flushed or restarted empty): go on from what it saw.
                last = self._last[schedule.name]
                log.warning(
                    "The record of schedule %s was gone from Redis; going on "
                    "from its last tick done, %s.",
                    schedule.name,
                    last.astimezone(schedule.cron.tz).isoformat(),
                )
            if last is None:
                newest = schedule.cron.last_at_or_before(now) or now
                log.info(
                    "Schedule %s has no record of a past tick; it starts after %s.",
                    schedule.name,
                    newest.astimezone(schedule.cron.tz).isoformat(),
                )
            else:
                due = plan(schedule, last, now, grace_s=self.grace_s)
                self._report_missed(schedule, due.runs, due.missed)
                for run in due.runs:
                    fired.append(self._run(schedule, run))
                newest = due.newest or last
        except BaseException:
            self._release(keys)
            raise
        recorded = self.scripts.schedule_commit(keys, self.id, to_ms(newest))
        last_done = from_ms(recorded) if recorded is not None else newest
        self._last[schedule.name] = last_done
        self._due[schedule.name] = schedule.cron.next_after(last_done).timestamp()
        return fired

    def _release(self, keys: ScheduleKeys) -> None:
        # Should this fail, the lock expires by itself.
        with contextlib.suppress(redis.RedisError, OSError):
            self.scripts.schedule_commit(keys, self.id, None)

    def _report_missed(self, schedule: Schedule, runs: list[Run], missed: int) -> None:
        if not missed:
            return
        late = [run for run in runs if run.missed]
        log.warning(
            "Schedule %s missed %d tick(s) while no scheduler ran; catchup=%s "
            "runs %d of them.",
            schedule.name,
            missed,
            schedule.catchup,
            0 if schedule.catchup == "skip" else len(late),
        )

    # -- records -------------------------------------------------------------

    def _read_last(self, schedule: Schedule) -> datetime | None:
        """The schedule's last tick done, from Redis."""
        client = self.client
        keys = self.app.keys.schedule(schedule.name)
        if isinstance(schedule, Periodic):
            # The partition's fired record is written with the run itself,
            # so it is ahead of the last-tick record when a scheduler died
            # between the two.
            pk = self._job_partition(schedule)
            # Two slots: two commands (one MGET would fail in a cluster).
            pipe = client.pipeline(transaction=False)
            pipe.get(keys.last)
            pipe.get(pk.fired(schedule.name))
            recorded, fired = pipe.execute()
            values = [int(v) for v in (recorded, fired) if v is not None]
            return from_ms(max(values)) if values else None
        recorded = client.get(keys.last)
        return None if recorded is None else from_ms(int(recorded))

    def _job_partition(self, job: Periodic) -> PartitionKeys:
        topic = job.task.topic
        return self.app.keys.partition(
            topic, partition_for(job.name, self.app.partitions(topic))
        )

    # -- running ---------------------------------------------------------------

    def _run(self, schedule: Schedule, run: Run) -> Fired:
        tick_ms = to_ms(run.tick)
        local = run.tick.astimezone(schedule.cron.tz).isoformat()
        if isinstance(schedule, Periodic):
            entry = self.scripts.fire_tick(
                self._job_partition(schedule),
                schedule.name,
                tick_ms,
                schedule.fields(run.tick, run.missed),
            )
            if entry is not None and run.missed:
                log.info(
                    "Sent %s for %s, standing for %d missed tick(s).",
                    schedule.name,
                    local,
                    run.missed,
                )
            elif entry is not None:
                log.info("Sent %s for %s.", schedule.name, local)
            return Fired(schedule.name, run.tick, run.missed, entry is not None)
        assert isinstance(schedule, DigestSchedule)
        keys = self.app.keys.schedule(schedule.name)
        batches, events = close(
            self.app,
            self.scripts,
            schedule.digest,
            tick_ms,
            run.missed,
            budget=defaults.DIGEST_SEAL_BUDGET,
            renew=lambda: self.scripts.schedule_lock(keys, self.id, self.lock_ms),
        )
        if batches:
            log.info(
                "Closed %s for %s: %d event(s) in %d batch(es); missed ticks: %d.",
                schedule.name,
                local,
                events,
                batches,
                run.missed,
            )
        return Fired(schedule.name, run.tick, run.missed, True, batches, events)

    def run_tick(self, name: str, tick: datetime, *, wait_s: float = 10.0) -> Fired:
        """Run schedule ``name`` for ``tick`` now, by hand.

        Idempotent per tick: a tick at or before the schedule's last tick
        done runs nothing. A manual run becomes the last tick done, so the
        ticks before it are not caught up afterwards.
        """
        tick = tick.astimezone(UTC)
        schedule = self.app.schedules.get(name)
        if schedule is None:
            known = ", ".join(sorted(self.app.schedules)) or "none"
            raise ConfigurationError(
                f"no periodic job or digest {name!r}; there are: {known}"
            )
        keys = self.app.keys.schedule(name)
        deadline = time.monotonic() + wait_s
        while not self.scripts.schedule_lock(keys, self.id, self.lock_ms):
            if time.monotonic() >= deadline:
                holder = self.client.get(keys.lock)
                raise TaskqError(
                    f"{name!r} is being run by scheduler {holder!r}; try again"
                )
            time.sleep(LOCK_RETRY_S)
        try:
            last = self._read_last(schedule)
            if last is not None and tick <= last:
                self._release(keys)
                return Fired(name, tick, 0, False)
            fired = self._run(schedule, Run(tick))
        except BaseException:
            self._release(keys)
            raise
        self.scripts.schedule_commit(keys, self.id, to_ms(tick))
        self._due.pop(name, None)
        return fired

    def last_tick(self, name: str) -> datetime | None:
        """The last tick done of schedule ``name``, as Redis records it."""
        return self._read_last(self.app.schedules[name])

    # -- running until stopped -------------------------------------------------

    def run(self, install_signals: bool = True) -> int:
        """Do passes until stopped (SIGTERM, SIGINT or :meth:`stop`)."""
        if install_signals and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self._loop()
        return 0

    def start(self) -> None:
        """Do passes in a thread of their own until :meth:`stop`."""
        self._thread = threading.Thread(
            target=self._loop, name="taskq-beat", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("%s: stopping the scheduler.", signal.Signals(signum).name)
        self._stop.set()

    def _loop(self) -> None:
        log.info(
            "Scheduler %s started: %s.",
            self.id,
            ", ".join(
                f"{s.name} ({s.cron.expression} {s.cron.tz_name})"
                for s in self.schedules
            )
            or "no periodic jobs or digests",
        )
        while not self._stop.is_set():
            try:
                self.run_pending()
                self.outage.recovered()
            except CONNECTION_ERRORS as exc:
                self._stop.wait(self.outage.failed(exc))
                continue
            except Exception:
                log.exception("A scheduler pass failed.")
                self._stop.wait(self.poll_s)
                continue
            now = self.clock.now()
            wake = min(self._due.values(), default=now + self.poll_s)
            self.clock.wait(self._stop, min(self.poll_s, max(0.0, wake - now)))
        log.info("Scheduler %s stopped.", self.id)
