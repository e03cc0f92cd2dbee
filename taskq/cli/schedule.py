"""``taskq beat`` and ``taskq schedule``: periodic jobs and digests."""

from __future__ import annotations

import sys
from datetime import datetime

import click

from taskq.cli import load_app, logging_options, setup_logging, wait_for_redis
from taskq.cli.ops import table
from taskq.cron import from_ms
from taskq.digest import DigestSchedule
from taskq.scheduler import Scheduler
from taskq.stats import schedules


@click.command()
@click.argument("app")
@logging_options
def beat(app: str, log_level: str, log_config: str | None) -> None:
    """Run a scheduler for APP: send periodic jobs and close digest
    windows at their ticks. Any number may run; each tick runs once.
    SIGTERM or SIGINT stops it."""
    setup_logging(log_level, log_config)
    the_app = load_app(app)
    wait_for_redis(the_app)
    sys.exit(Scheduler(the_app).run())


@click.group()
def schedule() -> None:
    """Look at and run periodic jobs and digests."""


@schedule.command("list")
@click.argument("app")
def schedule_list(app: str) -> None:
    """Periodic jobs and digests: cron, time zone, catch-up policy, last
    and next tick; for digests the events in the open window and those
    handed to batches that have not finished."""
    the_app = load_app(app)
    the_app.ping()
    if not the_app.schedules:
        click.echo("No periodic jobs or digests.")
        return
    rows = [
        [
            row.name,
            row.kind,
            row.cron,
            row.tz,
            row.catchup,
            row.last or "-",
            row.next,
            "-"
            if row.open_events is None
            else f"{row.open_events} open, {row.batched_events} in batches",
        ]
        for row in schedules(the_app)
    ]
    click.echo(
        table(rows, ["name", "kind", "cron", "tz", "catchup", "last", "next", "events"])
    )


@schedule.command("run")
@click.argument("app")
@click.argument("job")
@click.option(
    "--tick",
    help="The tick to run, ISO 8601 (a time without offset is in the job's "
    "time zone) [default: now: a digest then closes its open window].",
)
def schedule_run(app: str, job: str, tick: str | None) -> None:
    """Run JOB (a periodic job or digest) for a tick now. Runs nothing if
    that tick ran already, so it is safe to repeat."""
    the_app = load_app(app)
    item = the_app.schedules.get(job)
    if item is None:
        known = ", ".join(sorted(the_app.schedules)) or "none"
        raise click.BadParameter(
            f"no periodic job or digest {job!r}; there are: {known}", param_hint="JOB"
        )
    now = from_ms(int(the_app.clock.now() * 1000))
    when = now.replace(microsecond=0)
    if tick is not None:
        try:
            when = datetime.fromisoformat(tick.replace("Z", "+00:00"))
        except ValueError:
            raise click.BadParameter(
                f"{tick!r} is not an ISO 8601 time such as 2026-12-08T08:00+01:00",
                param_hint="--tick",
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=item.cron.tz)
    if when > now:
        raise click.BadParameter(
            f"{when.isoformat()} is in the future", param_hint="--tick"
        )
    fired = Scheduler(the_app).run_tick(job, when)
    local = when.astimezone(item.cron.tz).isoformat()
    if not fired.written:
        click.echo(f"{job} ran for {local} already; nothing to do.")
    elif isinstance(item, DigestSchedule):
        click.echo(
            f"Closed {job} for {local}: {fired.events} event(s) in "
            f"{fired.batches} batch(es)."
        )
    else:
        click.echo(f"Sent {job} for {local}.")
