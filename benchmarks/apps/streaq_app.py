"""streaq.

Worker: ``streaq run benchmarks.apps.streaq_app:worker``; ``concurrency``
and ``prefetch`` come from the profile. Batched sends use
``Worker.enqueue_many``, one pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from streaq import Worker

from benchmarks.apps.common import (
    CONCURRENCY,
    COUNTER,
    LATENCIES,
    PROFILE,
    URL,
    AsyncProducer,
    async_client,
    now_us,
)

TUNED = PROFILE == "tuned"
# Defaults: concurrency 16, prefetch = concurrency.
worker = Worker(
    redis_url=URL,
    queue_name="bench",
    concurrency=CONCURRENCY or (64 if TUNED else 16),
    prefetch=256 if TUNED else None,
)


@worker.task()
async def noop(n: int) -> None:
    pass


@worker.task()
async def incr(n: int) -> None:
    await async_client().incr(COUNTER)


@worker.task()
async def sleep10(n: int) -> None:
    await asyncio.sleep(0.01)
    await async_client().incr(COUNTER)


@worker.task()
async def lat(n: int) -> None:
    await async_client().rpush(LATENCIES, now_us() - n)


TASKS = {"noop": noop, "incr": incr, "sleep10": sleep10, "lat": lat}


class Producer(AsyncProducer):
    def session(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return worker

    async def asend(self, task: str, n: int) -> None:
        await TASKS[task].enqueue(n)

    async def asend_many(self, task: str, values: list[int]) -> None:
        func = TASKS[task]
        for start in range(0, len(values), 1000):
            await worker.enqueue_many(
                [func.enqueue(n) for n in values[start : start + 1000]]
            )


def make_producer() -> Producer:
    return Producer()
