"""Every Redis key taskq uses is built here, and nowhere else.

Keys start with the app's namespace and use ``:`` as the only separator.
Each partition of a topic has its own hash tag, ``{topic:partition}``, and
every key that belongs to a partition carries it. One atomic step (a Lua
script, a MULTI) only ever touches the keys of one partition, so each runs
in one slot of a Redis Cluster and a topic's partitions spread over its
nodes.

The docs (README, "Redis layout") list each key with its type and contents;
keep that table in step with this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

# Names end up inside hash tags and key names, so braces, spaces and the
# separator itself are kept out of them.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")


def check_name(kind: str, name: str) -> str:
    """Return ``name`` if it may be used as a topic, group or job name."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(
            f"invalid {kind} name {name!r}: use 1 to 100 letters, digits, "
            "'_', '.' or '-'"
        )
    return name


@dataclass(frozen=True, slots=True)
class PartitionKeys:
    """The keys of one partition of a topic; all share one hash tag."""

    topic: str
    partition: int
    #: Stream of the partition's messages (XADD, XREADGROUP, XACK).
    stream: str
    #: Sorted set of messages waiting for a later time (retries, delays),
    #: scored by due time in milliseconds.
    delayed: str
    #: Stream of messages set aside with their reason (dead letters).
    dead: str
    prefix: str

    def owner(self, group: str) -> str:
        """String holding the lease of the member that owns the partition."""
        return f"{self.prefix}:owner:{group}"

    def handover(self, group: str) -> str:
        """String set by an owner that handed the partition over in good
        order (the delivery counts it left are exact); read by the next."""
        return f"{self.prefix}:handover:{group}"

    def fence(self, group: str) -> str:
        """Counter that hands out a new fencing token with every lease."""
        return f"{self.prefix}:fence:{group}"

    def fired(self, job: str) -> str:
        """String: the last tick (ms) of periodic job ``job`` whose run was
        written to this partition; makes writing a tick's run idempotent."""
        return f"{self.prefix}:fired:{job}"

    def digest(self, name: str) -> DigestKeys:
        """The keys digest ``name`` keeps in this partition."""
        return _digest_keys(self.prefix, name)


@dataclass(frozen=True, slots=True)
class DigestKeys:
    """What a digest keeps in one partition; all share its hash tag.

    Events are collected here as they arrive and stay until the batch that
    hands them to the handler succeeded or was dead-lettered.
    """

    #: Hash: ``sealed`` (the last tick whose window is closed, ms),
    #: ``sealing`` (the tick being closed), ``stamp`` (the latest collection
    #: time, ms), and the counters ``seq`` and ``batch``.
    meta: str
    #: Sorted set: key -> collection time of its oldest open event (ms).
    keys: str
    #: Sorted set (all scores 0, ordered by member): one member per open
    #: event, ``<len>:<key><seq, 16 digits><origin>``: per key, in arrival
    #: order.
    open: str
    #: Hash: origin message id -> ``<stamp> <entry id> <payload>``, for
    #: every event collected and not yet done.
    items: str
    #: Sorted set (all scores 0): ``<batch, 12 digits><origin>`` for every
    #: event handed to a batch that has not finished.
    sealed: str


class Keys:
    """Builds the keys of one namespace."""

    def __init__(self, namespace: str) -> None:
        check_name("namespace", namespace)
        self.namespace = namespace

    @property
    def topics(self) -> str:
        """Hash: topic name -> partition count."""
        return f"{self.namespace}:topics"

    @property
    def workers(self) -> str:
        """Sorted set: worker id -> time of its last heartbeat, in ms."""
        return f"{self.namespace}:workers"

    def worker(self, worker_id: str) -> str:
        """JSON describing a live worker; expires unless renewed."""
        return f"{self.namespace}:worker:{worker_id}"

    def members(self, topic: str, group: str) -> str:
        """Sorted set: the live members of a group that owns partitions of
        ``topic`` (ordered handlers) -> time of their last heartbeat, in ms.
        Expires three leases after the last heartbeat."""
        return f"{self.namespace}:members:{topic}:{group}"

    def group_config(self, topic: str, group: str) -> str:
        """Hash: settings of one group of a topic (``until_ms``: entries
        written from then on are not for it, set by a replay)."""
        return f"{self.namespace}:group:{topic}:{group}"

    def partition(self, topic: str, partition: int) -> PartitionKeys:
        return _partition_keys(self.namespace, topic, partition)

    def schedule(self, job: str) -> ScheduleKeys:
        """The keys of one periodic job or digest schedule.

        A job's keys share the hash tag ``{schedule:job}``.
        """
        prefix = f"{self.namespace}:{{schedule:{job}}}"
        return ScheduleKeys(last=f"{prefix}:last", lock=f"{prefix}:lock")


@dataclass(frozen=True, slots=True)
class ScheduleKeys:
    """The keys of one periodic job or digest, tagged ``{schedule:job}``."""

    #: String: the last tick done (ms since the epoch). Never expires: it
    #: is what a restarted scheduler catches up from.
    last: str
    #: String: id of the scheduler handling the job right now; expires
    #: after a few seconds, so a stopped scheduler is replaced.
    lock: str


@lru_cache(maxsize=4096)
def _digest_keys(prefix: str, name: str) -> DigestKeys:
    base = f"{prefix}:digest:{name}"
    return DigestKeys(
        meta=f"{base}:meta",
        keys=f"{base}:keys",
        open=f"{base}:open",
        items=f"{base}:items",
        sealed=f"{base}:sealed",
    )


@lru_cache(maxsize=4096)
def _partition_keys(namespace: str, topic: str, partition: int) -> PartitionKeys:
    prefix = f"{namespace}:{{{topic}:{partition}}}"
    return PartitionKeys(
        topic=topic,
        partition=partition,
        stream=f"{prefix}:stream",
        delayed=f"{prefix}:delayed",
        dead=f"{prefix}:dead",
        prefix=prefix,
    )
