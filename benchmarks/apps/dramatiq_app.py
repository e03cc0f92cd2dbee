"""Dramatiq with its Redis broker.

Worker: ``dramatiq benchmarks.apps.dramatiq_app --processes P --threads T``.
Dramatiq has no pipelined bulk send; batched sends use ``group(...).run()``.
"""

from __future__ import annotations

import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from benchmarks.apps.common import COUNTER, LATENCIES, URL, now_us, sync_client
from benchmarks.apps.common import Producer as BaseProducer

broker = RedisBroker(url=URL)
dramatiq.set_broker(broker)
redis = sync_client()


@dramatiq.actor(queue_name="bench", max_retries=3)
def noop(n: int) -> None:
    pass


@dramatiq.actor(queue_name="bench", max_retries=3)
def incr(n: int) -> None:
    redis.incr(COUNTER)


@dramatiq.actor(queue_name="bench", max_retries=3)
def sleep10(n: int) -> None:
    time.sleep(0.01)
    redis.incr(COUNTER)


@dramatiq.actor(queue_name="bench", max_retries=3)
def lat(n: int) -> None:
    redis.rpush(LATENCIES, now_us() - n)


TASKS = {a.actor_name: a for a in (noop, incr, sleep10, lat)}


class Producer(BaseProducer):
    def send(self, task: str, n: int) -> None:
        TASKS[task].send(n)

    def send_many(self, task: str, values: list[int]) -> None:
        actor = TASKS[task]
        for start in range(0, len(values), 1000):
            dramatiq.group(actor.message(n) for n in values[start : start + 1000]).run()

    def close(self) -> None:
        pass


def make_producer() -> Producer:
    return Producer()
