"""Retries in place of ordered handlers: a failed delivery stays pending
where it is (its key's later messages wait behind it) and runs again once
its retry delay is over. The keeper keeps those timers; its next attempt
is counted in Redis (fenced by the partition's lease) just before it runs,
so a worker that dies during the delay has used no attempt.
"""

from __future__ import annotations

import heapq
import threading
import time
from typing import TYPE_CHECKING

from taskq.connection import CONNECTION_ERRORS
from taskq.delivery import Delivery

if TYPE_CHECKING:
    from taskq.keeper import Keeper


class Reruns:
    def __init__(self, keeper: Keeper) -> None:
        self.keeper = keeper
        self._lock = threading.Lock()
        #: Deliveries waiting out their retry delay: (due, seq, delivery).
        self._waiting: list[tuple[float, int, Delivery]] = []
        self._seq = 0

    def next_at(self) -> float:
        """When the next one is due (monotonic; inf: none waits)."""
        with self._lock:
            return self._waiting[0][0] if self._waiting else float("inf")

    def run_later(self, delivery: Delivery, delay_ms: int) -> None:
        """Run an ordered delivery again after ``delay_ms`` (its retry)."""
        with self._lock:
            self._seq += 1
            heapq.heappush(
                self._waiting,
                (time.monotonic() + delay_ms / 1000, self._seq, delivery),
            )
        self.keeper.wake()

    def run_due(self) -> None:
        """Queue the ordered deliveries whose retry delay is over, counting
        their next attempt (fenced) just before: a worker that dies while
        one waits has not used that attempt."""
        keeper, worker = self.keeper, self.keeper.worker
        now = time.monotonic()
        due: list[tuple[Delivery, str]] = []
        with self._lock:
            while self._waiting and self._waiting[0][0] <= now:
                delivery = heapq.heappop(self._waiting)[2]
                owner = worker.owner_value(delivery)
                if delivery.lost or owner is None:
                    worker.holdings.rerun(delivery, counted=False)
                else:
                    due.append((delivery, owner))
        if not due:
            return
        pipe = keeper.client.pipeline(transaction=False)
        for delivery, owner in due:
            keeper.scripts.recount(
                delivery.pk,
                delivery.sub.group,
                worker.id,
                owner,
                [(delivery.id, delivery.deliveries + 1)],
                client=pipe,
            )
        try:
            results = keeper.scripts.execute(pipe, raise_on_error=False)
        except CONNECTION_ERRORS as exc:
            results = [exc] * len(due)
        for (delivery, _), result in zip(due, results, strict=True):
            if isinstance(result, CONNECTION_ERRORS):
                # Redis is away: try again in a moment.
                self.run_later(delivery, int(worker.outage.failed(result) * 1000))
                continue
            if result == -1:
                worker.fence_failed(delivery)
            elif isinstance(result, Exception):
                keeper.warn_once(
                    "recount", delivery.pk.stream, "Counting a retry failed: %s", result
                )
            worker.holdings.rerun(delivery, counted=result == 1)
