"""The worker's housekeeping thread.

Every few moments the keeper:

* renews the lease of every entry the worker holds (every lease / 3), so
  no other member takes over a message that is still being worked on;
* reclaims entries that other members held for longer than the lease
  (their worker died or stalled), with their delivery counts;
* moves delayed messages (retries, ``delay=``/``eta=``) onto their streams
  when due (``delayed.py``), and runs the retries in place of ordered
  handlers again when due (``reruns.py``);
* keeps the partitions of ordered subscriptions (``ownership.py``);
* heartbeats, trims the streams and forgets consumers that left.

It also repairs what it finds broken: a missing consumer group is created
again, a key of the wrong type is skipped (and reported) while the other
partitions go on.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis

from taskq.connection import CONNECTION_ERRORS
from taskq.delayed import DELAYED_POLL_S, DelayedMover
from taskq.delivery import WAITING, Delivery, Subscription
from taskq.holdings import STALE_FRACTION
from taskq.keys import PartitionKeys
from taskq.reruns import Reruns
from taskq.scripts import Scripts, chunks

if TYPE_CHECKING:
    from taskq.worker import Worker

log = logging.getLogger("taskq.keeper")

#: How often a worker says it is alive, s; its record expires after 6 times.
HEARTBEAT_S = 10.0
#: How often streams are trimmed and departed consumers forgotten, s.
MAINTAIN_S = 60.0
#: A consumer that holds nothing is forgotten after this much idle time, s.
FORGET_CONSUMER_S = 600.0
#: How often handlers are checked against their time limits, s.
WATCHDOG_S = 0.1
#: Smallest and largest pause between two reclaim passes, s.
RECLAIM_MIN_S = 0.2
RECLAIM_MAX_S = 10.0
#: Added to the moment a lease runs out before it is claimed, s.
RECLAIM_SLACK_S = 0.01
#: Entries taken over in one reclaim call.
RECLAIM_BATCH = 100
#: How soon partition ownership is looked at again while partitions are
#: changing hands, s.
OWN_RETRY_S = 0.5
#: At most one warning of a kind per stream in this many seconds.
WARN_EVERY_S = 60.0
#: Partitions skipped because their key has the wrong type are looked at
#: again after this many seconds.
BROKEN_KEY_RETRY_S = 30.0


def _gone_with_key(error: Exception) -> bool:
    """Whether a script failed because its stream or group is gone."""
    text = str(error)
    return "WRONGTYPE" in text or "NOGROUP" in text


def _id_order(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


class Keeper:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.app = worker.app
        self.client = self.app.new_client(f"taskq-keeper:{worker.id}")
        self.scripts = Scripts(self.client)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.delayed = DelayedMover(self)
        self._cursors: dict[tuple[str, PartitionKeys], bytes] = {}
        self._warned: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._beats = 0
        self.reruns = Reruns(self)
        now = time.monotonic()
        self._next_run: dict[str, float] = {
            "delayed": now,
            "reclaim": now,
            "renew": now,
            "heartbeat": now,
            "maintain": now + 10.0,
            "watchdog": now,
            "own": now,
        }

    # -- setup -----------------------------------------------------------------------

    @property
    def subs(self) -> list[Subscription]:
        return self.worker.subscriptions

    def prepare(self) -> None:
        self.partitions = sorted(
            {pk for sub in self.subs for pk in sub.partitions},
            key=lambda pk: (pk.topic, pk.partition),
        )
        self._load_scripts()
        for sub in self.subs:
            self.ensure_groups(self.client, sub)
            sub.until_ms = self._read_until(sub)
        leases = [sub.lease_s for sub in self.subs] or [self.worker.lease_s]
        self.renew_every_s = min(leases) / 3
        self.worker.holdings.stale_after_s = min(leases) * STALE_FRACTION
        self.reclaim_every_s = min(RECLAIM_MAX_S, max(RECLAIM_MIN_S, min(leases) / 3))
        self.watch_time_limits = any(sub.has_timeouts for sub in self.subs)
        self.own_every_s = min(leases) / 4
        # Take partitions before the readers start, so a lone worker (or a
        # burst run) reads at once.
        self._own()

    def _read_until(self, sub: Subscription) -> int | None:
        """The end a replay set for the group (``until_ms``), if any.

        A config key that is not a hash, or an end that is not a number,
        is reported and ignored: the group then reads everything, as it
        does without a replay, rather than the worker failing to start.
        """
        key = self.app.keys.group_config(sub.topic, sub.group)
        try:
            until = self.client.hget(key, "until_ms")
            return int(until) if until else None
        except (redis.ResponseError, ValueError) as exc:
            self.warn_once(
                "config",
                key,
                "Cannot read the settings of group %r of %r from %s (%s); going "
                "on without them. Delete or repair the key.",
                sub.group,
                sub.topic,
                key,
                exc,
                level=logging.ERROR,
            )
            return None

    def _load_scripts(self) -> None:
        while True:
            try:
                self.scripts.load()
                return
            except CONNECTION_ERRORS as exc:
                time.sleep(self.worker.outage.failed(exc))

    def ensure_groups(self, client: redis.Redis, sub: Subscription) -> list[str]:
        """Create the group on every partition that lacks it (from id 0).

        Returns the streams where it was missing. Reading from id 0 means a
        stream recreated by a producer's XADD loses nothing that was added
        before the group came back.
        """
        pipe = client.pipeline(transaction=False)
        for pk in sub.partitions:
            pipe.xgroup_create(pk.stream, sub.group, id="0", mkstream=True)
        while True:
            try:
                results = pipe.execute(raise_on_error=False)
                break
            except CONNECTION_ERRORS as exc:
                if self.worker.stopping.is_set():
                    return []
                time.sleep(self.worker.outage.failed(exc))
        created = []
        for pk, result in zip(sub.partitions, results, strict=True):
            if result is True:
                created.append(pk.stream)
            elif isinstance(result, redis.ResponseError) and "BUSYGROUP" not in str(
                result
            ):
                self.warn_once(
                    "group",
                    pk.stream,
                    "Cannot create group %r on %s: %s",
                    sub.group,
                    pk.stream,
                    result,
                )
        return created

    # -- loop ---------------------------------------------------------------------

    def loop(self) -> None:
        # In this order: after a stall, the partition leases are checked
        # (and lost ones dropped) before renewing the entries' leases lets
        # what was held back start.
        jobs: dict[str, tuple[Callable[[], None], float]] = {}
        if self.worker.ownerships:
            jobs["own"] = (self._own, self.own_every_s)
        jobs["renew"] = (self._renew, self.renew_every_s)
        jobs["delayed"] = (self.delayed.poll, DELAYED_POLL_S)
        jobs["reclaim"] = (self._reclaim, self.reclaim_every_s)
        jobs["heartbeat"] = (self._heartbeat, HEARTBEAT_S)
        jobs["maintain"] = (self._maintain, MAINTAIN_S)
        if self.watch_time_limits:
            jobs["watchdog"] = (self._watchdog, WATCHDOG_S)
        while not self._stop.is_set():
            now = time.monotonic()
            for name, (job, every) in jobs.items():
                if now >= self._next_run[name]:
                    self._next_run[name] = now + every
                    self._run_job(name, job)
            self.delayed.move()
            self.reruns.run_due()
            wake_at = min(
                [self._next_run[name] for name in jobs]
                + [self.delayed.next_at()]
                + [self.reruns.next_at()]
            )
            self._wake.wait(max(0.0, wake_at - time.monotonic()))
            self._wake.clear()

    def _run_job(self, name: str, job: Callable[[], None]) -> None:
        try:
            job()
            if name != "watchdog":
                self.worker.outage.recovered()
        except CONNECTION_ERRORS as exc:
            # Try again soon, backing off while the outage lasts.
            self._next_run[name] = time.monotonic() + self.worker.outage.failed(exc)
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):
                for sub in self.subs:
                    self.ensure_groups(self.client, sub)
            else:
                self.warn_once(
                    "job", name, "Housekeeping step %r failed: %s", name, exc
                )
        except Exception:
            log.exception("Housekeeping step %r failed.", name)

    def wake(self) -> None:
        """Look at the timers now (a delayed message is due sooner)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self.worker._threads:
            if thread.name == "taskq-keeper":
                thread.join(2.0)
        for ownership in self.worker.ownerships.values():
            try:
                ownership.leave(self.client, self.scripts, force=True)
            except (redis.RedisError, OSError) as exc:
                log.warning(
                    "Could not hand over the partitions of %s/%s (%s); they pass "
                    "to another member when their lease runs out.",
                    ownership.sub.topic,
                    ownership.sub.group,
                    exc,
                )
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.zrem(self.app.keys.workers, self.worker.id)
            pipe.delete(self.app.keys.worker(self.worker.id))
            pipe.execute()
        except (redis.RedisError, OSError):
            pass  # the record expires by itself
        self.client.close()

    # -- leases ------------------------------------------------------------------------

    def _renew(self) -> None:
        holdings = self.worker.holdings
        at = time.monotonic()
        snapshot = holdings.snapshot()
        if not snapshot:
            holdings.confirmed(at)
            return
        pipe = self.client.pipeline(transaction=False)
        calls: list[tuple[PartitionKeys, list[bytes], dict[bytes, Delivery]]] = []
        for group, pk, entries in snapshot:
            ids = sorted(entries, key=_id_order)
            for part in chunks(ids):
                self.scripts.renew(pk, group, self.worker.id, part, client=pipe)
                calls.append((pk, list(part), entries))
        failed = False
        for (pk, part, entries), result in zip(
            calls, self.scripts.execute(pipe, raise_on_error=False), strict=True
        ):
            if isinstance(result, CONNECTION_ERRORS):
                raise result
            if isinstance(result, Exception):
                if _gone_with_key(result):
                    # The stream was replaced by another type, or its group
                    # is gone: these entries cannot be settled here any more.
                    self._drop_broken(pk, [entries[i] for i in part], result)
                else:
                    self.warn_once("renew", "", "Could not renew leases: %s", result)
                    failed = True
                continue
            lost, gone = result
            dropped = [entries[i] for i in lost if i in entries]
            # Nobody holds these any more: settled by the worker that took
            # them over while this one stalled. Those started here finish
            # (their acknowledgement finds out); the others must not run.
            dropped += [
                entries[i] for i in gone if i in entries and entries[i].state == WAITING
            ]
            for delivery in dropped:
                if delivery.lost:
                    continue
                delivery.lost = True
                log.warning(
                    "Lost %s: another worker took it over after this one went "
                    "silent for longer than the lease; it will not run or be "
                    "acknowledged here.",
                    delivery.describe(),
                )
            holdings.release(dropped)
        if not failed:
            holdings.confirmed(at)

    def _drop_broken(
        self, pk: PartitionKeys, deliveries: list[Delivery], error: Exception
    ) -> None:
        self.warn_once(
            "renew-broken",
            pk.stream,
            "Dropped %d entr%s held of %s: %s. They are not run or "
            "acknowledged here; the other partitions go on.",
            len(deliveries),
            "y" if len(deliveries) == 1 else "ies",
            pk.stream,
            error,
            level=logging.ERROR,
        )
        for delivery in deliveries:
            delivery.lost = True
        self.worker.holdings.release(deliveries)

    def _reclaim(self) -> None:
        for sub in self.subs:
            if sub.ordered:
                continue  # an owner takes over a partition's entries itself
            # Entries a dead worker held are older than anything new, so a
            # busy worker still takes one per partition: it runs next, ahead
            # of new reads (which wait for room), instead of waiting until
            # the partition's backlog is worked off.
            count = min(max(1, self.worker.holdings.free_room()), RECLAIM_BATCH)
            pipe = self.client.pipeline(transaction=False)
            for pk in sub.partitions:
                cursor = self._cursors.get((sub.group, pk), b"0-0")
                self.scripts.reclaim(
                    pk,
                    sub.group,
                    self.worker.id,
                    sub.lease_ms,
                    cursor,
                    count,
                    client=pipe,
                )
            results = self.scripts.execute(pipe, raise_on_error=False)
            batch: list[Delivery] = []
            for pk, result in zip(sub.partitions, results, strict=True):
                if isinstance(result, CONNECTION_ERRORS):
                    raise result
                if isinstance(result, redis.ResponseError):
                    self._recover(sub, pk, result)
                    continue
                cursor, entries, deleted, soonest_ms = result
                self._cursors[(sub.group, pk)] = cursor
                if soonest_ms > 0 or (
                    soonest_ms == 0 and self.worker.holdings.free_room() > 0
                ):
                    # Come back when the next lease runs out (plus a little),
                    # if that is sooner; one that ran out already, as soon as
                    # there is room for it.
                    at = time.monotonic() + soonest_ms / 1000 + RECLAIM_SLACK_S
                    self._next_run["reclaim"] = min(self._next_run["reclaim"], at)
                now_ms = int(time.time() * 1000)
                for entry_id, flat, deliveries, idle_ms in entries:
                    it = iter(flat)
                    delivery = Delivery(
                        sub,
                        pk,
                        entry_id,
                        dict(zip(it, it, strict=False)),
                        int(deliveries),
                    )
                    delivery.previous_ms = now_ms - int(idle_ms)
                    batch.append(delivery)
                if deleted:
                    self.warn_once(
                        "deleted",
                        pk.stream,
                        "%d pending entr%s of %s (group %r) no longer exist (deleted "
                        "or trimmed before they were handled); they were dropped "
                        "from the pending list.",
                        len(deleted),
                        "y" if len(deleted) == 1 else "ies",
                        pk.stream,
                        sub.group,
                    )
            if batch:
                log.info(
                    "Took over %d entr%s of %s/%s that another worker held past "
                    "its lease.",
                    len(batch),
                    "y" if len(batch) == 1 else "ies",
                    sub.topic,
                    sub.group,
                )
                self.worker.holdings.hold(batch)

    def _recover(self, sub: Subscription, pk: PartitionKeys, error: Exception) -> None:
        text = str(error)
        if "NOGROUP" in text:
            created = self.ensure_groups(self.client, sub)
            if created:
                self.group_lost(sub, created)
        elif "WRONGTYPE" in text:
            self.broken_key(sub, pk)
        else:
            self.warn_once(
                "reclaim", pk.stream, "Reclaim on %s failed: %s", pk.stream, error
            )

    # -- failed reads -----------------------------------------------------------------

    def read_failed(
        self, client: redis.Redis, sub: Subscription, error: Exception
    ) -> None:
        """Repair what made a read fail, so the next read can succeed."""
        text = str(error)
        # NOGROUP: the group is gone (the stream was deleted and written
        # again); UNBLOCKED: the stream was deleted under a blocked read.
        if "NOGROUP" in text or "UNBLOCKED" in text:
            created = self.ensure_groups(client, sub)
            if created:
                self.group_lost(sub, created)
            return
        if "WRONGTYPE" in text:
            for pk in sub.partitions:
                try:
                    kind = client.type(pk.stream)
                except (redis.RedisError, OSError):
                    continue
                if kind not in (b"stream", b"none", "stream", "none"):
                    self.broken_key(sub, pk)
            return
        self.warn_once("read", sub.topic, "Reading %s failed: %s", sub.topic, error)
        time.sleep(1.0)

    def group_lost(self, sub: Subscription, streams: list[str]) -> None:
        for stream in streams:
            self.warn_once(
                "nogroup",
                f"{stream}/{sub.group}",
                "Consumer group %r of %s was gone (the stream was deleted, "
                "evicted, or Redis restarted without its data) and has been "
                "created again from the start of the stream; entries that were "
                "pending or in flight before the loss may be gone.",
                sub.group,
                stream,
            )

    def broken_key(self, sub: Subscription, pk: PartitionKeys) -> None:
        sub.skip(pk, time.monotonic() + BROKEN_KEY_RETRY_S)
        self.warn_once(
            "wrongtype",
            pk.stream,
            "%s is not a stream (wrong key type); skipping partition %d of %r "
            "for %g s while the others go on. Delete or rename the key.",
            pk.stream,
            pk.partition,
            pk.topic,
            BROKEN_KEY_RETRY_S,
            level=logging.ERROR,
        )

    def ack_missed(self, stream: str, group: str, expected: int, result: Any) -> None:
        self.warn_once(
            "ack",
            stream,
            "Acknowledged %s of %d entries of %s in group %r: the group was "
            "recreated or another worker took them over.",
            result if isinstance(result, int) else 0,
            expected,
            stream,
            group,
        )

    def warn_once(
        self,
        kind: str,
        subject: str,
        msg: str,
        *args: Any,
        level: int = logging.WARNING,
    ) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._warned.get((kind, subject))
            if last is not None and now - last < WARN_EVERY_S:
                return
            self._warned[(kind, subject)] = now
        log.log(level, msg, *args)

    # -- ordered handlers -----------------------------------------------------------

    def _own(self) -> None:
        settled = True
        for ownership in self.worker.ownerships.values():
            settled = ownership.step(self.client, self.scripts) and settled
        if not settled:
            # A partition is on its way to or from this worker: look again
            # soon rather than a quarter lease later, so that a partition
            # handed over is not left unread for seconds.
            soon = time.monotonic() + OWN_RETRY_S
            self._next_run["own"] = min(self._next_run["own"], soon)

    # -- the rest ---------------------------------------------------------------

    def _watchdog(self) -> None:
        self.worker.runner.interrupt_overdue()

    def _heartbeat(self) -> None:
        keys = self.app.keys
        now_ms = int(time.time() * 1000)
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "subscriptions": [f"{s.topic}/{s.group}" for s in self.subs],
            "concurrency": self.worker.concurrency,
            "acked": self.worker.stats["acked"],
            "retried": self.worker.stats["retried"],
            "dead": self.worker.stats["dead"],
        }
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(keys.workers, {self.worker.id: now_ms})
        pipe.set(keys.worker(self.worker.id), json.dumps(info), ex=int(HEARTBEAT_S * 6))
        # The rest changes slowly: every third beat is often enough, and an
        # idle worker stays quiet.
        housekeeping = self._beats % 3 == 0
        if housekeeping:
            pipe.expire(keys.workers, int(HEARTBEAT_S * 6))
            pipe.zremrangebyscore(
                keys.workers, "-inf", now_ms - int(HEARTBEAT_S * 6000)
            )
        # The counts were read at start: look again from the next round on.
        recheck = housekeeping and self._beats > 0
        self._beats += 1
        topics = sorted({sub.topic for sub in self.subs}) if recheck else []
        if topics:
            pipe.hmget(keys.topics, topics)
        results = pipe.execute()
        if topics:
            self._check_partitions(dict(zip(topics, results[-1], strict=True)))
        if housekeeping:
            # TIME goes on its own: a cluster pipeline takes keyed commands
            # only. (On a cluster it is one node's clock; masters kept in
            # step by NTP differ by far less than the poll interval.)
            before_ms = time.time() * 1000
            server_time = self.client.time()
            local_ms = (time.time() * 1000 + before_ms) / 2
            self.delayed.clock_offset_ms = (
                server_time[0] * 1000 + server_time[1] / 1000 - local_ms
            )

    def _check_partitions(self, stored: dict[str, Any]) -> None:
        """Restart the worker when a topic's partition count changed
        (``taskq topics create --force``): its readers, partition leases
        and schedules are built for the old count."""
        for sub in self.subs:
            value = stored.get(sub.topic)
            if value is None or int(value) == len(sub.partitions):
                continue
            log.warning(
                "Topic %r now has %s partitions (this worker started with %d); "
                "restarting to serve the new count.",
                sub.topic,
                int(value),
                len(sub.partitions),
            )
            self.worker.restart()
            return

    def _maintain(self) -> None:
        if not self.subs:
            return
        idle_ms = int(
            max(FORGET_CONSUMER_S, 4 * max(s.lease_s for s in self.subs)) * 1000
        )
        pipe = self.client.pipeline(transaction=False)
        for pk in self.partitions:
            config = self.app.topics.get(pk.topic)
            retention_s = config.retention_s if config else None
            self.scripts.trim(pk, int((retention_s or 0) * 1000), client=pipe)
        for sub in self.subs:
            for pk in sub.partitions:
                self.scripts.forget_consumers(pk, sub.group, idle_ms, client=pipe)
        results = self.scripts.execute(pipe, raise_on_error=False)
        trimmed = sum(r for r in results[: len(self.partitions)] if isinstance(r, int))
        if trimmed:
            log.debug("Trimmed %d entries that every group is done with.", trimmed)
