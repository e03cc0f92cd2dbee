"""SAQ.

Worker: ``saq benchmarks.apps.saq_app.settings``; ``concurrency`` comes
from the profile. SAQ has no bulk send (``map`` waits for the results);
batched sends are concurrent ``enqueue`` calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from saq import Queue

from benchmarks.apps.common import (
    CONCURRENCY,
    COUNTER,
    LATENCIES,
    PROFILE,
    URL,
    AsyncProducer,
    async_client,
    gather_chunks,
    now_us,
)


async def noop(ctx: dict[str, Any], *, n: int) -> None:
    pass


async def incr(ctx: dict[str, Any], *, n: int) -> None:
    await async_client().incr(COUNTER)


async def sleep10(ctx: dict[str, Any], *, n: int) -> None:
    await asyncio.sleep(0.01)
    await async_client().incr(COUNTER)


async def lat(ctx: dict[str, Any], *, n: int) -> None:
    await async_client().rpush(LATENCIES, now_us() - n)


queue = Queue.from_url(URL, name="bench")
settings = {
    "queue": queue,
    "functions": [noop, incr, sleep10, lat],
    # Default concurrency is 10.
    "concurrency": CONCURRENCY or (100 if PROFILE == "tuned" else 10),
}


class Producer(AsyncProducer):
    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        self.queue = Queue.from_url(URL, name="bench")
        await self.queue.connect()
        try:
            yield
        finally:
            await self.queue.disconnect()

    async def asend(self, task: str, n: int) -> None:
        await self.queue.enqueue(task, n=n)

    async def asend_many(self, task: str, values: list[int]) -> None:
        await gather_chunks(lambda n: self.queue.enqueue(task, n=n), values)


def make_producer() -> Producer:
    return Producer()
