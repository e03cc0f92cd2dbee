"""arq.

Worker: ``arq benchmarks.apps.arq_app.WorkerSettings``; ``max_jobs`` comes
from the profile. arq has no bulk send; batched sends are concurrent
``enqueue_job`` calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings

from benchmarks.apps.common import (
    CONCURRENCY,
    COUNTER,
    LATENCIES,
    PROFILE,
    URL,
    AsyncProducer,
    gather_chunks,
    now_us,
)

SETTINGS = RedisSettings.from_dsn(URL)


async def noop(ctx: dict[str, Any], n: int) -> None:
    pass


async def incr(ctx: dict[str, Any], n: int) -> None:
    await ctx["redis"].incr(COUNTER)


async def sleep10(ctx: dict[str, Any], n: int) -> None:
    await asyncio.sleep(0.01)
    await ctx["redis"].incr(COUNTER)


async def lat(ctx: dict[str, Any], n: int) -> None:
    await ctx["redis"].rpush(LATENCIES, now_us() - n)


#: For the throughput settings: arq logs every job at INFO by default.
QUIET_LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"arq": {"level": "WARNING"}},
}


class WorkerSettings:
    functions = [noop, incr, sleep10, lat]
    redis_settings = SETTINGS
    # Defaults: max_jobs 10, a poll of the queue every 0.5 s.
    max_jobs = CONCURRENCY or (100 if PROFILE == "tuned" else 10)
    poll_delay = 0.005 if PROFILE == "tuned" else 0.5


class Producer(AsyncProducer):
    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        self.pool = await create_pool(SETTINGS)
        try:
            yield
        finally:
            await self.pool.aclose()

    async def asend(self, task: str, n: int) -> None:
        await self.pool.enqueue_job(task, n)

    async def asend_many(self, task: str, values: list[int]) -> None:
        await gather_chunks(lambda n: self.pool.enqueue_job(task, n), values)


def make_producer() -> Producer:
    return Producer()
