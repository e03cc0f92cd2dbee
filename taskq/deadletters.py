"""Reading, replaying and purging dead letters.

Each partition keeps its dead letters in a stream of its own (so setting a
message aside and acknowledging it is one atomic step in one slot). A dead
letter is named across the topic as ``TOPIC:PARTITION:ENTRY_ID``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from taskq import message as wire
from taskq.partitioning import partition_for
from taskq.stats import known_topics

if TYPE_CHECKING:
    from taskq.app import TaskQ

#: The reasons a message is set aside.
REASONS = (
    "retries_exhausted",
    "worker_lost",
    "unknown_task",
    "decode_error",
    "invalid_envelope",
    "validation_error",
    "payload_too_large",
)

_PREFIX = b"message:"

Entries = list[tuple[bytes, dict[bytes, bytes]]]


@dataclass
class DeadLetter:
    topic: str
    partition: int
    entry_id: str
    record: dict[bytes, bytes]

    @property
    def ref(self) -> str:
        return f"{self.topic}:{self.partition}:{self.entry_id}"

    def get(self, name: str) -> str:
        return wire.text(self.record.get(name.encode()))

    @property
    def reason(self) -> str:
        return self.get("reason")

    @property
    def message(self) -> dict[bytes, bytes]:
        """The original fields of the message, byte for byte."""
        return {
            field[len(_PREFIX) :]: value
            for field, value in self.record.items()
            if field.startswith(_PREFIX)
        }

    def summary(self) -> dict[str, str]:
        message = self.message
        origin = message.get(wire.ORIGIN)
        return {
            "id": self.ref,
            "message_id": wire.text(origin)
            if origin
            else wire.message_id(self.topic, self.partition, self.get("source_id")),
            "reason": self.reason,
            "task": self.get("task"),
            "key": self.get("key"),
            "group": self.get("group"),
            "attempts": self.get("attempts"),
            "error": " ".join(
                part for part in (self.get("error_type"), self.get("error")) if part
            ),
            "first_attempt": self.get("first_attempt"),
            "last_attempt": self.get("last_attempt"),
            "dead_at": self.get("dead_at"),
            "worker": self.get("worker"),
            "payload": wire.text(self.message.get(wire.PAYLOAD)),
        }


def iterate(
    app: TaskQ,
    topic: str | None = None,
    reason: str | None = None,
    partition: int | None = None,
) -> Iterator[DeadLetter]:
    """Every dead letter, oldest first within each partition."""
    for name, count in known_topics(app).items():
        if topic is not None and name != topic:
            continue
        for p in range(count) if partition is None else [partition]:
            stream = app.keys.partition(name, p).dead
            start = "-"
            while True:
                batch: Entries = cast(
                    Any, app.redis.xrange(stream, min=start, count=500)
                )
                for entry_id, record in batch:
                    letter = DeadLetter(name, p, wire.text(entry_id), record)
                    if reason is None or letter.reason == reason:
                        yield letter
                if len(batch) < 500:
                    break
                start = f"({wire.text(batch[-1][0])}"


_STREAM_ID = re.compile(r"^\d+-\d+$")


def find(app: TaskQ, ref: str) -> DeadLetter | None:
    """The dead letter ``ref`` names: its own id (first column of ``taskq
    dlq list``), or the id of the message it holds (the one ``send``
    returned and the logs show)."""
    try:
        topic, partition, entry_id = ref.rsplit(":", 2)
        stream = app.keys.partition(topic, int(partition)).dead
    except ValueError:
        return None
    if _STREAM_ID.match(entry_id):
        found: Entries = cast(
            Any, app.redis.xrange(stream, min=entry_id, max=entry_id, count=1)
        )
        if found:
            return DeadLetter(topic, int(partition), entry_id, found[0][1])
    # A message id: its dead letter is in the same partition.
    for letter in iterate(app, topic, partition=int(partition)):
        if letter.summary()["message_id"] == ref:
            return letter
    return None


def replay(app: TaskQ, letter: DeadLetter) -> str:
    """Send a dead letter again, attempts reset, and remove it; returns the
    new copy's message id.

    It goes to the partition of its key (the partition it came from when it
    has none), and only to the consumer group it failed in. Handlers see
    the original message id (``ctx.message_id``) on the copy too.
    """
    fields = letter.message
    for field in (wire.ATTEMPT, wire.FIRST_ATTEMPT):
        fields.pop(field, None)
    fields[wire.ORIGIN] = letter.summary()["message_id"].encode()
    group = letter.record.get(b"group")
    if group:
        fields[wire.GROUP] = group
    count = app.partitions(letter.topic)
    key = fields.get(wire.KEY)
    partition = letter.partition if key is None else partition_for(key, count)
    if partition >= count:
        partition = partition % count
    target = app.keys.partition(letter.topic, partition)
    source = app.keys.partition(letter.topic, letter.partition)
    # The same partition: one transaction in one slot, so a crash cannot
    # both keep and resend the letter. Across partitions (the count changed)
    # a crash in between may leave a copy in both places, never in neither.
    pipe = app.redis.pipeline(transaction=target == source)
    pipe.xadd(target.stream, fields)  # type: ignore[arg-type]
    pipe.xdel(source.dead, letter.entry_id)
    new_id, _ = pipe.execute()
    return wire.message_id(target.topic, target.partition, new_id)


def purge(app: TaskQ, topic: str | None = None, reason: str | None = None) -> int:
    """Delete dead letters; returns how many."""
    removed = 0
    if reason is None:
        for name, count in known_topics(app).items():
            if topic is not None and name != topic:
                continue
            for p in range(count):
                dead = app.keys.partition(name, p).dead
                removed += app.redis.xlen(dead)
                app.redis.delete(dead)
        return removed
    for letter in list(iterate(app, topic, reason)):
        removed += app.redis.xdel(
            app.keys.partition(letter.topic, letter.partition).dead, letter.entry_id
        )
    return removed


def age_s(letter: DeadLetter) -> float:
    return max(0.0, time.time() - wire.entry_ms(letter.entry_id) / 1000)
