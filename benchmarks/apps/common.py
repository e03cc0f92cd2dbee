"""What every queue's module shares: keys, settings and Redis clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio
import redis.cluster

COUNTER = "bench:count"
LATENCIES = "bench:lat"

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:1/0")
#: "default" or "tuned": which worker settings the queue's module applies.
PROFILE = os.environ.get("BENCH_PROFILE", "default")
#: Concurrency asked for by a workload (the 10 ms sleeping handler).
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "0"))


def now_us() -> int:
    return time.time_ns() // 1000


#: taskq's URL form of a Redis Cluster (``targets.ClusterRedis``).
CLUSTER_SCHEME = "redis+cluster://"


def is_cluster(url: str = URL) -> bool:
    return url.startswith(CLUSTER_SCHEME)


def cluster_nodes(url: str = URL) -> list[redis.cluster.ClusterNode]:
    """The startup nodes of ``redis+cluster://host:port,host:port``."""
    nodes = []
    for item in url.removeprefix(CLUSTER_SCHEME).strip("/").split(","):
        host, _, port = item.rpartition(":")
        nodes.append(redis.cluster.ClusterNode(host, int(port)))
    return nodes


def sync_client() -> redis.Redis | redis.cluster.RedisCluster:
    """A plain redis-py client of the suite's Redis: a ``RedisCluster`` on a
    cluster URL (the queue itself is given the URL as it is)."""
    if is_cluster(URL):
        return redis.cluster.RedisCluster(startup_nodes=cluster_nodes(URL))
    return redis.Redis.from_url(URL)


_async_clients: dict[int, redis.asyncio.Redis] = {}


def async_client() -> redis.asyncio.Redis:
    """One asyncio client per event loop (a client is bound to its loop)."""
    loop = id(asyncio.get_running_loop())
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = redis.asyncio.Redis.from_url(URL)
    return client


class Producer:
    """Sends tasks through a queue's API; one per request of the driver.

    ``enqueue`` returns the seconds the sends took; the first send (a
    ``noop``) warms the connection up and is not timed.
    """

    def send(self, task: str, n: int) -> None:
        raise NotImplementedError

    def send_many(self, task: str, values: list[int]) -> None:
        raise NotImplementedError

    def enqueue(self, task: str, values: list[int], batch: bool) -> float:
        self.send("noop", 0)
        started = time.perf_counter()
        if batch:
            self.send_many(task, values)
        else:
            send = self.send
            for n in values:
                send(task, n)
        return time.perf_counter() - started

    def paced(self, task: str, count: int, rate: float) -> None:
        """Send ``count`` tasks, ``rate`` per second, each carrying its
        send time in microseconds."""
        interval = 1.0 / rate
        next_at = time.perf_counter()
        for _ in range(count):
            self.send(task, now_us())
            next_at += interval
            time.sleep(max(0.0, next_at - time.perf_counter()))

    def close(self) -> None:
        pass


class AsyncProducer(Producer):
    """A producer for an asyncio queue: each request runs as one coroutine
    inside ``session()`` (some clients must be entered and left in the
    same task)."""

    def session(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return contextlib.nullcontext()  # type: ignore[return-value]

    async def asend(self, task: str, n: int) -> None:
        raise NotImplementedError

    async def asend_many(self, task: str, values: list[int]) -> None:
        raise NotImplementedError

    def enqueue(self, task: str, values: list[int], batch: bool) -> float:
        async def go() -> float:
            async with self.session():
                await self.asend("noop", 0)
                started = time.perf_counter()
                if batch:
                    await self.asend_many(task, values)
                else:
                    for n in values:
                        await self.asend(task, n)
                return time.perf_counter() - started

        return asyncio.run(go())

    def paced(self, task: str, count: int, rate: float) -> None:
        async def go() -> None:
            async with self.session():
                interval = 1.0 / rate
                next_at = time.perf_counter()
                for _ in range(count):
                    await self.asend(task, now_us())
                    next_at += interval
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

        asyncio.run(go())


async def gather_chunks(
    make: Callable[[int], Awaitable[Any]], values: list[int], size: int = 500
) -> None:
    """Await ``make(v)`` for every value, ``size`` at a time (for queues
    whose only bulk idiom is concurrent sends)."""
    for start in range(0, len(values), size):
        await asyncio.gather(*(make(v) for v in values[start : start + size]))
