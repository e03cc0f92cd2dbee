"""The wire format: how a message is laid out in a stream entry.

An entry is a flat map of fields:

=================  ==========================================================
field              meaning
=================  ==========================================================
``task``           name of the task to run (task messages only)
``payload``        JSON: the task's keyword arguments, or the event
``key``            the message key, when it has one (chose the partition)
``attempt``        attempt number of this copy; absent for the first
``group``          only this consumer group handles the copy (set on
                   retries, hand-backs and replays, which go back onto the
                   shared stream but belong to the group that failed)
``first_attempt``  when attempt 1 started, ms since the epoch (retries)
``origin``         the message id ``send`` returned, on copies whose entry
                   id differs from it (retries, hand-backs, delayed sends)
``tick``           the cron tick a periodic run or digest batch is for, ms
                   since the epoch
``missed``         how many ticks the run stands for that did not run on
                   time (catch-up after downtime); absent when 0
=================  ==========================================================

A message id names an entry across the topic: ``TOPIC:PARTITION:ENTRY_ID``
(entry ids are only unique within one partition's stream).

Values are bytes; payloads are UTF-8 JSON. Unknown fields are kept and
ignored, so newer producers may add fields without breaking older workers.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

TASK = b"task"
PAYLOAD = b"payload"
KEY = b"key"
ATTEMPT = b"attempt"
GROUP = b"group"
FIRST_ATTEMPT = b"first_attempt"
ORIGIN = b"origin"
TICK = b"tick"
MISSED = b"missed"

Fields = dict[bytes, bytes]

#: Most fields an entry may have; taskq writes fewer than ten. An entry with
#: more was written by something else and is set aside unread, and its dead
#: letter keeps only this many of them: writing the record (whose fields a
#: Lua script passes to XADD through unpack()) must not fail in turn.
MAX_FIELDS = 64


def attempt_of(fields: Fields, deliveries: int) -> int:
    """The attempt number of an entry delivered ``deliveries`` times.

    A copy that a dead worker held comes back with a higher delivery count;
    each such delivery counts as one more attempt, so a message that kills
    every worker that takes it still reaches its limit.
    """
    raw = fields.get(ATTEMPT)
    copy_attempt = 1
    if raw:
        with contextlib.suppress(ValueError):
            copy_attempt = max(1, int(raw))
    return copy_attempt + max(1, deliveries) - 1


def int_field(fields: Fields, name: bytes, default: int = 0) -> int:
    """A whole-number field; ``default`` when absent or not a number."""
    raw = fields.get(name)
    try:
        return int(raw) if raw else default
    except ValueError:
        return default


def tick_of(fields: Fields) -> datetime | None:
    """The cron tick an entry runs for, as an aware UTC datetime."""
    ms = int_field(fields, TICK, -1)
    return None if ms < 0 else datetime.fromtimestamp(ms / 1000, UTC)


def message_id(topic: str, partition: int, entry_id: bytes | str) -> str:
    """The id of a message across its topic."""
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode()
    return f"{topic}:{partition}:{entry_id}"


def origin_of(fields: Fields, topic: str, partition: int, entry_id: bytes) -> bytes:
    """The id ``send`` returned for the message this entry is a copy of."""
    origin = fields.get(ORIGIN)
    if origin is not None:
        return origin
    return b"%s:%d:%s" % (topic.encode(), partition, entry_id)


def entry_ms(entry_id: bytes | str) -> int:
    """Milliseconds since the epoch at which an entry id was made."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def text(value: bytes | None) -> str:
    """Decode a field for display; bytes that are not UTF-8 are escaped."""
    if value is None:
        return ""
    return value.decode("utf-8", "backslashreplace")
