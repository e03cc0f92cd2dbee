"""arq.

Worker: ``arq benchmarks.apps.arq_app.WorkerSettings``; ``max_jobs`` comes
from the profile. arq has no bulk send; batched sends are concurrent
``enqueue_job`` calls.
"""

from __future__ import annotations

import asyncio
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings

from benchmarks.apps.common import (
    CONCURRENCY,
    COUNTER,
    LATENCIES,
    PROFILE,
    URL,
    AsyncRunner,
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


class WorkerSettings:
    functions = [noop, incr, sleep10, lat]
    redis_settings = SETTINGS
    # Default max_jobs is 10.
    max_jobs = CONCURRENCY or (100 if PROFILE == "tuned" else 10)


class Producer:
    def __init__(self) -> None:
        self.runner = AsyncRunner()
        self.pool = self.runner.run(create_pool(SETTINGS))

    def send(self, task: str, n: int) -> None:
        self.runner.run(self.pool.enqueue_job(task, n))

    def send_many(self, task: str, values: list[int]) -> None:
        self.runner.run(gather_chunks(lambda n: self.pool.enqueue_job(task, n), values))

    def close(self) -> None:
        self.runner.run(self.pool.aclose())
        self.runner.close()


def make_producer() -> Producer:
    return Producer()
