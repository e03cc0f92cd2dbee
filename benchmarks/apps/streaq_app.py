"""streaq.

Worker: ``streaq run benchmarks.apps.streaq_app:worker``; ``concurrency``
and ``prefetch`` come from the profile. Batched sends use
``Worker.enqueue_many``, one pipeline.
"""

from __future__ import annotations

import asyncio

from streaq import Worker

from benchmarks.apps.common import (
    CONCURRENCY,
    COUNTER,
    LATENCIES,
    PROFILE,
    URL,
    AsyncRunner,
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


class Producer:
    def __init__(self) -> None:
        self.runner = AsyncRunner()
        self.worker = worker
        self.runner.run(self.worker.__aenter__())

    def send(self, task: str, n: int) -> None:
        self.runner.run(self._send(task, n))

    async def _send(self, task: str, n: int) -> None:
        await TASKS[task].enqueue(n)

    def send_many(self, task: str, values: list[int]) -> None:
        func = TASKS[task]
        for start in range(0, len(values), 1000):
            batch = [func.enqueue(n) for n in values[start : start + 1000]]
            self.runner.run(self.worker.enqueue_many(batch))

    def close(self) -> None:
        self.runner.run(self.worker.__aexit__(None, None, None))
        self.runner.close()


def make_producer() -> Producer:
    return Producer()
