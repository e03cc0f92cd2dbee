"""Which partition a message goes to.

A message with a key goes to ``partition_for(key, n)``: the CRC-32 of the
key's UTF-8 bytes (the checksum of ``zlib.crc32``, IEEE 802.3) modulo the
topic's partition count. CRC-32 is fixed by a standard, so every process,
machine and Python version maps a key to the same partition, unlike
Python's salted ``hash()``. Integers and other values are turned into text
with ``str()`` first, so the key ``7`` and the key ``"7"`` are one key.

Messages without a key are spread round-robin by each producer.
"""

from __future__ import annotations

import threading
import uuid
import zlib
from typing import Any

from taskq.errors import ValidationError

#: What may be a message key: its text must be the same in every process.
KEY_TYPES = (str, bytes, int, uuid.UUID)


def key_bytes(key: Any) -> bytes:
    """The bytes a key is hashed and stored as."""
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, KEY_TYPES) and not isinstance(key, bool):
        return str(key).encode()
    raise ValidationError(
        "key",
        [
            {
                "loc": (),
                "msg": f"a message key is a str, bytes, int or UUID, not "
                f"{type(key).__name__} ({key!r}); its text must be the same in "
                "every process",
                "type": "key_type",
            }
        ],
        subject="message key",
    )


def partition_for(key: Any, partitions: int) -> int:
    """Return the partition, in ``range(partitions)``, of ``key``."""
    if partitions < 1:
        raise ValueError("a topic has at least one partition")
    return zlib.crc32(key_bytes(key)) % partitions


class RoundRobin:
    """Spreads keyless messages evenly over a topic's partitions."""

    def __init__(self) -> None:
        self._next = 0
        # Two producer threads must not draw the same turn.
        self._lock = threading.Lock()

    def next(self, partitions: int) -> int:
        return self.take(1, partitions)

    def take(self, count: int, partitions: int) -> int:
        """Reserve ``count`` turns at once (a batch); returns the partition
        of the first, the others follow it modulo ``partitions``."""
        with self._lock:
            first = self._next
            self._next = first + count
        return first % partitions
