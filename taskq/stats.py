"""What an operator wants to know: topics, partitions, groups, workers.

Everything here reads; nothing changes Redis.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, cast

import redis

from taskq.cluster import ClusterClient
from taskq.message import entry_ms

if TYPE_CHECKING:
    from taskq.app import TaskQ

log = logging.getLogger("taskq.stats")

#: Lag is counted entry by entry, up to this many, when Redis cannot say.
LAG_COUNT_LIMIT = 10_000


@dataclass
class GroupStats:
    group: str
    #: Entries not yet delivered to the group (None: more than can be counted).
    lag: int | None
    #: Delivered, not yet acknowledged.
    pending: int
    #: Age of the oldest pending entry, in seconds (since it was written).
    oldest_pending_s: float | None
    consumers: int
    last_delivered_id: str


@dataclass
class PartitionStats:
    topic: str
    partition: int
    stream: str
    length: int
    delayed: int
    dead: int
    groups: list[GroupStats] = field(default_factory=list)
    #: The cluster node that holds the partition, "host:port" (clusters only).
    node: str | None = None


@dataclass
class WorkerStats:
    id: str
    host: str
    pid: int
    subscriptions: list[str]
    concurrency: int
    last_seen_s: float
    acked: int
    retried: int
    dead: int


@dataclass
class ScheduleStats:
    name: str
    #: "periodic" or "digest".
    kind: str
    cron: str
    tz: str
    catchup: str
    #: The last tick that ran and the next one, ISO 8601 in the job's zone.
    last: str | None
    next: str
    #: Digests: events in the open window, and in batches not yet done.
    open_events: int | None = None
    batched_events: int | None = None


@dataclass
class Stats:
    partitions: list[PartitionStats]
    workers: list[WorkerStats]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def known_topics(app: TaskQ) -> dict[str, int]:
    """Every topic stored in Redis, with its partition count (a count that
    is not a number is left out, with a warning)."""
    stored = app.redis.hgetall(app.keys.topics)
    topics = {}
    for name, count in sorted(stored.items()):
        try:
            topics[_s(name)] = int(count)
        except ValueError:
            log.warning(
                "Topic %r has a partition count of %r in %s, not a number; left out.",
                _s(name),
                _s(count),
                app.keys.topics,
            )
    return topics


def collect(app: TaskQ, topics: list[str] | None = None) -> Stats:
    client = app.redis
    all_topics = known_topics(app)
    names = topics or list(all_topics)
    partitions: list[PartitionStats] = []
    now_ms = time.time() * 1000
    for topic in names:
        count = all_topics.get(topic)
        if count is None:
            continue
        for p in range(count):
            pk = app.keys.partition(topic, p)
            pipe = client.pipeline(transaction=False)
            pipe.xlen(pk.stream)
            pipe.zcard(pk.delayed)
            pipe.xlen(pk.dead)
            pipe.xinfo_groups(pk.stream)
            length, delayed, dead, groups = pipe.execute(raise_on_error=False)
            stats = PartitionStats(
                topic=topic,
                partition=p,
                stream=pk.stream,
                length=_int(length),
                delayed=_int(delayed),
                dead=_int(dead),
                node=_node(client, pk.stream),
            )
            if isinstance(groups, list):
                for info in groups:
                    stats.groups.append(_group_stats(client, pk.stream, info, now_ms))
            partitions.append(stats)
    return Stats(partitions=partitions, workers=workers(app))


def _node(client: redis.Redis, key: str) -> str | None:
    # A partition's keys share its hash tag, so its stream's node holds
    # all of them.
    if isinstance(client, ClusterClient):
        return client.node_of(key)
    return None


def _group_stats(
    client: redis.Redis, stream: str, info: dict[Any, Any], now_ms: float
) -> GroupStats:
    name = _s(info["name"])
    pending = int(info.get("pending", 0))
    oldest = None
    if pending:
        summary = client.xpending(stream, name)
        if summary and summary.get("min"):
            oldest = max(0.0, (now_ms - entry_ms(summary["min"])) / 1000)
    last_id = _s(info.get("last-delivered-id", b"0-0"))
    lag = info.get("lag")
    if lag is None:
        # Redis before 7.0, or a stream with deletions: count by hand.
        after: list[Any] = cast(
            Any, client.xrange(stream, min=f"({last_id}", count=LAG_COUNT_LIMIT)
        )
        lag = len(after) if len(after) < LAG_COUNT_LIMIT else None
    return GroupStats(
        group=name,
        lag=None if lag is None else int(lag),
        pending=pending,
        oldest_pending_s=oldest,
        consumers=int(info.get("consumers", 0)),
        last_delivered_id=last_id,
    )


def workers(app: TaskQ) -> list[WorkerStats]:
    client = app.redis
    now_ms = time.time() * 1000
    result = []
    members: list[tuple[bytes, float]] = cast(
        Any, client.zrange(app.keys.workers, 0, -1, withscores=True)
    )
    for worker_id, seen_ms in members:
        raw = client.get(app.keys.worker(_s(worker_id)))
        if not raw:
            continue
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except ValueError:
            log.warning("The record of worker %r is not readable; left out.", worker_id)
            continue
        result.append(
            WorkerStats(
                id=_s(worker_id),
                host=data.get("host", ""),
                pid=int(data.get("pid", 0)),
                subscriptions=list(data.get("subscriptions", [])),
                concurrency=int(data.get("concurrency", 0)),
                last_seen_s=max(0.0, (now_ms - seen_ms) / 1000),
                acked=int(data.get("acked", 0)),
                retried=int(data.get("retried", 0)),
                dead=int(data.get("dead", 0)),
            )
        )
    return result


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def schedules(app: TaskQ) -> list[ScheduleStats]:
    """The app's periodic jobs and digests, with their last and next tick."""
    from taskq.cron import from_ms
    from taskq.digest import DigestSchedule, window_sizes
    from taskq.scheduler import Scheduler

    if not app.schedules:
        return []
    scheduler = Scheduler(app)
    now = from_ms(int(app.clock.now() * 1000))
    rows = []
    for name, item in sorted(app.schedules.items()):
        cron = item.cron
        last = scheduler.last_tick(name)
        row = ScheduleStats(
            name=name,
            kind=item.kind,
            cron=cron.expression,
            tz=cron.tz_name,
            catchup=item.catchup,
            last=last.astimezone(cron.tz).isoformat() if last else None,
            next=cron.next_after(last or now).astimezone(cron.tz).isoformat(),
        )
        if isinstance(item, DigestSchedule):
            row.open_events, row.batched_events = window_sizes(app, item.digest)
        rows.append(row)
    return rows
