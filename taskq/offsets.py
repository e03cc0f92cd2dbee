"""Consumer-group positions and topics: what Kafka users do with offsets.

* :func:`groups` lists each group of each topic: members, owners and lag;
* :func:`plan_reset` / :func:`apply_reset` move a group's position
  (``XGROUP SETID``) to the start, the end, a time or an entry id;
* :func:`replay` makes a new group that reads a time range of a topic (a
  backfill), ending where the range ends;
* :func:`set_partitions` changes a topic's partition count on purpose.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import redis

from taskq import defaults
from taskq.errors import ConfigurationError, TaskqError
from taskq.keys import PartitionKeys, check_name
from taskq.message import KEY, entry_ms, text
from taskq.stats import known_topics

if TYPE_CHECKING:
    from taskq.app import TaskQ

#: The largest sequence number of an entry id: "<ms>-MAX_SEQ" is the last
#: id a millisecond can have.
MAX_SEQ = 18446744073709551615
#: Entries are counted one by one, up to this many, when a plan says how
#: many a reset re-delivers or skips.
COUNT_LIMIT = 1_000_000


@dataclass
class PartitionPosition:
    partition: int
    last_delivered_id: str
    lag: int | None
    pending: int
    owner: str | None = None


@dataclass
class GroupInfo:
    topic: str
    group: str
    members: list[str]
    partitions: list[PartitionPosition] = field(default_factory=list)
    #: Entries from this time on (ms) are not for the group (a replay).
    until_ms: int | None = None


def groups(app: TaskQ, topic: str | None = None) -> list[GroupInfo]:
    result: dict[tuple[str, str], GroupInfo] = {}
    for name, count in known_topics(app).items():
        if topic is not None and name != topic:
            continue
        for p in range(count):
            pk = app.keys.partition(name, p)
            try:
                infos = app.redis.xinfo_groups(pk.stream)
            except redis.ResponseError:
                continue  # no stream yet
            for info in infos:
                group = text(info["name"])
                entry = result.get((name, group))
                if entry is None:
                    entry = result[(name, group)] = GroupInfo(
                        name,
                        group,
                        live_members(app, name, group),
                        [],
                        until_ms(app, name, group),
                    )
                owner: Any = app.redis.get(pk.owner(group))
                entry.partitions.append(
                    PartitionPosition(
                        partition=p,
                        last_delivered_id=text(info.get("last-delivered-id")),
                        lag=info.get("lag"),
                        pending=int(info.get("pending", 0)),
                        owner=text(owner).rsplit("|", 1)[0] if owner else None,
                    )
                )
    return list(result.values())


def live_members(app: TaskQ, topic: str, group: str) -> list[str]:
    """Workers serving ``topic``/``group`` now (by their heartbeats)."""
    from taskq.stats import workers

    wanted = f"{topic}/{group}"
    members = {w.id for w in workers(app) if wanted in w.subscriptions}
    now_ms = int(time.time() * 1000)
    owners = app.redis.zrangebyscore(
        app.keys.members(topic, group), now_ms - 60_000, "+inf"
    )
    members.update(text(m) for m in cast(Any, owners))
    return sorted(members)


def until_ms(app: TaskQ, topic: str, group: str) -> int | None:
    raw = app.redis.hget(app.keys.group_config(topic, group), "until_ms")
    return int(raw) if raw else None


# -- resetting a position ---------------------------------------------------------


@dataclass
class Move:
    partition: int
    from_id: str
    to_id: str
    #: Entries delivered again (moving back) or skipped (moving forward).
    redelivered: int = 0
    skipped: int = 0


def parse_position(value: str) -> str:
    """``earliest``, ``latest``, an ISO time with a zone, or an entry id:
    the id after which the group reads (``$`` for the end)."""
    if value == "earliest":
        return "0-0"
    if value == "latest":
        return "$"
    if _is_entry_id(value):
        return value if "-" in value else f"{value}-{MAX_SEQ}"
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigurationError(
            f"{value!r} is not earliest, latest, an ISO time or an entry id"
        ) from None
    if moment.tzinfo is None:
        raise ConfigurationError(
            f"{value!r} has no time zone; write it like 2026-12-04T08:00:00+01:00 "
            "or 2026-12-04T07:00:00Z"
        )
    return time_position(int(moment.timestamp() * 1000))


def time_position(ms: int) -> str:
    """The position from which entries written at ``ms`` or later are read."""
    return "0-0" if ms <= 0 else f"{ms - 1}-{MAX_SEQ}"


def _refuse_future(app: TaskQ, to: str, target: str) -> None:
    """A time still to come would make the group skip every entry written
    until then, which nobody means; Redis's clock decides (it stamps the
    entry ids)."""
    seconds, micros = cast(Any, app.redis.time())
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    if _order(target)[0] >= now_ms:
        raise ConfigurationError(
            f"{to!r} is in the future (it is {_iso(now_ms)} by Redis's clock): "
            "the group would skip every entry written until then. Give a time "
            "that has passed, or 'latest' to skip only what is there now"
        )


def _is_entry_id(value: str) -> bool:
    ms, _, seq = value.partition("-")
    return ms.isdigit() and (seq == "" or seq.isdigit())


def plan_reset(app: TaskQ, topic: str, group: str, to: str) -> list[Move]:
    target = parse_position(to)
    if to not in ("earliest", "latest") and not _is_entry_id(to):
        _refuse_future(app, to, target)
    moves = []
    for p in range(_partitions(app, topic)):
        pk = app.keys.partition(topic, p)
        info = _group(app, pk, group)
        if info is None:
            raise TaskqError(f"group {group!r} does not read topic {topic!r}")
        current = text(info.get("last-delivered-id"))
        new = target
        if new == "$":
            last = cast(Any, app.redis.xrevrange(pk.stream, count=1))
            new = text(last[0][0]) if last else "0-0"
        move = Move(p, current, new)
        if _before(new, current):
            move.redelivered = _count(app, pk, new, current)
        elif _before(current, new):
            move.skipped = _count(app, pk, current, new)
        moves.append(move)
    return moves


def apply_reset(app: TaskQ, topic: str, group: str, moves: list[Move]) -> None:
    for move in moves:
        pk = app.keys.partition(topic, move.partition)
        app.redis.xgroup_setid(pk.stream, group, move.to_id)


def replay(
    app: TaskQ, topic: str, group: str, start_ms: int, end_ms: int | None
) -> list[str]:
    """Make group ``group`` read ``topic`` from ``start_ms`` (up to, not
    including, ``end_ms``). Its consumer must be registered in the code."""
    check_name("group", group)
    count = _partitions(app, topic)
    position = time_position(start_ms)
    for p in range(count):
        stream = app.keys.partition(topic, p).stream
        try:
            app.redis.xgroup_create(stream, group, id=position, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                raise TaskqError(
                    f"group {group!r} reads {topic!r} already; replay into a new group"
                ) from None
            raise
    if end_ms is not None:
        app.redis.hset(app.keys.group_config(topic, group), "until_ms", end_ms)
    return [position] * count


def oldest_ms(app: TaskQ, topic: str) -> int | None:
    """When the oldest entry still in the topic was written (ms)."""
    oldest = None
    for p in range(_partitions(app, topic)):
        first = cast(
            Any, app.redis.xrange(app.keys.partition(topic, p).stream, count=1)
        )
        if first:
            ms = entry_ms(first[0][0])
            oldest = ms if oldest is None else min(oldest, ms)
    return oldest


def _partitions(app: TaskQ, topic: str) -> int:
    count = known_topics(app).get(topic)
    if count is None:
        raise TaskqError(f"no topic {topic!r} in Redis")
    return count


def _group(app: TaskQ, pk: PartitionKeys, group: str) -> dict[str, Any] | None:
    try:
        infos = app.redis.xinfo_groups(pk.stream)
    except redis.ResponseError:
        return None
    for info in infos:
        if text(info["name"]) == group:
            return info
    return None


def _before(a: str, b: str) -> bool:
    return _order(a) < _order(b)


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _count(app: TaskQ, pk: PartitionKeys, after: str, upto: str) -> int:
    entries = cast(
        Any, app.redis.xrange(pk.stream, min=f"({after}", max=upto, count=COUNT_LIMIT)
    )
    return len(entries)


# -- partition counts ---------------------------------------------------------------


def set_partitions(app: TaskQ, topic: str, count: int, *, force: bool) -> str:
    """Store a topic's partition count; returns what was done.

    A topic that has data keeps it where it is, but keys map to other
    partitions afterwards (``partition_for`` depends on the count), so the
    order of a key's old and new messages is no longer kept: that takes
    ``force``. Partitions dropped by a smaller count must be empty.
    """
    check_name("topic", topic)
    if count < 1:
        raise ConfigurationError("a topic has at least one partition")
    current = known_topics(app).get(topic)
    if current is None:
        app.redis.hsetnx(app.keys.topics, topic, count)
        stored = int(cast(Any, app.redis.hget(app.keys.topics, topic)))
        return f"topic {topic!r} created with {stored} partitions"
    if current == count:
        return f"topic {topic!r} has {count} partitions already"
    has_data = any(
        app.redis.xlen(app.keys.partition(topic, p).stream)
        or app.redis.zcard(app.keys.partition(topic, p).delayed)
        for p in range(current)
    )
    if has_data and not force:
        raise TaskqError(
            f"topic {topic!r} has {current} partitions and holds data; with "
            f"{count} partitions most keys map to another partition, so a key's "
            "new messages may be handled before its old ones. Drain the topic "
            "first, or pass --force to change it anyway"
        )
    for p in range(count, current):
        pk = app.keys.partition(topic, p)
        # What every group has handled may still be in the stream until a
        # worker trims it: it does not count.
        app.scripts.trim(pk)
        if app.redis.xlen(pk.stream) or app.redis.zcard(pk.delayed):
            raise TaskqError(
                f"partition {p} of {topic!r} still holds messages; it would be "
                "dropped with a smaller count. Drain it first"
            )
    app.redis.hset(app.keys.topics, topic, count)
    app.forget_partitions()
    done = (
        f"topic {topic!r} now has {count} partitions (was {current}); running "
        "workers restart to serve them within 30 s, and producers use the new "
        f"count within {defaults.PARTITIONS_REFRESH_S:g} s"
    )
    if count < current:
        # Producers still using the old count may write to the dropped
        # partitions until they read the new one: wait that long, then move
        # what arrived there to the partitions its keys map to now.
        time.sleep(defaults.PARTITIONS_REFRESH_S + 1.0)
        moved = sweep_dropped(app, topic, count, current)
        if moved:
            done += (
                f"; moved {moved} message(s) sent meanwhile to the dropped partitions"
            )
    return done


def sweep_dropped(app: TaskQ, topic: str, count: int, old_count: int) -> int:
    """Move messages in partitions ``count`` .. ``old_count - 1`` (dropped
    by a smaller count) that no group has read yet, and their delayed
    messages, to the partitions their keys map to now; returns how many.

    Entries some group has read already are left to the worker that has
    them (a worker still serving the old count, until it restarts).
    """
    from taskq.partitioning import RoundRobin, partition_for
    from taskq.scripts import unpack_message

    spread = RoundRobin()
    moved = 0

    def home(fields: dict[bytes, bytes]) -> PartitionKeys:
        key = fields.get(KEY)
        p = spread.next(count) if key is None else partition_for(key, count)
        return app.keys.partition(topic, p)

    for p in range(count, old_count):
        pk = app.keys.partition(topic, p)
        groups = (
            cast(Any, app.redis.xinfo_groups(pk.stream))
            if app.redis.exists(pk.stream)
            else []
        )
        read_up_to = max(
            (_order(text(g["last-delivered-id"])) for g in groups), default=(0, 0)
        )
        # Each message is added to its new partition before it is removed
        # from the old one: a failure halfway leaves a copy, never none.
        pipe = app.redis.pipeline(transaction=False)
        for entry_id, fields in cast(Any, app.redis.xrange(pk.stream)):
            if _order(text(entry_id)) <= read_up_to:
                continue
            pipe.xadd(home(fields).stream, fields)
            pipe.xdel(pk.stream, entry_id)
            moved += 1
        delayed = app.redis.zrange(pk.delayed, 0, -1, withscores=True)
        for packed, due in cast(Any, delayed):
            try:
                _, fields = unpack_message(packed)
            except ValueError:
                continue  # not a message: the worker sets it aside
            pipe.zadd(home(fields).delayed, {packed: due})
            pipe.zrem(pk.delayed, packed)
            moved += 1
        pipe.execute()
    return moved


def describe_topic(app: TaskQ, topic: str) -> list[dict[str, Any]]:
    rows = []
    for p in range(_partitions(app, topic)):
        pk = app.keys.partition(topic, p)
        first = cast(Any, app.redis.xrange(pk.stream, count=1))
        last = cast(Any, app.redis.xrevrange(pk.stream, count=1))
        rows.append(
            {
                "partition": p,
                "length": app.redis.xlen(pk.stream),
                "first": text(first[0][0]) if first else None,
                "last": text(last[0][0]) if last else None,
                "first_time": _iso(entry_ms(first[0][0])) if first else None,
                "last_time": _iso(entry_ms(last[0][0])) if last else None,
                "delayed": app.redis.zcard(pk.delayed),
                "dead": app.redis.xlen(pk.dead),
            }
        )
    return rows


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
