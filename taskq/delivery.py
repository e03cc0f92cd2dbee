"""The worker's view of messages: subscriptions, deliveries, outcomes."""

from __future__ import annotations

import enum
import itertools
import threading
from typing import Any

from taskq import message as wire
from taskq.handlers import Consumer, Handler
from taskq.keys import PartitionKeys


class Subscription:
    """One (topic, consumer group) a worker reads, and its handlers."""

    def __init__(
        self, topic: str, group: str, handlers: list[Handler], default_lease_s: float
    ) -> None:
        self.topic = topic
        self.group = group
        self.group_bytes = group.encode()
        self.consumer: Consumer | None = None
        self.tasks: dict[bytes, Handler] = {}
        for handler in handlers:
            if isinstance(handler, Consumer):
                self.consumer = handler
            else:
                self.tasks[handler.name.encode()] = handler
        # Handlers of one topic share its entries' leases, so the longest
        # lease among them applies to all (a topic per kind of task keeps
        # short leases short).
        leases = [h.lease_s for h in handlers if h.lease_s is not None]
        self.lease_s = max(leases) if leases else default_lease_s
        self.ordered = any(h.ordered for h in handlers)
        self.has_timeouts = any(h.timeout_s for h in handlers)
        self.partitions: list[PartitionKeys] = []
        self.by_stream: dict[bytes, PartitionKeys] = {}
        #: Partitions not read until the given monotonic time (their key is
        #: broken); the others go on.
        self.skipped: dict[PartitionKeys, float] = {}
        #: The partitions this worker reads: all of them, or for an ordered
        #: subscription only those it owns.
        self.reading: set[PartitionKeys] = set()
        #: Ordered subscriptions: the owned partitions that are not being
        #: handed over (a hand-over waits for the partition's running
        #: handlers, and is called off if the member it was for leaves).
        self.accepting: set[PartitionKeys] = set()
        #: Ordered subscriptions: partitions not read for now because too
        #: many of their deliveries wait for an earlier one of their key.
        self.full: set[PartitionKeys] = set()
        self._read_args: list[Any] = []
        #: Bumped (atomically, by next()) whenever the partitions to read
        #: change; the reader rebuilds its arguments when it moved. Other
        #: threads change them while the reader reads.
        self._versions = itertools.count(1)
        self._version = 0
        self._args_version = -1
        #: Set when the partitions to read change (ownership moved).
        self.changed = threading.Event()
        #: Entries written at or after this time (ms) are not for this group
        #: (a replay of a time range); they are acknowledged unread.
        self.until_ms: int | None = None

    def __repr__(self) -> str:
        return f"<Subscription {self.topic}/{self.group}>"

    @property
    def lease_ms(self) -> int:
        return int(self.lease_s * 1000)

    def set_partitions(self, partitions: list[PartitionKeys]) -> None:
        self.partitions = partitions
        self.by_stream = {pk.stream.encode(): pk for pk in partitions}
        self.reading = set() if self.ordered else set(partitions)
        self._version = next(self._versions)

    def start_reading(self, pk: PartitionKeys) -> None:
        self.reading.add(pk)
        self._version = next(self._versions)

    def stop_reading(self, pk: PartitionKeys) -> None:
        self.reading.discard(pk)
        self._version = next(self._versions)

    def skip(self, pk: PartitionKeys, until: float) -> None:
        self.skipped[pk] = until
        self._version = next(self._versions)

    def reset_read_args(self) -> None:
        """The partitions to read changed (``full`` or ``reading``)."""
        self._version = next(self._versions)

    def read_args(self, now: float, among: frozenset[str] | None = None) -> list[Any]:
        """``STREAMS s1 s2 ... > > ...`` for the partitions to read now;
        only streams in ``among`` when it is given (on a cluster, a
        reader reads the streams of one slot)."""
        if self.skipped and min(self.skipped.values()) <= now:
            self.skipped = {pk: t for pk, t in self.skipped.items() if t > now}
            self._version = next(self._versions)
        version = self._version
        if version != self._args_version:
            streams = [
                pk.stream
                for pk in self.partitions
                if pk in self.reading and pk not in self.skipped and pk not in self.full
            ]
            self._read_args = ["STREAMS", *streams, *([">"] * len(streams))]
            self._args_version = version
        if among is None:
            return self._read_args
        count = (len(self._read_args) - 1) // 2
        mine = [s for s in self._read_args[1 : 1 + count] if s in among]
        return ["STREAMS", *mine, *([">"] * len(mine))]

    def handler_for(self, fields: wire.Fields) -> Handler | Rejection:
        """The handler of an entry, or why it has none."""
        if len(fields) > wire.MAX_FIELDS:
            return Rejection(
                "invalid_envelope",
                f"the entry has {len(fields)} fields, more than the "
                f"{wire.MAX_FIELDS} a message may have",
            )
        if wire.PAYLOAD not in fields:
            return Rejection("invalid_envelope", "the entry has no payload field")
        if self.consumer is not None:
            return self.consumer
        name = fields.get(wire.TASK)
        if name is None:
            return Rejection("invalid_envelope", "the entry has no task field")
        handler = self.tasks.get(name)
        if handler is None:
            return Rejection(
                "unknown_task",
                f"no task named {_quoted(name)} is registered on topic {self.topic!r}",
            )
        return handler


def _quoted(name: bytes) -> str:
    """A name for a message, quoted and escaped once: valid UTF-8 as its
    repr, other bytes as ``\\xNN`` escapes (repr() of text that was decoded
    with escapes would escape those backslashes a second time)."""
    try:
        return repr(name.decode())
    except UnicodeDecodeError:
        return repr(name)[1:]


class Rejection:
    """Why an entry cannot be handled at all (it is dead-lettered)."""

    __slots__ = ("reason", "text")

    def __init__(self, reason: str, text: str) -> None:
        self.reason = reason
        self.text = text


#: Delivery states: not started (queued, or waiting for its key), running,
#: finished (its outcome waits to be settled), and ran but waiting out a
#: retry delay in place (ordered handlers).
WAITING, RUNNING, FINISHED, RETRYING = 0, 1, 2, 3


class Delivery:
    """An entry a worker holds: read, reclaimed, running or finished."""

    __slots__ = (
        "deliveries",
        "fields",
        "id",
        "lost",
        "pk",
        "previous_ms",
        "state",
        "sub",
    )

    def __init__(
        self,
        sub: Subscription,
        pk: PartitionKeys,
        entry_id: bytes,
        fields: wire.Fields,
        deliveries: int = 1,
    ) -> None:
        self.sub = sub
        self.pk = pk
        self.id = entry_id
        self.fields = fields
        self.deliveries = deliveries
        #: Set when another member took the entry over (this worker stalled
        #: past its lease); the worker then neither acknowledges nor retries.
        self.lost = False
        #: For an entry taken over from a dead worker: when that worker got
        #: it (ms since the epoch), the likely start of its last attempt.
        self.previous_ms: int | None = None
        self.state = WAITING

    @property
    def attempt(self) -> int:
        return wire.attempt_of(self.fields, self.deliveries)

    def describe(self) -> str:
        """For logs: the message id (the one ``send`` returned, which
        handlers see as ``ctx.message_id``), then where this copy is."""
        origin = wire.origin_of(self.fields, self.pk.topic, self.pk.partition, self.id)
        return f"{origin.decode()} ({self.pk.stream} {self.id.decode()})"


class Settle(enum.Enum):
    """What becomes of a delivery once its handler is done."""

    #: Acknowledge: done (or not for this group).
    ACK = "ack"
    #: Schedule another attempt and acknowledge this copy.
    RETRY = "retry"
    #: Write a dead letter and acknowledge.
    DEAD = "dead"
    #: Keep the entry where it is and run it again later (ordered handlers:
    #: the messages of its key wait behind it).
    RETRY_IN_PLACE = "retry_in_place"


class Outcome:
    __slots__ = ("delay_ms", "delivery", "kind", "packed", "record")

    def __init__(
        self,
        kind: Settle,
        delivery: Delivery,
        *,
        delay_ms: int = 0,
        packed: bytes = b"",
        record: dict[bytes, bytes] | None = None,
    ) -> None:
        self.kind = kind
        self.delivery = delivery
        self.delay_ms = delay_ms
        self.packed = packed
        self.record = record


def dead_record(
    delivery: Delivery,
    *,
    reason: str,
    attempts: int,
    worker: str,
    now_ms: int,
    error_type: str = "",
    error: str = "",
    traceback: str = "",
    last_attempt_ms: int | None = None,
) -> dict[bytes, bytes]:
    """The fields of a dead-letter entry.

    The original fields are kept under ``message:<field>``, byte for byte,
    so a replay sends exactly what was written (the first
    ``wire.MAX_FIELDS`` of an entry that has more).
    """
    fields = delivery.fields
    first = fields.get(wire.FIRST_ATTEMPT) or str(now_ms).encode()
    record: dict[bytes, Any] = {
        b"reason": reason.encode(),
        b"topic": delivery.pk.topic.encode(),
        b"partition": str(delivery.pk.partition).encode(),
        b"group": delivery.sub.group_bytes,
        b"source_id": delivery.id,
        b"task": fields.get(wire.TASK, b""),
        b"key": fields.get(wire.KEY, b""),
        b"attempts": str(attempts).encode(),
        b"error_type": error_type.encode(),
        b"error": error.encode("utf-8", "backslashreplace"),
        b"traceback": traceback.encode("utf-8", "backslashreplace"),
        b"worker": worker.encode(),
        b"first_attempt": first,
        b"last_attempt": str(last_attempt_ms or now_ms).encode(),
        b"dead_at": str(now_ms).encode(),
    }
    for field, value in itertools.islice(fields.items(), wire.MAX_FIELDS):
        record[b"message:" + field] = value
    return record
