"""Celery with its Redis broker.

Worker: ``celery -A benchmarks.apps.celery_app worker ...`` (the suite
passes the pool, concurrency and prefetch multiplier on the command line).
Batched sends use a ``group``, Celery's way to send many calls at once.
"""

from __future__ import annotations

import time

from celery import Celery, group

from benchmarks.apps.common import (
    COUNTER,
    LATENCIES,
    URL,
    now_us,
    sync_client,
)
from benchmarks.apps.common import (
    Producer as BaseProducer,
)


def make_app() -> Celery:
    celery = Celery("bench", broker=URL, set_as_current=False)
    celery.conf.update(
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return celery


app = make_app()
redis = sync_client()


@app.task(name="noop")
def noop(n: int) -> None:
    pass


@app.task(name="incr")
def incr(n: int) -> None:
    redis.incr(COUNTER)


@app.task(name="sleep10")
def sleep10(n: int) -> None:
    time.sleep(0.01)
    redis.incr(COUNTER)


@app.task(name="lat")
def lat(n: int) -> None:
    redis.rpush(LATENCIES, now_us() - n)


class Producer(BaseProducer):
    def __init__(self) -> None:
        # A fresh app per producer: kombu remembers which queues it
        # declared, and the suite flushes Redis between runs.
        self.app = make_app()

    def send(self, task: str, n: int) -> None:
        self.app.signature(task, args=(n,)).apply_async()

    def send_many(self, task: str, values: list[int]) -> None:
        for start in range(0, len(values), 1000):
            group(
                self.app.signature(task, args=(n,))
                for n in values[start : start + 1000]
            ).apply_async()

    def close(self) -> None:
        self.app.close()


def make_producer() -> Producer:
    return Producer()
