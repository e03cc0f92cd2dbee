"""One message at a time per key, in order (ordered handlers).

The worker admits each delivery of an ordered handler here. The first of
a key runs; the others of that key wait here, in the order they were read
(stream order), until the one before them is settled: acknowledged, or set
aside after its last attempt. A failed attempt that will be tried again
keeps its key busy, so the messages behind it keep waiting. Different keys
run side by side, up to the worker's concurrency.

Not thread-safe on its own: the worker calls it under its lock.
"""

from __future__ import annotations

from collections import deque

from taskq import message as wire
from taskq.delivery import Delivery
from taskq.keys import PartitionKeys

SequenceKey = tuple[str, PartitionKeys, bytes]


def sequence_key(delivery: Delivery) -> SequenceKey | None:
    """What orders a delivery: (group, partition, message key); None for a
    message without a key, which waits for nothing."""
    key = delivery.fields.get(wire.KEY)
    if key is None:
        return None
    return (delivery.sub.group, delivery.pk, key)


class Sequencer:
    def __init__(self) -> None:
        #: Keys with a delivery running or waiting for a retry -> the
        #: deliveries of that key waiting behind it, oldest first.
        self._waiting: dict[SequenceKey, deque[Delivery]] = {}

    def __len__(self) -> int:
        """Deliveries waiting behind another of their key."""
        return sum(len(queue) for queue in self._waiting.values())

    def admit(self, delivery: Delivery) -> bool:
        """True if the delivery may run now; else it waits for its key."""
        key = sequence_key(delivery)
        if key is None:
            return True
        queue = self._waiting.get(key)
        if queue is None:
            self._waiting[key] = deque()
            return True
        queue.append(delivery)
        return False

    def done(self, delivery: Delivery) -> Delivery | None:
        """The delivery is settled: the next of its key, if one waits."""
        key = sequence_key(delivery)
        if key is None:
            return None
        queue = self._waiting.get(key)
        if not queue:
            self._waiting.pop(key, None)
            return None
        return queue.popleft()

    def drop(self, group: str, pk: PartitionKeys) -> list[Delivery]:
        """Forget a partition (it was lost or given up): the waiting ones."""
        dropped: list[Delivery] = []
        for key in [k for k in self._waiting if k[0] == group and k[1] == pk]:
            dropped.extend(self._waiting.pop(key))
        return dropped
