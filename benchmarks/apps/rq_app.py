"""RQ.

Worker: ``rq worker --url URL bench`` (``--worker-class
rq.worker.SimpleWorker`` for throughput: no fork per job). Batched sends
use ``Queue.enqueue_many``, one pipeline.
"""

from __future__ import annotations

import time

from rq import Queue

from benchmarks.apps.common import (
    COUNTER,
    LATENCIES,
    now_us,
    sync_client,
)
from benchmarks.apps.common import (
    Producer as BaseProducer,
)

redis = sync_client()


def noop(n: int) -> None:
    pass


def incr(n: int) -> None:
    redis.incr(COUNTER)


def sleep10(n: int) -> None:
    time.sleep(0.01)
    redis.incr(COUNTER)


def lat(n: int) -> None:
    redis.rpush(LATENCIES, now_us() - n)


TASKS = {f.__name__: f for f in (noop, incr, sleep10, lat)}


class Producer(BaseProducer):
    def __init__(self) -> None:
        self.client = sync_client()
        self.queue = Queue("bench", connection=self.client)

    def send(self, task: str, n: int) -> None:
        self.queue.enqueue(TASKS[task], n)

    def send_many(self, task: str, values: list[int]) -> None:
        func = TASKS[task]
        for start in range(0, len(values), 1000):
            self.queue.enqueue_many(
                [Queue.prepare_data(func, (n,)) for n in values[start : start + 1000]]
            )

    def close(self) -> None:
        self.client.close()


def make_producer() -> Producer:
    return Producer()
