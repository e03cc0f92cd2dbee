"""What a worker holds, and how much more it may take.

Every entry a worker has read (or taken over) and not yet settled is
*held*: the keeper renews its lease, and a stopping worker hands it back.
Held deliveries are in one of these places:

* **unfinished**: queued for a handler thread, or running. The worker
  reads more only while there are fewer than its capacity (concurrency
  plus read-ahead);
* **parked**: deliveries of ordered handlers waiting for an earlier one
  of their key, or for a retry; they take no thread, so they are counted
  apart, per partition: a partition with ``PARK_LIMIT`` of them is not
  read until half of them went on, while the others are read as usual;
* **held back**: taken from the queue but not started, because their
  partition is being handed over, or because the keeper has not confirmed
  the leases for a while (the process stalled, or Redis was away) and
  another worker may have taken them over. They start, or are dropped,
  when that is settled;
* **finished**: the outcome waits for the settler.

All of it is guarded by one lock, which readers, handler threads, the
settler, the keeper and partition hand-overs share.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from taskq import defaults
from taskq.delivery import (
    FINISHED,
    RETRYING,
    RUNNING,
    WAITING,
    Delivery,
    Subscription,
)
from taskq.handlers import Handler
from taskq.keys import PartitionKeys
from taskq.sequencer import Sequencer

if TYPE_CHECKING:
    from taskq.ownership import Ownership

#: Most deliveries of ordered handlers a worker keeps waiting for their key
#: (or for a retry) in one partition before it stops reading that partition.
PARK_LIMIT = 1000

#: A delivery is held back instead of started when the leases were last
#: confirmed longer ago than this part of the lease (renewals come every
#: third of it).
STALE_FRACTION = 2 / 3

PartitionOf = tuple[str, PartitionKeys]


class Holdings:
    def __init__(
        self,
        concurrency: int,
        prefetch: int | str | None,
        ownerships: Mapping[Subscription, Ownership],
        reading_changed: Callable[[Subscription], None] = lambda sub: None,
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
        #: The parked deliveries of each partition.
        self._parked_in: dict[PartitionOf, set[Delivery]] = {}
        #: Partitions being handed over: none of their deliveries starts.
        self._paused: set[PartitionOf] = set()
        #: Deliveries kept from starting, by partition (being handed over)
        #: or under None (the leases are not confirmed yet).
        self._held_back: dict[PartitionOf | None, list[Delivery]] = {}
        #: When the keeper last confirmed the leases (monotonic), and how
        #: long that confirmation is good for.
        self.renewed_at = time.monotonic()
        self.stale_after_s = float("inf")
        self._reading_changed = reading_changed
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
                if sub.ordered and delivery.pk not in self.ownerships[sub].tokens:
                    # Read just as the partition was lost or given up: the
                    # next owner takes it over from this worker.
                    continue
                if delivery.pk is not pk:
                    pk = delivery.pk
                    entries = self.held.setdefault((sub.group, pk), {})
                entries[delivery.id] = delivery
                if not sequenced(delivery) or self.sequencer.admit(delivery):
                    runnable.append(delivery)
                else:
                    self._park(delivery)
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
            while self.unfinished >= self.auto_capacity() and not stopping.is_set():
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

    # -- starting -------------------------------------------------------------------

    def may_start(self, delivery: Delivery, draining: bool) -> bool:
        """Whether a handler thread may start a delivery it took from the
        queue (it is RUNNING then). If not, the delivery is dropped (lost,
        or the worker is stopping) or held back until its partition's
        hand-over is called off or the leases are confirmed."""
        now = time.monotonic()
        with self.lock:
            if not (delivery.lost or draining):
                where: PartitionOf | None = (delivery.sub.group, delivery.pk)
                if where not in self._paused:
                    if now - self.renewed_at < self.stale_after_s:
                        delivery.state = RUNNING
                        return True
                    where = None
                self._held_back.setdefault(where, []).append(delivery)
            self.unfinished -= 1
            if self._reader_waiting:
                self._room.notify_all()
        return False

    def confirmed(self, at: float) -> None:
        """The keeper confirmed the leases of all that was held at ``at``
        (monotonic): what waited for that may start."""
        with self.lock:
            self.renewed_at = max(self.renewed_at, at)
            self._queue_held_back(None)

    def resume(self, sub: Subscription, pk: PartitionKeys) -> None:
        """The hand-over of a partition was called off: go on with it."""
        with self.lock:
            self._paused.discard((sub.group, pk))
            self._queue_held_back((sub.group, pk))

    def _queue_held_back(self, where: PartitionOf | None) -> None:
        """Queue again what was held back under ``where`` (locked)."""
        waiting = [d for d in self._held_back.pop(where, []) if not d.lost]
        self.unfinished += len(waiting)
        for delivery in waiting:
            self.queue.put(delivery)

    def take_held_back(self) -> list[Delivery]:
        """Everything held back (the worker is stopping)."""
        with self.lock:
            taken = [
                d for waiting in self._held_back.values() for d in waiting if not d.lost
            ]
            self._held_back.clear()
            return taken

    # -- parked ---------------------------------------------------------------------

    def _park(self, delivery: Delivery) -> None:
        """Count a delivery as waiting for its key or its retry (locked)."""
        parked = self._parked_in.setdefault((delivery.sub.group, delivery.pk), set())
        if delivery in parked:
            return
        parked.add(delivery)
        self.parked += 1
        sub = delivery.sub
        if len(parked) >= PARK_LIMIT and delivery.pk not in sub.full:
            sub.full.add(delivery.pk)
            sub.reset_read_args()

    def _unpark(self, delivery: Delivery) -> Subscription | None:
        """It no longer waits (locked); returns its subscription when its
        partition may be read again (the caller tells the reader, unlocked)."""
        where = (delivery.sub.group, delivery.pk)
        parked = self._parked_in.get(where)
        if parked is None or delivery not in parked:
            return None
        parked.discard(delivery)
        self.parked -= 1
        if not parked:
            del self._parked_in[where]
        sub = delivery.sub
        if delivery.pk in sub.full and len(parked) <= PARK_LIMIT // 2:
            sub.full.discard(delivery.pk)
            sub.reset_read_args()
            return sub
        return None

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
        reopened: list[Subscription] = []
        with self.lock:
            for delivery in deliveries:
                entries = self.held.get((delivery.sub.group, delivery.pk))
                if entries is not None:
                    entries.pop(delivery.id, None)
                if not delivery.sub.ordered or delivery.lost:
                    continue
                following = self.sequencer.done(delivery)
                while following is not None:
                    sub = self._unpark(following)
                    if sub is not None:
                        reopened.append(sub)
                    if not following.lost:
                        runnable.append(following)
                        break
                    # Taken over by another worker: it will not be settled
                    # here, so the next one of the key goes on.
                    following = self.sequencer.done(following)
            self.unfinished += len(runnable)
            if self._reader_waiting:
                self._room.notify_all()
        for delivery in runnable:
            self.queue.put(delivery)
        for sub in reopened:
            self._reading_changed(sub)

    def park_for_retry(self, delivery: Delivery) -> None:
        """An ordered delivery failed and stays where it is, to run again
        (its next attempt is counted when it starts: :meth:`rerun`)."""
        with self.lock:
            delivery.state = RETRYING
            self._park(delivery)

    def rerun(self, delivery: Delivery, *, counted: bool) -> None:
        """The retry delay of a parked delivery is over: queue it.
        ``counted``: its next attempt is counted in Redis now."""
        with self.lock:
            reopened = self._unpark(delivery)
            if not delivery.lost:
                if counted:
                    delivery.deliveries += 1
                delivery.state = WAITING
                self.unfinished += 1
                self.queue.put(delivery)
        if reopened is not None:
            self._reading_changed(reopened)

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
        counted so the next owner, which counts one more delivery when it
        takes them over, charges an attempt only to those that ran (or,
        with ``force``, were cut short). While some of its handlers still
        run or wait to be settled, it returns None and the partition is
        paused: none of its deliveries starts until it is handed over or
        :meth:`resume` calls the hand-over off.
        """
        with self.lock:
            where = (sub.group, pk)
            entries = self.held.get(where, {})
            busy = any(
                d.state in (RUNNING, FINISHED) and not d.lost for d in entries.values()
            )
            if busy and not force:
                self._paused.add(where)
                return None
            counts = [
                (d.id, d.deliveries if d.state != WAITING else max(0, d.deliveries - 1))
                for d in entries.values()
            ]
            self._forget(sub, pk)
        return counts

    def drop_partition(self, sub: Subscription, pk: PartitionKeys) -> None:
        """The partition's lease is lost: forget all that is held of it."""
        with self.lock:
            self._forget(sub, pk)

    def _forget(self, sub: Subscription, pk: PartitionKeys) -> None:
        """Drop every delivery held of a partition (locked)."""
        where = (sub.group, pk)
        self.sequencer.drop(sub.group, pk)
        for delivery in self.held.pop(where, {}).values():
            delivery.lost = True
        for delivery in self._parked_in.pop(where, ()):
            delivery.lost = True
            self.parked -= 1
        self._paused.discard(where)
        self._held_back.pop(where, None)
        if pk in sub.full:
            sub.full.discard(pk)
            sub.reset_read_args()


def sequenced(delivery: Delivery) -> bool:
    """Whether the delivery waits for earlier ones of its key."""
    if not delivery.sub.ordered:
        return False
    handler = delivery.sub.handler_for(delivery.fields)
    return isinstance(handler, Handler) and handler.ordered
