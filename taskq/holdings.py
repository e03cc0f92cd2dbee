"""What a worker holds, and how much more it may take.

Every entry a worker has read (or taken over) and not yet settled is
*held*: the keeper renews its lease, and a stopping worker hands it back.
Held deliveries are in one of three places:

* **unfinished**: queued for a handler thread, or running. The worker
  reads more only while there are fewer than its capacity (concurrency
  plus read-ahead);
* **parked**: deliveries of ordered handlers waiting for an earlier one
  of their key, or for a retry; they take no thread, so they are counted
  apart (up to ``PARK_LIMIT``);
* **finished**: the outcome waits for the settler.

All of it is guarded by one lock, which readers, handler threads, the
settler, the keeper and partition hand-overs share.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from taskq import defaults
from taskq.delivery import FINISHED, RUNNING, WAITING, Delivery, Subscription
from taskq.handlers import Handler
from taskq.keys import PartitionKeys
from taskq.sequencer import Sequencer

if TYPE_CHECKING:
    from taskq.ownership import Ownership

#: Most deliveries of ordered handlers a worker keeps waiting for their key
#: (or for a retry) before it stops reading more.
PARK_LIMIT = 1000


class Holdings:
    def __init__(
        self,
        concurrency: int,
        prefetch: int | str | None,
        ownerships: Mapping[Subscription, Ownership],
    ) -> None:
        self.concurrency = concurrency
        # Entries read beyond those that can start at once wait in this
        # process; if it dies, their delivery counts grow although they never
        # ran, so reading ahead is opt-in (README: "What happens when things
        # fail").
        self.auto_prefetch = prefetch == "auto"
        if self.auto_prefetch:
            fixed = concurrency  # until the handlers' pace is known
        elif prefetch is None:
            fixed = 0
        elif (
            isinstance(prefetch, int)
            and not isinstance(prefetch, bool)
            and prefetch >= 0
        ):
            fixed = prefetch
        else:
            raise ValueError(
                f"prefetch must be a number >= 0 or 'auto', not {prefetch!r}"
            )
        self.prefetch = fixed
        self.capacity = concurrency + fixed
        #: Moving average of how long one handler run takes, s (0: none yet);
        #: sizes the automatic prefetch.
        self.run_s = 0.0
        self.ownerships = ownerships
        self.sequencer = Sequencer()
        #: Deliveries for the handler threads (None tells one to stop).
        self.queue: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self._room = threading.Condition(self.lock)
        #: (group, partition) -> entry id -> delivery, for every entry held.
        self.held: dict[tuple[str, PartitionKeys], dict[bytes, Delivery]] = {}
        self.unfinished = 0
        self.parked = 0
        self._reader_waiting = False
        #: subscription -> its readers (by index) that found nothing new.
        self.idle_readers: dict[Subscription, set[int]] = {}

    # -- taking ---------------------------------------------------------------------

    def hold(self, batch: list[Delivery]) -> None:
        """Hold deliveries and queue them for the handler threads (or, for
        ordered handlers, let the sequencer queue them in turn)."""
        if not batch:
            return
        runnable: list[Delivery] = []
        with self.lock:
            self.idle_readers.pop(batch[0].sub, None)
            # Batches come partition by partition: look the partition's map
            # up when it changes, not once per entry (hashing the key tuple
            # costs more than the rest of this loop).
            pk: PartitionKeys | None = None
            entries: dict[bytes, Delivery] = {}
            for delivery in batch:
                sub = delivery.sub
                if sub.ordered and delivery.pk not in sub.accepting:
                    # Read just as the partition was given up or lost: leave
                    # it to the next owner (counted in the hand-over, if any).
                    delivery.lost = True
                    if delivery.pk not in self.ownerships[sub].tokens:
                        continue
                if delivery.pk is not pk:
                    pk = delivery.pk
                    entries = self.held.setdefault((sub.group, pk), {})
                entries[delivery.id] = delivery
                if delivery.lost:
                    continue
                if not sequenced(delivery) or self.sequencer.admit(delivery):
                    runnable.append(delivery)
                else:
                    self.parked += 1
            self.unfinished += len(runnable)
        put = self.queue.put
        for delivery in runnable:
            put(delivery)

    def idle(self, sub: Subscription, index: int) -> None:
        """Reader ``index`` of ``sub`` found nothing new."""
        with self.lock:
            self.idle_readers.setdefault(sub, set()).add(index)

    def not_idle(self, topics: set[str]) -> None:
        """New entries may have arrived in these topics (burst mode)."""
        with self.lock:
            for sub in [s for s in self.idle_readers if s.topic in topics]:
                del self.idle_readers[sub]

    # -- room -----------------------------------------------------------------------

    def auto_capacity(self) -> int:
        """The entries this worker may hold unfinished now.

        With ``prefetch="auto"``, the read-ahead is what the handlers get
        through in ``PREFETCH_BUFFER_S`` at their recent pace, between
        concurrency and ``PREFETCH_MAX``: tasks of microseconds are read a
        thousand at a time (a round trip per handful of entries would cost
        more than the tasks), while slow tasks are not hoarded by one
        worker when others could start them.
        """
        if self.auto_prefetch and self.run_s > 0:
            extra = int(self.concurrency * defaults.PREFETCH_BUFFER_S / self.run_s)
            self.prefetch = max(self.concurrency, min(defaults.PREFETCH_MAX, extra))
            self.capacity = self.concurrency + self.prefetch
        return self.capacity

    def timed(self, elapsed_s: float) -> None:
        """A handler ran for ``elapsed_s`` (for the automatic prefetch)."""
        # Races between threads only blur the average a little.
        average = self.run_s
        self.run_s = elapsed_s if average <= 0 else average + (elapsed_s - average) / 64

    def free_room(self) -> int:
        with self.lock:
            return self.auto_capacity() - self.unfinished

    def reserve_room(self, most: int) -> int:
        """Count up to ``most`` free places as taken (for a read that is
        out); returns how many."""
        with self.lock:
            granted = max(0, min(most, self.auto_capacity() - self.unfinished))
            self.unfinished += granted
            return granted

    def return_room(self, count: int) -> None:
        """Give back places :meth:`reserve_room` counted."""
        if count:
            with self._room:
                self.unfinished -= count
                self._room.notify_all()

    def wait_for_room(self, stopping: threading.Event) -> int:
        """Block until there is room to read (or ``stopping``); the room."""
        with self._room:
            while (
                self.unfinished >= self.auto_capacity() or self.parked >= PARK_LIMIT
            ) and not stopping.is_set():
                self._reader_waiting = True
                self._room.wait(0.5)
            self._reader_waiting = False
            return self.capacity - self.unfinished

    def finished(self) -> None:
        """A handler finished (or a queued delivery was dropped)."""
        with self.lock:
            self.unfinished -= 1
            if self._reader_waiting:
                self._room.notify_all()

    # -- letting go -----------------------------------------------------------------

    def release(self, deliveries: Iterable[Delivery]) -> None:
        """Stop holding deliveries (settled, handed back or lost)."""
        with self.lock:
            pk: PartitionKeys | None = None
            sub: Subscription | None = None
            entries: dict[bytes, Delivery] | None = None
            for delivery in deliveries:
                if delivery.pk is not pk or delivery.sub is not sub:
                    pk, sub = delivery.pk, delivery.sub
                    entries = self.held.get((sub.group, pk))
                if entries is not None:
                    entries.pop(delivery.id, None)

    def settled(self, deliveries: list[Delivery]) -> None:
        """Their outcome is in Redis: stop holding them, and let the next
        delivery of each ordered key run."""
        runnable: list[Delivery] = []
        with self.lock:
            for delivery in deliveries:
                entries = self.held.get((delivery.sub.group, delivery.pk))
                if entries is not None:
                    entries.pop(delivery.id, None)
                if delivery.sub.ordered and not delivery.lost:
                    following = self.sequencer.done(delivery)
                    if following is not None:
                        self.parked -= 1
                        if not following.lost:
                            runnable.append(following)
            self.unfinished += len(runnable)
            if self._reader_waiting:
                self._room.notify_all()
        for delivery in runnable:
            self.queue.put(delivery)

    def park_for_retry(self, delivery: Delivery) -> None:
        """An ordered delivery failed and stays where it is, to run again."""
        with self.lock:
            delivery.deliveries += 1  # as recount.lua counted it
            delivery.state = WAITING
            self.parked += 1

    def rerun(self, delivery: Delivery) -> None:
        """The retry delay of a parked delivery is over: queue it."""
        with self.lock:
            self.parked -= 1
            if delivery.lost:
                return
            self.unfinished += 1
        self.queue.put(delivery)

    def snapshot(self) -> list[tuple[str, PartitionKeys, dict[bytes, Delivery]]]:
        """A copy of what is held, per (group, partition), for renewals."""
        with self.lock:
            return [
                (group, pk, dict(entries))
                for (group, pk), entries in self.held.items()
                if entries
            ]

    def empty(self) -> bool:
        with self.lock:
            return (
                self.unfinished == 0
                and self.parked == 0
                and not any(self.held.values())
            )

    # -- owned partitions -----------------------------------------------------------

    def running_in(self, group: str, pk: PartitionKeys) -> bool:
        with self.lock:
            entries = self.held.get((group, pk), {})
            return any(d.state == RUNNING for d in entries.values())

    def hand_over(
        self, sub: Subscription, pk: PartitionKeys, *, force: bool
    ) -> list[tuple[bytes, int]] | None:
        """Stop working on a partition about to be given up.

        Returns ``(entry id, delivery count)`` for every entry still held,
        counted so the next owner charges an attempt only to those that ran
        (or, with ``force``, were cut short); or None while some of its
        handlers still run or wait to be settled (nothing changes then but
        that no waiting delivery of it starts any more).
        """
        with self.lock:
            entries = self.held.get((sub.group, pk), {})
            for delivery in self.sequencer.drop(sub.group, pk):
                delivery.lost = True
                self.parked -= 1
            busy = [
                d
                for d in entries.values()
                if d.state in (RUNNING, FINISHED) and not d.lost
            ]
            for delivery in entries.values():
                if delivery.state == WAITING:
                    delivery.lost = True  # handler threads skip it
            if busy and not force:
                return None
            counts = [
                (d.id, d.deliveries if d.state == RUNNING else max(0, d.deliveries - 1))
                for d in entries.values()
            ]
            for delivery in entries.values():
                delivery.lost = True
            self.held.pop((sub.group, pk), None)
        return counts

    def drop_partition(self, sub: Subscription, pk: PartitionKeys) -> None:
        """The partition's lease is lost: forget all that is held of it."""
        with self.lock:
            self.parked -= len(self.sequencer.drop(sub.group, pk))
            for delivery in self.held.pop((sub.group, pk), {}).values():
                delivery.lost = True


def sequenced(delivery: Delivery) -> bool:
    """Whether the delivery waits for earlier ones of its key."""
    if not delivery.sub.ordered:
        return False
    handler = delivery.sub.handler_for(delivery.fields)
    return isinstance(handler, Handler) and handler.ordered
