"""Commands that look at or act on a running system: send, stats, dlq."""

from __future__ import annotations

import json
import math
from typing import Any

import click

from taskq import deadletters
from taskq.cli import load_app
from taskq.stats import GroupStats, collect


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [
        max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=False)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> Any:
    # FloatRange lets "nan" and "inf" through: neither is a time.
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number of seconds, not {value}")
    return value


@click.command()
@click.argument("app")
@click.argument("task")
@click.argument("args_json", default="{}")
@click.option("--key", help="Message key (default: the task's own key argument).")
@click.option(
    "--delay",
    type=click.FloatRange(min=0),
    callback=_finite,
    help="Run no sooner than this many seconds from now.",
)
def send(
    app: str, task: str, args_json: str, key: str | None, delay: float | None
) -> None:
    """Send one TASK of APP with ARGS_JSON: an object of keyword arguments
    or an array of positional ones."""
    the_app = load_app(app)
    handler = the_app.tasks.get(task)
    if handler is None:
        matches = [name for name in the_app.tasks if name.rsplit(".", 1)[-1] == task]
        if len(matches) != 1:
            known = ", ".join(sorted(the_app.tasks)) or "none"
            raise click.BadParameter(
                f"no task {task!r}; tasks: {known}", param_hint="TASK"
            )
        handler = the_app.tasks[matches[0]]
    try:
        arguments = json.loads(args_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="ARGS_JSON") from None
    call = handler.options(key=key, delay=delay)
    if isinstance(arguments, dict):
        message_id = call.send(**arguments)
    elif isinstance(arguments, list):
        message_id = call.send(*arguments)
    else:
        raise click.BadParameter("give a JSON object or array", param_hint="ARGS_JSON")
    click.echo(message_id)


@click.command()
@click.argument("app")
@click.option("--topic", "topics", multiple=True, help="Only this topic (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(app: str, topics: tuple[str, ...], as_json: bool) -> None:
    """Per topic, partition and group: length, lag, pending, oldest pending
    age, delayed and dead letters; then the live workers."""
    the_app = load_app(app)
    the_app.ping()
    result = collect(the_app, list(topics) or None)
    if as_json:
        click.echo(result.to_json())
        return
    rows: list[list[str]] = []
    for p in result.partitions:
        groups: list[GroupStats | None] = list(p.groups) or [None]
        for n, g in enumerate(groups):
            # Delayed messages and dead letters belong to the partition, not
            # to one group: shown on its first row.
            first = n == 0
            rows.append(
                [
                    p.topic,
                    str(p.partition),
                    str(p.length),
                    g.group if g else "-",
                    ("?" if g.lag is None else str(g.lag)) if g else "-",
                    str(g.pending) if g else "-",
                    _age(g.oldest_pending_s) if g else "-",
                    str(p.delayed) if first else "",
                    str(p.dead) if first else "",
                ]
                + ([p.node or ""] if any(x.node for x in result.partitions) else [])
            )
    headers = [
        "topic",
        "part",
        "length",
        "group",
        "lag",
        "pending",
        "oldest",
        "delayed",
        "dead",
    ]
    if any(x.node for x in result.partitions):
        headers.append("node")
    click.echo(table(rows, headers) if rows else "No topics yet.")
    click.echo()
    if result.workers:
        click.echo(
            table(
                [
                    [
                        w.id,
                        ", ".join(w.subscriptions),
                        str(w.concurrency),
                        _age(w.last_seen_s),
                        str(w.acked),
                        str(w.retried),
                        str(w.dead),
                    ]
                    for w in result.workers
                ],
                ["worker", "serves", "threads", "seen", "acked", "retried", "dead"],
            )
        )
    else:
        click.echo("No live workers.")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


@click.group()
def dlq() -> None:
    """Look at and act on dead letters."""


_reason = click.Choice(deadletters.REASONS)


@dlq.command("list")
@click.argument("app")
@click.option("--topic")
@click.option("--reason", type=_reason)
@click.option("--limit", type=int, default=100, show_default=True)
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON lines, with tracebacks."
)
def dlq_list(
    app: str, topic: str | None, reason: str | None, limit: int, as_json: bool
) -> None:
    """List dead letters: id, reason, task, key, attempts, error."""
    the_app = load_app(app)
    rows = []
    for n, letter in enumerate(deadletters.iterate(the_app, topic, reason)):
        if n >= limit:
            click.echo(f"(more than {limit}; use --limit)", err=True)
            break
        info: dict[str, Any] = letter.summary()
        if as_json:
            info["traceback"] = letter.get("traceback")
            click.echo(json.dumps(info))
        else:
            rows.append(
                [
                    info["id"],
                    info["message_id"],
                    info["reason"],
                    info["task"] or info["group"],
                    info["key"],
                    info["attempts"],
                    info["error"][:60],
                ]
            )
    if not as_json:
        click.echo(
            table(
                rows,
                ["id", "message", "reason", "task/group", "key", "attempts", "error"],
            )
            if rows
            else "No dead letters."
        )


@dlq.command("replay")
@click.argument("app")
@click.option("--topic")
@click.option("--reason", type=_reason)
@click.option(
    "--id",
    "ids",
    multiple=True,
    help="TOPIC:PARTITION:ENTRY_ID, as listed (repeatable).",
)
@click.option(
    "--all",
    "replay_all",
    is_flag=True,
    help="Every dead letter that matches --topic/--reason.",
)
def dlq_replay(
    app: str,
    topic: str | None,
    reason: str | None,
    ids: tuple[str, ...],
    replay_all: bool,
) -> None:
    """Send dead letters again (attempts reset, same key) and remove them."""
    if bool(ids) == replay_all:
        raise click.UsageError("give --id (one or more) or --all")
    the_app = load_app(app)
    if replay_all:
        letters = list(deadletters.iterate(the_app, topic, reason))
    else:
        letters = []
        for ref in ids:
            letter = deadletters.find(the_app, ref)
            if letter is None:
                raise click.BadParameter(
                    f"no dead letter {ref!r} (give a dead letter's id, the first "
                    "column of 'taskq dlq list', or the id of the message in it)",
                    param_hint="--id",
                )
            letters.append(letter)
    for letter in letters:
        new_id = deadletters.replay(the_app, letter)
        click.echo(f"{letter.ref} -> {new_id}")
    click.echo(f"Replayed {len(letters)} dead letter(s).")


@dlq.command("purge")
@click.argument("app")
@click.option("--topic")
@click.option("--reason", type=_reason)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(app: str, topic: str | None, reason: str | None, yes: bool) -> None:
    """Delete dead letters for good."""
    the_app = load_app(app)
    what = (
        "every dead letter"
        + (f" of topic {topic!r}" if topic else "")
        + (f" with reason {reason}" if reason else "")
    )
    if not yes:
        click.confirm(f"Delete {what}?", abort=True)
    click.echo(f"Deleted {deadletters.purge(the_app, topic, reason)} dead letter(s).")


@click.command()
@click.argument("app")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True
)
def dashboard(app: str, host: str, port: int) -> None:
    """Serve a web dashboard of APP: partitions, groups, workers, periodic
    jobs and digests (read-only; no login, so keep it on loopback or behind
    a proxy that checks who asks)."""
    from taskq.dashboard import DashboardServer

    the_app = load_app(app)
    the_app.ping()
    server = DashboardServer(the_app, host, port)
    click.echo(f"taskq dashboard at {server.url} (Ctrl-C stops it)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
