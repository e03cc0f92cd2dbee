"""What every queue's module shares: keys, settings and Redis clients."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis
import redis.asyncio

COUNTER = "bench:count"
LATENCIES = "bench:lat"

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:1/0")
#: "default" or "tuned": which worker settings the queue's module applies.
PROFILE = os.environ.get("BENCH_PROFILE", "default")
#: Concurrency asked for by a workload (the 10 ms sleeping handler).
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "0"))

T = TypeVar("T")


def now_us() -> int:
    return time.time_ns() // 1000


def sync_client() -> redis.Redis:
    return redis.Redis.from_url(URL)


_async_clients: dict[int, redis.asyncio.Redis] = {}


def async_client() -> redis.asyncio.Redis:
    """One asyncio client per event loop (a client is bound to its loop)."""
    loop = id(asyncio.get_running_loop())
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = redis.asyncio.Redis.from_url(URL)
    return client


class AsyncRunner:
    """Runs a producer's coroutines on one event loop of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.close()


async def gather_chunks(
    make: Callable[[int], Awaitable[Any]], values: list[int], size: int = 500
) -> None:
    """Await ``make(v)`` for every value, ``size`` at a time (for queues
    whose only bulk idiom is concurrent sends)."""
    for start in range(0, len(values), size):
        await asyncio.gather(*(make(v) for v in values[start : start + size]))
