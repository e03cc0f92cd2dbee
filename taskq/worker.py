"""The worker: reads partitions, runs handlers, settles the outcomes.

Threads of one worker process and what each owns:

* one **reader** per (topic, group): XREADGROUP over the partitions it
  reads, only while the worker has room for more (on a Redis Cluster, one
  reader per slot: see ``reading.py``);
* ``concurrency`` **handler threads**: run one delivery at a time;
* the **settler** (``settler.py``): acknowledges, retries and dead-letters
  finished deliveries in pipelined batches;
* the **keeper** (``keeper.py``): renews leases, takes over what dead
  workers held, moves due delayed messages, owns partitions for ordered
  handlers (``ownership.py``), heartbeats and trims.

An entry is acknowledged only after its handler returned. Until then it
is *held*: renewed by the keeper, and counted against the worker's room
while its handler has not finished. Deliveries of ordered handlers go
through the sequencer (``sequencer.py``): one at a time per key.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Iterable
from types import FrameType
from typing import TYPE_CHECKING, Any

import redis

from taskq import defaults
from taskq import message as wire
from taskq.connection import CONNECTION_ERRORS, Outage, is_memory
from taskq.delivery import FINISHED, RUNNING, Delivery, Subscription
from taskq.holdings import Holdings
from taskq.keeper import Keeper
from taskq.keys import PartitionKeys
from taskq.ownership import Ownership
from taskq.reading import Reader, ReadShares, make_reader, read_sets
from taskq.runner import Runner
from taskq.scheduler import Scheduler
from taskq.scripts import chunks, pack_message
from taskq.settler import Settler

if TYPE_CHECKING:
    from taskq.app import TaskQ

log = logging.getLogger("taskq.worker")

#: A second SIGTERM or SIGINT stops a worker at once, unless it comes this
#: soon after the first (then it is the same request, delivered twice), s.
SIGNAL_GRACE_S = 1.0
#: After a hard stop, what is left of a shutdown's Redis work (handing
#: entries back, giving up partitions, leaving the member list) may take
#: this much longer before the worker exits without it, s: a Redis that
#: stopped answering would otherwise hold it for a socket timeout per step.
HARD_STOP_GRACE_S = 2.0


def make_worker_id() -> str:
    """A consumer name unique to this process: host, pid and a random tag."""
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(2).hex()}"


class Worker:
    """Runs the handlers of an app until stopped.

    ``groups`` and ``topics`` narrow what this worker serves (default: every
    task and consumer of the app). ``prefetch`` is how many entries it may
    read ahead beyond those that can start at once: 0 by default, or
    ``"auto"`` for enough to keep the handlers busy for about
    ``defaults.PREFETCH_BUFFER_S`` at their recent pace. ``burst`` makes it
    exit once everything it reads is drained. ``beat`` runs a scheduler
    (periodic jobs, digest windows) in a thread of the worker.
    """

    def __init__(
        self,
        app: TaskQ,
        *,
        concurrency: int = defaults.CONCURRENCY,
        prefetch: int | str | None = None,
        lease: float = defaults.LEASE_S,
        shutdown_timeout: float = defaults.SHUTDOWN_TIMEOUT_S,
        burst: bool = False,
        groups: Iterable[str] | None = None,
        topics: Iterable[str] | None = None,
        block_ms: int | None = None,
        read_batch: int = defaults.READ_BATCH,
        worker_id: str | None = None,
        beat: bool = False,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.app = app
        self.id = worker_id or make_worker_id()
        self.concurrency = concurrency
        self.lease_s = lease
        self.shutdown_timeout_s = shutdown_timeout
        self.burst = burst
        self.read_batch = read_batch
        if block_ms is None:
            # fakeredis cannot CLIENT UNBLOCK a reader; short blocks keep a
            # memory:// worker quick to stop instead.
            block_ms = 200 if is_memory(app.url) else defaults.BLOCK_MS
        self.block_ms = block_ms
        self.subscriptions = self._subscriptions(groups, topics)
        self.runner = Runner(self.id, app.max_payload_bytes)
        self.outage = Outage(app.url, log)
        self.ownerships: dict[Subscription, Ownership] = {
            sub: Ownership(self, sub) for sub in self.subscriptions if sub.ordered
        }
        self.holdings = Holdings(
            concurrency, prefetch, self.ownerships, self.reading_changed
        )
        #: handler thread id -> the delivery it is running.
        self._running: dict[int, Delivery] = {}
        self._readers: dict[tuple[Subscription, int], Reader] = {}
        self._reader_count = 0

        self.stopping = threading.Event()  # stop reading
        self._draining = False  # handler threads start nothing new
        self.hard_stop = threading.Event()  # stop waiting for anything
        self._threads: list[threading.Thread] = []
        self.settler = Settler(self)
        self.keeper = Keeper(self)
        self.scheduler = Scheduler(app) if beat else None
        self.started = threading.Event()
        #: Set when the worker stopped to be started again (a topic's
        #: partition count changed); ``taskq worker`` then starts anew.
        self.restart_needed = False
        self.stats = collections.Counter[str]()
        #: (outcome, topic, group) -> messages settled so (for metrics).
        self.outcomes = collections.Counter[tuple[str, str, str]]()

    def __repr__(self) -> str:
        return f"<Worker {self.id}>"

    def _subscriptions(
        self, groups: Iterable[str] | None, topics: Iterable[str] | None
    ) -> list[Subscription]:
        wanted_groups = set(groups) if groups else None
        wanted_topics = set(topics) if topics else None
        subs = []
        for (topic, group), handlers in self.app.subscriptions().items():
            if wanted_groups is not None and group not in wanted_groups:
                continue
            if wanted_topics is not None and topic not in wanted_topics:
                continue
            subs.append(Subscription(topic, group, handlers, self.lease_s))
        return subs

    # -- lifecycle -----------------------------------------------------------------

    def run(self, install_signals: bool = True) -> int:
        """Serve until stopped (SIGTERM, SIGINT, :meth:`stop` or a drained
        burst); returns the exit status, 0 after a clean stop."""
        if install_signals and threading.current_thread() is threading.main_thread():
            self._install_signal_handlers()
        self.start()
        try:
            while not self.stopping.is_set():
                if self.burst and self._drained():
                    log.info("Burst done: every partition read is drained.")
                    break
                self.stopping.wait(0.05 if self.burst else 1.0)
        finally:
            self._shutdown()
        return 0

    def start(self) -> None:
        """Prepare the topics and start the worker's threads."""
        if not self.subscriptions:
            log.warning("Nothing to do: no task or consumer matches this worker.")
        for sub in self.subscriptions:
            count = self.app.partitions(sub.topic)
            sub.set_partitions(
                [self.app.keys.partition(sub.topic, p) for p in range(count)]
            )
        self.keeper.prepare()
        for sub in self.subscriptions:
            sets = read_sets(self.app.url, sub.partitions)
            shares = ReadShares(len(sets))
            for index, partitions in enumerate(sets):
                name = f"taskq-reader-{sub.topic}-{sub.group}"
                if len(sets) > 1:
                    name += f"-{index}"
                self._spawn(name, self._read_loop, sub, partitions, index, shares)
                self._reader_count += 1
        for n in range(self.concurrency):
            self._spawn(f"taskq-handler-{n}", self._work_loop)
        self._spawn("taskq-settler", self.settler.loop)
        self._spawn("taskq-keeper", self.keeper.loop)
        if self.scheduler is not None:
            self.scheduler.start()
        log.info(
            "Worker %s started: %s; concurrency %d, lease %g s.",
            self.id,
            ", ".join(
                f"{s.topic}/{s.group}{' (ordered)' if s.ordered else ''}"
                for s in self.subscriptions
            )
            or "nothing",
            self.concurrency,
            self.lease_s,
        )
        self.started.set()

    def stop(self, graceful: bool = True) -> None:
        """Ask the worker to stop; safe from any thread or signal handler.

        A graceful stop finishes running handlers (up to the shutdown
        timeout) and hands unstarted entries back; a second call, or
        ``graceful=False``, stops waiting.
        """
        if self.stopping.is_set() or not graceful:
            self.hard_stop.set()
        self.stopping.set()

    def count(self, outcome: str, sub: Subscription, n: int = 1) -> None:
        """``n`` messages of ``sub`` were settled with ``outcome``."""
        self.stats[outcome] += n
        self.outcomes[(outcome, sub.topic, sub.group)] += n

    def running_now(self) -> list[Delivery]:
        """The deliveries whose handlers run now."""
        return list(self._running.values())

    def restart(self) -> None:
        """Stop gracefully, to be started again (see ``restart_needed``)."""
        self.restart_needed = True
        self.stop()

    def _install_signal_handlers(self) -> None:
        first: list[float] = []

        def handle(signum: int, frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            if not first:
                first.append(time.monotonic())
                log.info("%s: stopping after the running tasks finish.", name)
                self.stop()
            elif time.monotonic() - first[0] < SIGNAL_GRACE_S:
                # The same request twice: Ctrl-C reaches a whole process
                # group, and a service manager may signal every process
                # while a supervisor passes the signal on as well.
                pass
            else:
                log.warning("%s again: stopping now, without waiting.", name)
                self.stop(graceful=False)

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def _spawn(self, name: str, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _drained(self) -> bool:
        holdings = self.holdings
        with holdings.lock:
            idle = sum(len(readers) for readers in holdings.idle_readers.values())
        return (
            idle == self._reader_count
            and holdings.empty()
            and not self.keeper.delayed.due()
        )

    # -- reading -------------------------------------------------------------------

    def _read_loop(
        self,
        sub: Subscription,
        partitions: list[PartitionKeys],
        index: int,
        shares: ReadShares,
    ) -> None:
        """Read ``partitions`` of ``sub``: all of them, or on a cluster those
        of one slot, as reader ``index`` of ``shares``."""
        block: list[Any] = [] if self.burst else ["BLOCK", self.block_ms]
        # The reader remembers its connection's client id, so stop() can
        # end a blocking read at once (CLIENT UNBLOCK) and no entry is
        # delivered to a worker that is stopping.
        reader = make_reader(
            self.app,
            partitions,
            blocking=bool(block and self.block_ms),
            name=f"taskq-reader:{self.id}",
            extra_timeout=self.block_ms / 1000,
        )
        among = None if len(shares) == 1 else frozenset(pk.stream for pk in partitions)
        self._readers[(sub, index)] = reader
        while not self.stopping.is_set():
            free = self.holdings.wait_for_room(self.stopping)
            if free <= 0:
                continue
            tail = sub.read_args(time.monotonic(), among)
            streams = (len(tail) - 1) // 2
            if not streams:
                # Nothing to read now (an ordered subscription that owns no
                # partition here yet, or broken keys): look again shortly.
                self.holdings.idle(sub, index)
                sub.changed.wait(0.5)
                sub.changed.clear()
                continue
            with shares.turn(index, free, streams, self.read_batch, self.holdings) as (
                count,
                wait,
            ):
                if not count:
                    continue
                try:
                    response = reader.read(
                        ["XREADGROUP", "GROUP", sub.group, self.id, "COUNT", count]
                        + (block if wait else [])
                        + tail
                    )
                except CONNECTION_ERRORS as exc:
                    if self.stopping.is_set():
                        break
                    time.sleep(self.outage.failed(exc))
                    continue
                except redis.ResponseError as exc:
                    if self.stopping.is_set():
                        break
                    self.keeper.read_failed(reader.client, sub, exc)
                    continue
                self.outage.recovered()
                if response:
                    self._accept(sub, response)
                shares.found(index, bool(response))
            if not response and self.burst:
                self.holdings.idle(sub, index)
                time.sleep(0.02)
        self._readers.pop((sub, index), None)
        reader.close()

    def _accept(self, sub: Subscription, response: Any) -> None:
        if isinstance(response, dict):  # RESP3
            response = list(response.items())
        batch: list[Delivery] = []
        by_stream = sub.by_stream
        for stream, entries in response:
            pk = by_stream[stream]
            for entry_id, flat in entries:
                if flat is None:  # deleted after delivery; nothing to run
                    continue
                if len(flat) == 4:  # task and payload: most entries
                    fields = {flat[0]: flat[1], flat[2]: flat[3]}
                else:
                    it = iter(flat)
                    fields = dict(zip(it, it, strict=False))
                batch.append(Delivery(sub, pk, entry_id, fields))
        self.holdings.hold(batch)

    def reading_changed(self, sub: Subscription) -> None:
        """The partitions ``sub`` reads changed: let its reader see it now."""
        sub.changed.set()
        self.unblock_readers([sub])

    def unblock_readers(self, subs: Iterable[Subscription] | None = None) -> None:
        """End blocking reads now (they return empty)."""
        for (sub, _), reader in list(self._readers.items()):
            if subs is None or sub in subs:
                reader.unblock(self.keeper.client)

    # -- owned partitions ----------------------------------------------------------

    def owner_value(self, delivery: Delivery) -> str | None:
        """The worker's lease ("member|token") of the delivery's partition,
        for ordered subscriptions; None otherwise or when not owned."""
        ownership = self.ownerships.get(delivery.sub)
        return None if ownership is None else ownership.owner_value(delivery.pk)

    def fence_failed(self, delivery: Delivery) -> None:
        ownership = self.ownerships.get(delivery.sub)
        if ownership is not None:
            ownership.lost(delivery.pk, "another member holds its lease")

    def retry_later(self, delivery: Delivery, delay_ms: int) -> None:
        """An ordered delivery failed and stays put: run it again later."""
        self.holdings.park_for_retry(delivery)
        self.keeper.reruns.run_later(delivery, delay_ms)

    # -- handling ------------------------------------------------------------------

    def _work_loop(self) -> None:
        ident = threading.get_ident()
        holdings = self.holdings
        get = holdings.queue.get
        finished = holdings.finished
        run = self.runner.run
        put = self.settler.put
        running = self._running
        timed = holdings.auto_prefetch
        perf_counter = time.perf_counter
        monotonic = time.monotonic
        may_start = holdings.may_start
        renewed_by = holdings.stale_after_s
        started = 0.0
        while True:
            delivery = get()
            if delivery is None:
                self.runner.close_thread()
                return
            if delivery.sub.ordered or monotonic() - holdings.renewed_at >= renewed_by:
                # Under the lock: a partition being handed over must know for
                # sure whether this delivery started; and after a stall (or an
                # outage) nothing starts before its lease is confirmed.
                if not may_start(delivery, self._draining):
                    continue
            elif delivery.lost or self._draining:
                finished()
                continue
            else:
                delivery.state = RUNNING
            running[ident] = delivery
            if timed:
                started = perf_counter()
            try:
                outcome = run(delivery)
            finally:
                del running[ident]
                delivery.state = FINISHED
                finished()
            if timed:
                holdings.timed(perf_counter() - started)
            put(outcome)

    # -- stopping ------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Stop and hand back what the worker holds, in a thread of its own,
        so that a hard stop can leave without the Redis steps left."""
        errors: list[BaseException] = []

        def steps() -> None:
            try:
                self._shut_down()
            except BaseException as exc:  # raised again by the caller
                errors.append(exc)

        thread = threading.Thread(target=steps, name="taskq-shutdown", daemon=True)
        thread.start()
        while thread.is_alive():
            if self.hard_stop.wait(0.05):
                thread.join(HARD_STOP_GRACE_S)
                if thread.is_alive():
                    log.warning(
                        "Worker %s stopped without finishing with Redis (it did "
                        "not answer within %g s of the hard stop); the entries it "
                        "held return to their group when their lease runs out.",
                        self.id,
                        HARD_STOP_GRACE_S,
                    )
                    return
        if errors:
            raise errors[0]

    def _shut_down(self) -> None:
        self.stopping.set()
        if self.scheduler is not None:
            self.scheduler.stop()
        self.unblock_readers()
        for thread in self._threads:
            if thread.name.startswith("taskq-reader"):
                thread.join(self.block_ms / 1000 + 2)
        # From here on, handler threads start nothing new.
        self._draining = True
        unstarted: list[Delivery] = []
        while True:
            try:
                item = self.holdings.queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                unstarted.append(item)
                self.holdings.finished()
        unstarted += self.holdings.take_held_back()
        running = len(self._running)
        released = self._requeue(
            [d for d in unstarted if not d.sub.ordered], started=False
        )
        deadline = time.monotonic() + self.shutdown_timeout_s
        while self._running and not self.hard_stop.is_set():
            if time.monotonic() >= deadline:
                break
            self.hard_stop.wait(0.02)
        interrupted = list(self._running.values())
        self._requeue([d for d in interrupted if not d.sub.ordered], started=True)
        for delivery in interrupted:
            delivery.lost = True  # its late outcome must not be settled
        # Let the settler write what finished, then hand over the owned
        # partitions (which needs every outcome of theirs settled).
        self.settler.closing.set()
        self.settler.wake.set()
        for _ in range(self.concurrency):
            self.holdings.queue.put(None)
        for thread in self._threads:
            if thread.name == "taskq-settler":
                remaining = max(1.0, deadline - time.monotonic())
                thread.join(remaining if not self.hard_stop.is_set() else 1.0)
        self.keeper.stop()
        if interrupted:
            log.warning(
                "Stopped with %d task(s) still running (%s); they were handed "
                "back for another attempt.",
                len(interrupted),
                "told to stop at once"
                if self.hard_stop.is_set() and time.monotonic() < deadline
                else f"after the {self.shutdown_timeout_s:g} s shutdown timeout",
            )
        log.info(
            "Worker %s stopped: waited for %d running task(s), handed back %d "
            "unstarted entr%s.",
            self.id,
            running - len(interrupted),
            released,
            "y" if released == 1 else "ies",
        )

    def _requeue(self, deliveries: list[Delivery], *, started: bool) -> int:
        """Hand held entries back to their group as new entries at once.

        Only for unordered subscriptions: an owned partition is handed over
        whole, its entries staying where they are (keeper.stop).
        """
        if not deliveries:
            return 0
        by_partition: dict[tuple[str, PartitionKeys], list[Delivery]] = {}
        for delivery in deliveries:
            by_partition.setdefault((delivery.sub.group, delivery.pk), []).append(
                delivery
            )
        count = 0
        try:
            scripts = self.keeper.scripts
            for (group, pk), items in by_partition.items():
                for part in chunks(items):
                    entries = []
                    for delivery in part:
                        fields = dict(delivery.fields)
                        attempt = delivery.attempt + (1 if started else 0)
                        if attempt > 1:
                            fields[wire.ATTEMPT] = str(attempt).encode()
                        fields[wire.GROUP] = delivery.sub.group_bytes
                        fields[wire.ORIGIN] = wire.origin_of(
                            delivery.fields, pk.topic, pk.partition, delivery.id
                        )
                        entries.append((delivery.id, pack_message(b"", fields)))
                    count += int(scripts.requeue(pk, group, self.id, entries))
        except (redis.RedisError, OSError) as exc:
            log.warning(
                "Could not hand back %d entries (%s); they return to the group "
                "when their lease runs out.",
                len(deliveries),
                exc,
            )
        self.holdings.release(deliveries)
        return count
