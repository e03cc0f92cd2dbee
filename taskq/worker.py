"""The worker: reads partitions, runs handlers, settles the outcomes.

Threads of one worker process and what each owns:

* one **reader** per (topic, group): XREADGROUP over the partitions it
  reads, only while the worker holds fewer entries than it may;
* ``concurrency`` **handler threads**: run one delivery at a time;
* the **settler**: acknowledges, retries and dead-letters finished
  deliveries in pipelined batches;
* the **keeper** (``keeper.py``): renews leases, reclaims what dead workers
  held, moves due delayed messages, heartbeats and trims.

An entry is acknowledged only after its handler returned. Until then it
is *held*: counted against the worker's capacity and renewed by the keeper.
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
from taskq.delivery import Delivery, Outcome, Settle, Subscription
from taskq.keeper import Keeper
from taskq.keys import PartitionKeys
from taskq.runner import Runner
from taskq.scripts import Scripts, chunks, pack_message

if TYPE_CHECKING:
    from taskq.app import TaskQ

log = logging.getLogger("taskq.worker")


def make_worker_id() -> str:
    """A consumer name unique to this process: host, pid and a random tag."""
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(2).hex()}"


class Worker:
    """Runs the handlers of an app until stopped.

    ``groups`` and ``topics`` narrow what this worker serves (default: every
    task and consumer of the app). ``prefetch`` is how many entries it may
    hold beyond those running; without it, the worker holds enough to keep
    its handlers busy for about ``defaults.PREFETCH_BUFFER_S``, judged by
    how long they have been taking (see :meth:`_auto_capacity`). ``burst``
    makes it exit once everything it reads is drained.
    """

    def __init__(
        self,
        app: TaskQ,
        *,
        concurrency: int = defaults.CONCURRENCY,
        prefetch: int | None = None,
        lease: float = defaults.LEASE_S,
        shutdown_timeout: float = defaults.SHUTDOWN_TIMEOUT_S,
        burst: bool = False,
        groups: Iterable[str] | None = None,
        topics: Iterable[str] | None = None,
        block_ms: int | None = None,
        read_batch: int = defaults.READ_BATCH,
        worker_id: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.app = app
        self.id = worker_id or make_worker_id()
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.capacity = concurrency + (concurrency if prefetch is None else max(0, prefetch))
        #: Moving average of how long one handler run takes, s (0: none yet).
        self._run_s = 0.0
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
        self.runner = Runner(self.id)
        self.outage = Outage(app.url, log)

        self._queue: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        self._done: collections.deque[Outcome] = collections.deque()
        self._done_event = threading.Event()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        #: (group, partition) -> entry id -> delivery, for every entry held.
        self.held: dict[tuple[str, PartitionKeys], dict[bytes, Delivery]] = {}
        self._held_count = 0
        #: handler thread id -> the delivery it is running.
        self._running: dict[int, Delivery] = {}
        self._unstarted: list[Delivery] = []
        self._idle_readers: set[Subscription] = set()
        self._reader_ids: dict[Subscription, int] = {}

        self._stopping = threading.Event()  # stop reading
        self._draining = False  # handler threads start nothing new
        self._hard_stop = threading.Event()  # stop waiting for anything
        self._settled_all = threading.Event()
        self._threads: list[threading.Thread] = []
        self.keeper = Keeper(self)
        self.started = threading.Event()
        self.stats = collections.Counter[str]()

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
            while not self._stopping.is_set():
                if self.burst and self._drained():
                    log.info("Burst done: every partition read is drained.")
                    break
                self._stopping.wait(0.05 if self.burst else 1.0)
        finally:
            self._shutdown()
        return 0

    def start(self) -> None:
        """Prepare the topics and start the worker's threads."""
        if not self.subscriptions:
            log.warning("Nothing to do: no task or consumer matches this worker.")
        for sub in self.subscriptions:
            count = self.app.partitions(sub.topic)
            sub.set_partitions([self.app.keys.partition(sub.topic, p) for p in range(count)])
        self.keeper.prepare()
        for sub in self.subscriptions:
            self._spawn(f"taskq-reader-{sub.topic}-{sub.group}", self._read_loop, sub)
        for n in range(self.concurrency):
            self._spawn(f"taskq-handler-{n}", self._work_loop)
        self._spawn("taskq-settler", self._settle_loop)
        self._spawn("taskq-keeper", self.keeper.loop)
        log.info(
            "Worker %s started: %s; concurrency %d, lease %g s.",
            self.id,
            ", ".join(f"{s.topic}/{s.group}" for s in self.subscriptions) or "nothing",
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
        if self._stopping.is_set() or not graceful:
            self._hard_stop.set()
        self._stopping.set()

    def _install_signal_handlers(self) -> None:
        def handle(signum: int, frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            if self._stopping.is_set():
                log.warning("%s again: stopping now, without waiting.", name)
            else:
                log.info("%s: stopping after the running tasks finish.", name)
            self.stop()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def _spawn(self, name: str, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _drained(self) -> bool:
        with self._lock:
            return (
                len(self._idle_readers) == len(self.subscriptions)
                and self._held_count == 0
                and not self.keeper.delayed_due()
            )

    # -- reading -------------------------------------------------------------------

    def _read_loop(self, sub: Subscription) -> None:
        client = self.app.new_client()
        client.set_response_callback("XREADGROUP", lambda response, **options: response)
        block: list[Any] = [] if self.burst else ["BLOCK", self.block_ms]
        self.keeper.ensure_groups(client, sub)
        while not self._stopping.is_set():
            free = self._wait_for_room()
            if free <= 0:
                continue
            tail = sub.read_args(time.monotonic())
            streams = (len(tail) - 1) // 2
            if not streams:
                time.sleep(1.0)
                continue
            count = min(self.read_batch, -(-free // streams))
            try:
                self._remember_reader(client, sub)
                response = client.execute_command(
                    "XREADGROUP", "GROUP", sub.group, self.id, "COUNT", count, *block, *tail
                )
            except CONNECTION_ERRORS as exc:
                if self._stopping.is_set():
                    break
                self._reader_ids.pop(sub, None)
                time.sleep(self.outage.failed(exc))
                continue
            except redis.ResponseError as exc:
                if self._stopping.is_set():
                    break
                self.keeper.read_failed(client, sub, exc)
                continue
            self.outage.recovered()
            if response:
                self._accept(sub, response)
            elif self.burst:
                with self._lock:
                    self._idle_readers.add(sub)
                time.sleep(0.02)
        self._reader_ids.pop(sub, None)
        client.close()

    def _remember_reader(self, client: redis.Redis, sub: Subscription) -> None:
        # The client id lets stop() end a blocking read at once (CLIENT
        # UNBLOCK), so no entry is delivered to a worker that is stopping.
        if sub not in self._reader_ids and self.block_ms and not is_memory(self.app.url):
            self._reader_ids[sub] = client.client_id()

    def _accept(self, sub: Subscription, response: Any) -> None:
        if isinstance(response, dict):  # RESP3
            response = list(response.items())
        batch: list[Delivery] = []
        append = batch.append
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
                    fields = dict(zip(it, it))
                append(Delivery(sub, pk, entry_id, fields))
        self.hold(batch)

    def hold(self, batch: list[Delivery]) -> None:
        """Count deliveries as held and hand them to the handler threads."""
        if not batch:
            return
        with self._lock:
            self._idle_readers.discard(batch[0].sub)
            # Batches come partition by partition: look the partition's map
            # up when it changes, not once per entry (hashing the key tuple
            # and its dataclass costs more than the rest of this loop).
            pk: PartitionKeys | None = None
            sub: Subscription | None = None
            entries: dict[bytes, Delivery] = {}
            for delivery in batch:
                if delivery.pk is not pk or delivery.sub is not sub:
                    pk, sub = delivery.pk, delivery.sub
                    entries = self.held.setdefault((sub.group, pk), {})
                entries[delivery.id] = delivery
            self._held_count += len(batch)
        put = self._queue.put
        for delivery in batch:
            put(delivery)

    def free_room(self) -> int:
        with self._lock:
            return self._auto_capacity() - self._held_count

    def _wait_for_room(self) -> int:
        with self._room:
            while self._held_count >= self._auto_capacity():
                if self._stopping.is_set():
                    break
                self._room.wait(0.5)
            return self.capacity - self._held_count

    def _auto_capacity(self) -> int:
        """The entries this worker may hold now; sets ``capacity``.

        With a fixed prefetch that is concurrency + prefetch. Without one,
        the prefetch is what the handlers get through in
        ``PREFETCH_BUFFER_S`` at their recent pace, between concurrency and
        ``PREFETCH_MAX``: tasks of microseconds are read a thousand at a
        time (a round trip per handful of entries would cost more than the
        tasks), while slow tasks are not hoarded by one worker when others
        could start them.
        """
        if self.prefetch is not None or self._run_s <= 0:
            return self.capacity
        extra = int(self.concurrency * defaults.PREFETCH_BUFFER_S / self._run_s)
        self.capacity = self.concurrency + max(
            self.concurrency, min(defaults.PREFETCH_MAX, extra)
        )
        return self.capacity

    def unblock_readers(self) -> None:
        """End blocking reads now (they return empty)."""
        ids = list(self._reader_ids.values())
        if not ids:
            return
        try:
            client = self.keeper.client
            for client_id in ids:
                client.client_unblock(client_id)
        except (redis.RedisError, OSError):
            pass  # the reads end by themselves within block_ms

    # -- handling ------------------------------------------------------------------

    def _work_loop(self) -> None:
        ident = threading.get_ident()
        perf_counter = time.perf_counter
        get = self._queue.get
        run = self.runner.run
        done = self._done
        done_event = self._done_event
        running = self._running
        while True:
            delivery = get()
            if delivery is None:
                self.runner.close_thread()
                return
            if delivery.lost:  # taken over while it waited here
                continue
            if self._draining:
                with self._lock:
                    self._unstarted.append(delivery)
                continue
            running[ident] = delivery
            started = perf_counter()
            try:
                outcome = run(delivery)
            finally:
                del running[ident]
            # Races between threads only blur the average a little.
            elapsed = perf_counter() - started
            average = self._run_s
            self._run_s = elapsed if average <= 0 else average + (elapsed - average) / 64
            done.append(outcome)
            if not done_event.is_set():
                done_event.set()

    # -- settling ------------------------------------------------------------------

    def _settle_loop(self) -> None:
        client = self.app.new_client()
        scripts = Scripts(client)
        while True:
            self._done_event.wait(0.5)
            self._done_event.clear()
            batch: list[Outcome] = []
            while self._done:
                batch.append(self._done.popleft())
            if batch:
                self._settle(client, scripts, batch)
            elif self._settled_all.is_set():
                break
        client.close()

    def _settle(self, client: redis.Redis, scripts: Scripts, batch: list[Outcome]) -> None:
        while True:
            try:
                self._settle_once(client, scripts, batch)
                self.outage.recovered()
                break
            except CONNECTION_ERRORS as exc:
                # Keep what is held until Redis is back: the entries stay
                # pending (and leased), nothing is acknowledged blindly.
                if self._hard_stop.is_set():
                    log.warning(
                        "Redis is unreachable; leaving %d finished entries "
                        "unacknowledged for redelivery.",
                        len(batch),
                    )
                    break
                time.sleep(self.outage.failed(exc))
        self.release(o.delivery for o in batch)

    def _settle_once(self, client: redis.Redis, scripts: Scripts, batch: list[Outcome]) -> None:
        pipe = client.pipeline(transaction=False)
        acks: dict[tuple[str, str], list[bytes]] = {}
        calls: list[Outcome] = []
        ack_ids: list[bytes] = []
        pk: PartitionKeys | None = None
        sub: Subscription | None = None
        for outcome in batch:
            delivery = outcome.delivery
            if delivery.lost:
                continue
            if outcome.kind is Settle.ACK:
                if delivery.pk is not pk or delivery.sub is not sub:
                    pk, sub = delivery.pk, delivery.sub
                    ack_ids = acks.setdefault((pk.stream, sub.group), [])
                ack_ids.append(delivery.id)
            elif outcome.kind is Settle.RETRY:
                scripts.retry(
                    delivery.pk,
                    delivery.sub.group,
                    delivery.id,
                    self.id,
                    outcome.delay_ms,
                    outcome.packed,
                    client=pipe,
                )
                calls.append(outcome)
            else:
                assert outcome.record is not None
                scripts.dead_letter(
                    delivery.pk,
                    delivery.sub.group,
                    delivery.id,
                    self.id,
                    outcome.record,
                    self.app.dead_letter_max_len,
                    client=pipe,
                )
                calls.append(outcome)
        ack_keys = list(acks)
        for stream, group in ack_keys:
            pipe.execute_command("XACK", stream, group, *acks[(stream, group)])
        if not calls and not ack_keys:
            return
        results = pipe.execute(raise_on_error=False)
        for outcome, result in zip(calls, results, strict=False):
            self._after_call(outcome, result)
        for (stream, group), result in zip(ack_keys, results[len(calls) :], strict=True):
            ids = acks[(stream, group)]
            if isinstance(result, CONNECTION_ERRORS):
                raise result
            if isinstance(result, Exception) or result < len(ids):
                self.keeper.ack_missed(stream, group, len(ids), result)
            self.stats["acked"] += len(ids)

    def _after_call(self, outcome: Outcome, result: Any) -> None:
        delivery = outcome.delivery
        if isinstance(result, CONNECTION_ERRORS):
            raise result
        if isinstance(result, Exception):
            log.warning(
                "Could not %s %s: %s",
                "retry" if outcome.kind is Settle.RETRY else "dead-letter",
                delivery.describe(),
                result,
            )
        elif result is None:
            log.warning(
                "%s was taken over by another worker while this one held it; "
                "leaving it to that worker.",
                delivery.describe(),
            )
        elif outcome.kind is Settle.RETRY:
            self.stats["retried"] += 1
            self.keeper.wake_delayed(delivery.pk, outcome.delay_ms)
        else:
            self.stats["dead"] += 1

    def release(self, deliveries: Iterable[Delivery]) -> None:
        """Stop holding deliveries (settled, handed back or lost)."""
        with self._lock:
            count = 0
            pk: PartitionKeys | None = None
            sub: Subscription | None = None
            entries: dict[bytes, Delivery] | None = None
            for delivery in deliveries:
                if delivery.pk is not pk or delivery.sub is not sub:
                    pk, sub = delivery.pk, delivery.sub
                    entries = self.held.get((sub.group, pk))
                if entries is not None and entries.pop(delivery.id, None) is not None:
                    count += 1
            self._held_count -= count
            self._room.notify_all()

    # -- stopping ------------------------------------------------------------------

    def _shutdown(self) -> None:
        self._stopping.set()
        self.unblock_readers()
        for thread in self._threads:
            if thread.name.startswith("taskq-reader"):
                thread.join(self.block_ms / 1000 + 2)
        # From here on, handler threads start nothing new: what is still
        # queued goes back to the group at once.
        self._draining = True
        with self._lock:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    self._unstarted.append(item)
            unstarted, self._unstarted = self._unstarted, []
        running = len(self._running)
        released = self._requeue(unstarted, started=False)
        deadline = time.monotonic() + self.shutdown_timeout_s
        while self._running and not self._hard_stop.is_set():
            if time.monotonic() >= deadline:
                break
            self._hard_stop.wait(0.02)
        interrupted = list(self._running.values())
        for delivery in interrupted:
            delivery.lost = True  # its late outcome must not be settled
        self._requeue(interrupted, started=True)
        with self._lock:
            late, self._unstarted = self._unstarted, []
        released += self._requeue(late, started=False)
        # Let the settler flush what finished, then stop the rest.
        self._settled_all.set()
        self._done_event.set()
        for _ in range(self.concurrency):
            self._queue.put(None)
        for thread in self._threads:
            if thread.name == "taskq-settler":
                remaining = max(1.0, deadline - time.monotonic())
                thread.join(remaining if not self._hard_stop.is_set() else 1.0)
        self.keeper.stop()
        if interrupted:
            log.warning(
                "Stopped with %d task(s) still running after the %g s shutdown "
                "timeout; they were handed back for another attempt.",
                len(interrupted),
                self.shutdown_timeout_s,
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
        """Hand held entries back to their group as new entries at once."""
        if not deliveries:
            return 0
        by_partition: dict[tuple[str, PartitionKeys], list[Delivery]] = {}
        for delivery in deliveries:
            by_partition.setdefault((delivery.sub.group, delivery.pk), []).append(delivery)
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
        self.release(deliveries)
        return count
