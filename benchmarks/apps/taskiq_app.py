"""taskiq with taskiq-redis's stream broker (acknowledged deliveries).

Worker: ``taskiq worker benchmarks.apps.taskiq_app:broker --workers N``.
The consumer group is created from the start of the stream
(``consumer_id="0"``), so tasks sent before the worker started are
received. taskiq has no bulk send; batched sends are concurrent ``kiq``
calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from taskiq_redis import RedisStreamBroker

from benchmarks.apps.common import (
    COUNTER,
    LATENCIES,
    URL,
    AsyncProducer,
    async_client,
    gather_chunks,
    now_us,
)

broker = RedisStreamBroker(url=URL, queue_name="bench", consumer_id="0")


@broker.task(task_name="noop")
async def noop(n: int) -> None:
    pass


@broker.task(task_name="incr")
async def incr(n: int) -> None:
    await async_client().incr(COUNTER)


@broker.task(task_name="sleep10")
async def sleep10(n: int) -> None:
    await asyncio.sleep(0.01)
    await async_client().incr(COUNTER)


@broker.task(task_name="lat")
async def lat(n: int) -> None:
    await async_client().rpush(LATENCIES, now_us() - n)


TASKS = {"noop": noop, "incr": incr, "sleep10": sleep10, "lat": lat}


class Producer(AsyncProducer):
    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        await broker.startup()
        try:
            yield
        finally:
            await broker.shutdown()

    async def asend(self, task: str, n: int) -> None:
        await TASKS[task].kiq(n)

    async def asend_many(self, task: str, values: list[int]) -> None:
        await gather_chunks(TASKS[task].kiq, values)


def make_producer() -> Producer:
    return Producer()
