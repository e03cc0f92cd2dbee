"""Delayed messages: retries and ``delay=``/``eta=`` sends wait in their
partition's delayed set (a sorted set by due time, in the server's clock)
until the keeper of some worker moves them onto the stream.

Each worker looks at the head of every delayed set it serves once a
second (messages others added), and keeps a timer per partition for the
soonest due message it knows of, so a retry it scheduled itself moves on
time. ``move_due.lua`` moves each message in the same step as its removal,
so whichever worker moves it, it moves once.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import redis

from taskq.connection import CONNECTION_ERRORS
from taskq.keys import PartitionKeys

if TYPE_CHECKING:
    from taskq.keeper import Keeper

log = logging.getLogger("taskq.keeper")

#: How often the delayed sets are looked at for messages added by others, s.
DELAYED_POLL_S = 1.0
#: Messages moved from a delayed set in one call.
MOVE_BATCH = 500


class DelayedMover:
    def __init__(self, keeper: Keeper) -> None:
        self.keeper = keeper
        #: partition -> when its next known message is due (monotonic).
        self._timers: dict[PartitionKeys, float] = {}
        self._lock = threading.Lock()
        #: The server's clock minus this process's, in ms (the keeper reads
        #: it from TIME): due times in the delayed sets are the server's.
        self.clock_offset_ms = 0.0

    def next_at(self) -> float:
        """When the soonest known message is due (monotonic; inf: none)."""
        with self._lock:
            return min(self._timers.values(), default=float("inf"))

    def wake(self, pk: PartitionKeys, delay_ms: int) -> None:
        """A message in ``pk``'s delayed set is due in ``delay_ms``."""
        due = time.monotonic() + delay_ms / 1000
        with self._lock:
            if due < self._timers.get(pk, float("inf")):
                self._timers[pk] = due
        self.keeper.wake()

    def due(self) -> bool:
        now = time.monotonic()
        return any(due <= now for due in self._timers.values())

    def poll(self) -> None:
        # One ZRANGE per partition and second: this is most of what an idle
        # worker sends, so it is kept to the head of each set.
        if not self.keeper.partitions:
            return
        pipe = self.keeper.client.pipeline(transaction=False)
        for pk in self.keeper.partitions:
            pipe.zrange(pk.delayed, 0, 0, withscores=True)
        heads = pipe.execute()
        server_ms = time.time() * 1000 + self.clock_offset_ms
        now = time.monotonic()
        with self._lock:
            for pk, head in zip(self.keeper.partitions, heads, strict=True):
                if head:
                    due = now + max(0.0, (head[0][1] - server_ms) / 1000)
                    self._timers[pk] = min(due, self._timers.get(pk, due))

    def move(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [pk for pk, at in self._timers.items() if at <= now]
            for pk in due:
                del self._timers[pk]
        if not due:
            return
        try:
            pipe = self.keeper.client.pipeline(transaction=False)
            for pk in due:
                self.keeper.scripts.move_due(
                    pk, MOVE_BATCH, self.keeper.app.dead_letter_max_len, client=pipe
                )
            results = self.keeper.scripts.execute(pipe)
        except (redis.RedisError, OSError) as exc:
            with self._lock:
                retry_at = time.monotonic() + 1.0
                for pk in due:
                    self._timers[pk] = min(retry_at, self._timers.get(pk, retry_at))
            if isinstance(exc, CONNECTION_ERRORS):
                self.keeper.worker.outage.failed(exc)
            else:
                self.keeper.warn_once(
                    "delayed", "", "Moving delayed messages failed: %s", exc
                )
            return
        now = time.monotonic()
        with self._lock:
            for pk, (moved, next_ms, _) in zip(due, results, strict=True):
                if moved >= MOVE_BATCH:
                    self._timers[pk] = now
                elif next_ms >= 0:
                    at = now + next_ms / 1000
                    self._timers[pk] = min(at, self._timers.get(pk, at))
        for pk, (_, _, set_aside) in zip(due, results, strict=True):
            if set_aside:
                self._set_aside(pk, set_aside)
        if any(result[0] for result in results):
            # What was moved is new work: a burst worker must read again
            # before it may call itself drained.
            self.keeper.worker.holdings.not_idle({pk.topic for pk in due})

    def _set_aside(self, pk: PartitionKeys, count: int) -> None:
        log.error(
            "Set aside %d member%s of %s that %s not a valid message "
            "(invalid_envelope) in %s; the other delayed messages move on.",
            count,
            "" if count == 1 else "s",
            pk.delayed,
            "is" if count == 1 else "are",
            pk.dead,
        )
