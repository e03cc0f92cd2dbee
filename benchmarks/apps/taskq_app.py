"""taskq: the tasks, and a producer through the public API.

Worker: ``taskq worker benchmarks.apps.taskq_app:app --topics bench``.
"""

from __future__ import annotations

import time

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
from taskq import TaskQ

app = TaskQ(URL, namespace="bench")
app.topic("bench", partitions=4)
app.topic("ordered", partitions=4)
redis = sync_client()


@app.task(topic="bench")
def noop(n: int) -> None:
    pass


@app.task(topic="bench")
def incr(n: int) -> None:
    redis.incr(COUNTER)


@app.task(topic="bench")
def sleep10(n: int) -> None:
    time.sleep(0.01)
    redis.incr(COUNTER)


@app.task(topic="bench")
def lat(n: int) -> None:
    redis.rpush(LATENCIES, now_us() - n)


# 64 keys, so each partition has several keys whose order is kept.
@app.task(topic="ordered", key=lambda args: args["n"] % 64, ordered=True)
def ordered_incr(n: int) -> None:
    redis.incr(COUNTER)


TASKS = {t.name: t for t in (noop, incr, sleep10, lat, ordered_incr)}


class Producer(BaseProducer):
    def __init__(self) -> None:
        self.app = TaskQ(URL, namespace="bench")
        self.app.topic("bench", partitions=4)
        self.app.topic("ordered", partitions=4)
        # The same functions, registered on this fresh app (after a flush
        # the topics are stored again).
        self.tasks = {
            name: self.app.task(
                name=name, topic=task.topic, key=task.key, ordered=task.ordered
            )(task.func)
            for name, task in TASKS.items()
        }

    def send(self, task: str, n: int) -> None:
        self.tasks[task].send(n)

    def send_many(self, task: str, values: list[int]) -> None:
        self.tasks[task].send_many([(n,) for n in values])

    def close(self) -> None:
        self.app.close()


def make_producer() -> Producer:
    return Producer()
