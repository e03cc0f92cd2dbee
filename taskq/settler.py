"""Settling finished deliveries: acknowledge, retry, dead-letter, in batches.

Handler threads hand their outcomes to the settler, which writes them to
Redis in one pipeline per batch. What an outcome becomes:

=====================  ======================================================
outcome                in Redis
=====================  ======================================================
ACK                    XACK (grouped per partition)
RETRY                  ``retry.lua``: into the delayed set, and XACK
DEAD                   ``dead_letter.lua``: into the dead-letter stream, XACK
RETRY_IN_PLACE         ``recount.lua`` (fenced, count unchanged): the entry
                       stays pending; after the delay the keeper counts the
                       next attempt and the worker runs it again
=====================  ======================================================

For owned partitions (ordered handlers) every step names the owner's
fencing token and is refused if the lease went to another member.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, cast

import redis

from taskq.connection import CONNECTION_ERRORS
from taskq.delivery import Delivery, Outcome, Settle
from taskq.keys import PartitionKeys
from taskq.scripts import Scripts

if TYPE_CHECKING:
    from taskq.worker import Worker

log = logging.getLogger("taskq.settler")


class Settler:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.queue: deque[Outcome] = deque()
        self.wake = threading.Event()
        #: Set once nothing more will be queued: the loop ends when empty.
        self.closing = threading.Event()

    def put(self, outcome: Outcome) -> None:
        self.queue.append(outcome)
        if not self.wake.is_set():
            self.wake.set()

    def loop(self) -> None:
        worker = self.worker
        client = worker.app.new_client(f"taskq-settler:{worker.id}")
        scripts = Scripts(client)
        while True:
            self.wake.wait(0.5)
            self.wake.clear()
            batch: list[Outcome] = []
            while self.queue:
                batch.append(self.queue.popleft())
            if batch:
                self._settle(client, scripts, batch)
            elif self.closing.is_set():
                break
        client.close()

    def _settle(
        self, client: redis.Redis, scripts: Scripts, batch: list[Outcome]
    ) -> None:
        while True:
            try:
                self._settle_once(client, scripts, batch)
                self.worker.outage.recovered()
                return
            except CONNECTION_ERRORS as exc:
                # Keep what is held until Redis is back: the entries stay
                # pending (and leased); nothing is acknowledged blindly.
                if self.worker.hard_stop.is_set():
                    log.warning(
                        "Redis is unreachable; leaving %d finished entries "
                        "unacknowledged for redelivery.",
                        len(batch),
                    )
                    self.worker.holdings.release(o.delivery for o in batch)
                    return
                time.sleep(self.worker.outage.failed(exc))

    def _settle_once(
        self, client: redis.Redis, scripts: Scripts, batch: list[Outcome]
    ) -> None:
        worker = self.worker
        pipe = client.pipeline(transaction=False)
        acks: dict[tuple[PartitionKeys, str], list[Delivery]] = {}
        calls: list[Outcome] = []
        skipped: list[Delivery] = []
        for outcome in batch:
            delivery = outcome.delivery
            owner = worker.owner_value(delivery)
            if delivery.lost or (delivery.sub.ordered and owner is None):
                skipped.append(delivery)
                continue
            if outcome.kind is Settle.ACK:
                key = (delivery.pk, delivery.sub.group)
                acks.setdefault(key, []).append(delivery)
                continue
            calls.append(outcome)
            pk, group = delivery.pk, delivery.sub.group
            if outcome.kind is Settle.RETRY:
                scripts.retry(
                    pk,
                    group,
                    delivery.id,
                    worker.id,
                    outcome.delay_ms,
                    outcome.packed,
                    client=pipe,
                )
            elif outcome.kind is Settle.RETRY_IN_PLACE:
                assert owner is not None
                scripts.recount(
                    pk,
                    group,
                    worker.id,
                    owner,
                    [(delivery.id, delivery.deliveries)],
                    client=pipe,
                )
            else:
                assert outcome.record is not None
                scripts.dead_letter(
                    pk,
                    group,
                    delivery.id,
                    worker.id,
                    outcome.record,
                    worker.app.dead_letter_max_len,
                    client=pipe,
                    owner=owner,
                )
        ack_keys = list(acks)
        for pk, group in ack_keys:
            ids = [d.id for d in acks[(pk, group)]]
            owner = worker.owner_value(acks[(pk, group)][0])
            if owner is not None:
                scripts.ack_fenced(pk, group, owner, ids, client=pipe)
            else:
                cast(Any, pipe).execute_command("XACK", pk.stream, group, *ids)
        if skipped:
            worker.holdings.release(skipped)
        if not calls and not ack_keys:
            return
        results = scripts.execute(pipe, raise_on_error=False)
        for result in results:
            if isinstance(result, CONNECTION_ERRORS):
                raise result
        for outcome, result in zip(calls, results, strict=False):
            self._after_call(outcome, result)
        for key, result in zip(ack_keys, results[len(calls) :], strict=True):
            self._after_acks(key, acks[key], result)

    def _after_acks(
        self, key: tuple[PartitionKeys, str], deliveries: list[Delivery], result: Any
    ) -> None:
        pk, group = key
        worker = self.worker
        if result == -1:
            worker.fence_failed(deliveries[0])
        elif isinstance(result, Exception) or result < len(deliveries):
            worker.keeper.ack_missed(pk.stream, group, len(deliveries), result)
        worker.count("acked", deliveries[0].sub, len(deliveries))
        worker.holdings.settled(deliveries)

    def _after_call(self, outcome: Outcome, result: Any) -> None:
        delivery = outcome.delivery
        worker = self.worker
        kind = outcome.kind
        if isinstance(result, Exception):
            log.warning("Could not %s %s: %s", kind.value, delivery.describe(), result)
            worker.holdings.settled([delivery])
            return
        if result == -1 or (result is None and delivery.sub.ordered):
            worker.fence_failed(delivery)
            return
        if result is None:
            log.warning(
                "%s was taken over by another worker while this one held it; "
                "leaving it to that worker.",
                delivery.describe(),
            )
            worker.holdings.settled([delivery])
            return
        if kind is Settle.RETRY:
            worker.count("retried", delivery.sub)
            worker.keeper.delayed.wake(delivery.pk, outcome.delay_ms)
            worker.holdings.settled([delivery])
        elif kind is Settle.RETRY_IN_PLACE:
            worker.count("retried", delivery.sub)
            worker.retry_later(delivery, outcome.delay_ms)
        else:
            worker.count("dead", delivery.sub)
            worker.holdings.settled([delivery])
