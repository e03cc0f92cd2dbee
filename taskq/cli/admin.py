"""``taskq groups`` and ``taskq topics``: positions, replays, partitions."""

from __future__ import annotations

import json
from datetime import datetime

import click

from taskq import offsets
from taskq.cli import load_app
from taskq.cli.ops import table
from taskq.stats import known_topics


@click.group()
def groups() -> None:
    """Consumer groups: members, owners, lag; move or replay a position."""


@groups.command("list")
@click.argument("app")
@click.option("--topic", help="Only this topic.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def groups_list(app: str, topic: str | None, as_json: bool) -> None:
    """Every group of every topic: live members, and per partition its
    owner (ordered handlers), lag and pending count."""
    the_app = load_app(app)
    found = offsets.groups(the_app, topic)
    if as_json:
        click.echo(json.dumps([_group_dict(g) for g in found], indent=2))
        return
    if not found:
        click.echo("No consumer groups yet.")
        return
    for info in found:
        until = (
            f"; replay ends at {offsets._iso(info.until_ms)}" if info.until_ms else ""
        )
        members = ", ".join(info.members) or "none live"
        click.echo(f"{info.topic}/{info.group}: members {members}{until}")
        rows = [
            [
                str(p.partition),
                p.owner or "-",
                "?" if p.lag is None else str(p.lag),
                str(p.pending),
                p.last_delivered_id,
            ]
            for p in info.partitions
        ]
        click.echo(table(rows, ["part", "owner", "lag", "pending", "position"]))
        click.echo()


def _group_dict(info: offsets.GroupInfo) -> dict[str, object]:
    return {
        "topic": info.topic,
        "group": info.group,
        "members": info.members,
        "until_ms": info.until_ms,
        "partitions": [vars(p) for p in info.partitions],
    }


@groups.command("reset")
@click.argument("app")
@click.option("--group", required=True)
@click.option("--topic", required=True)
@click.option(
    "--to",
    "to",
    required=True,
    help="earliest, latest, an ISO time with a zone (entries written from "
    "then on are read again), or an entry id (entries after it are).",
)
@click.option("--force", is_flag=True, help="Even while members of the group run.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def groups_reset(
    app: str, group: str, topic: str, to: str, force: bool, yes: bool
) -> None:
    """Move GROUP's position in TOPIC: replay entries or skip them.

    Only entries still in the stream can be replayed: handled entries are
    trimmed unless the topic keeps them (``retention``)."""
    the_app = load_app(app)
    members = offsets.live_members(the_app, topic, group)
    if members and not force:
        raise click.ClickException(
            f"group {group!r} of {topic!r} has live members ({', '.join(members)}); "
            "stop them first, or pass --force. A worker that was killed counts "
            "as live until its last heartbeat is a minute old (taskq stats shows "
            "when each was last seen)"
        )
    moves = offsets.plan_reset(the_app, topic, group, to)
    redelivered = sum(m.redelivered for m in moves)
    skipped = sum(m.skipped for m in moves)
    for move in moves:
        click.echo(
            f"partition {move.partition}: {move.from_id} -> {move.to_id}"
            + (f" ({move.redelivered} again)" if move.redelivered else "")
            + (f" ({move.skipped} skipped)" if move.skipped else "")
        )
    click.echo(f"{redelivered} entries will be delivered again, {skipped} skipped.")
    if not yes:
        click.confirm("Move the group?", abort=True)
    offsets.apply_reset(the_app, topic, group, moves)
    click.echo(f"Group {group!r} of {topic!r} moved.")


@groups.command("replay")
@click.argument("app")
@click.option("--topic", required=True)
@click.option(
    "--group", required=True, help="A new group; its consumer must be in APP."
)
@click.option("--from", "start", required=True, help="ISO time with a zone.")
@click.option("--to", "end", help="ISO time with a zone (default: no end).")
def groups_replay(
    app: str, topic: str, group: str, start: str, end: str | None
) -> None:
    """Backfill: a new GROUP reads TOPIC's entries written from --from
    (until --to), then stops taking new ones."""
    the_app = load_app(app)
    start_ms = _ms(start, "--from")
    end_ms = _ms(end, "--to") if end else None
    if end_ms is not None and end_ms <= start_ms:
        raise click.BadParameter("must be later than --from", param_hint="--to")
    if (topic, group) not in the_app.consumers:
        click.echo(
            f"Note: APP has no consumer for {topic}/{group} yet; its workers will "
            "start reading once it has one.",
            err=True,
        )
    oldest = offsets.oldest_ms(the_app, topic)
    if oldest is None or oldest > start_ms:
        click.echo(
            f"Note: the oldest entry left in {topic!r} is from "
            f"{offsets._iso(oldest) if oldest else '(none: the topic is empty)'}; "
            "handled entries are trimmed unless the topic keeps them "
            "(app.topic(..., retention=seconds)).",
            err=True,
        )
    offsets.replay(the_app, topic, group, start_ms, end_ms)
    click.echo(
        f"Group {group!r} reads {topic!r} from {start}"
        + (f" until {end}." if end else ".")
    )


def _ms(value: str, hint: str) -> int:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO time", param_hint=hint
        ) from None
    if moment.tzinfo is None:
        raise click.BadParameter(
            "give a time zone, e.g. ...T08:00:00Z", param_hint=hint
        )
    return int(moment.timestamp() * 1000)


@click.group()
def topics() -> None:
    """Topics: list, describe, create or change the partition count."""


@topics.command("list")
@click.argument("app")
def topics_list(app: str) -> None:
    """Every topic in Redis, with its partition count and length."""
    the_app = load_app(app)
    rows = []
    for name, count in known_topics(the_app).items():
        length = sum(
            the_app.redis.xlen(the_app.keys.partition(name, p).stream)
            for p in range(count)
        )
        groups_of = {g.group for g in offsets.groups(the_app, name)}
        rows.append(
            [name, str(count), str(length), ", ".join(sorted(groups_of)) or "-"]
        )
    click.echo(
        table(rows, ["topic", "partitions", "length", "groups"])
        if rows
        else "No topics yet."
    )


@topics.command("describe")
@click.argument("app")
@click.argument("name")
def topics_describe(app: str, name: str) -> None:
    """One topic, partition by partition: length, first and last entry."""
    the_app = load_app(app)
    if name not in known_topics(the_app):
        declared = the_app.topics.get(name)
        if declared is not None:
            click.echo(
                f"Topic {name!r} is declared in APP"
                + (
                    f" with {declared.partitions} partitions"
                    if declared.partitions
                    else ""
                )
                + " but has not been used yet (nothing is stored for it)."
            )
            return
    rows = [
        [
            str(r["partition"]),
            str(r["length"]),
            r["first_time"] or "-",
            r["last_time"] or "-",
            str(r["delayed"]),
            str(r["dead"]),
        ]
        for r in offsets.describe_topic(the_app, name)
    ]
    click.echo(table(rows, ["part", "length", "first", "last", "delayed", "dead"]))


@topics.command("create")
@click.argument("app")
@click.argument("name")
@click.option("--partitions", type=click.IntRange(min=1), required=True)
@click.option(
    "--force", is_flag=True, help="Change the count of a topic that holds data."
)
def topics_create(app: str, name: str, partitions: int, force: bool) -> None:
    """Create topic NAME, or change its partition count."""
    the_app = load_app(app)
    click.echo(offsets.set_partitions(the_app, name, partitions, force=force) + ".")
