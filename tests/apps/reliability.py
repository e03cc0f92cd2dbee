"""Tasks for the tests that kill, stop and restart things.

Every task writes what happened (start, end) to a Redis list the test
reads, with the process id and the attempt number, so a test can tell
which worker ran what, and when.
"""

from __future__ import annotations

import json
import os
import signal
import time

import taskq
from taskq import Context, TaskQ

app = TaskQ(
    os.environ.get("TASKQ_URL"),
    namespace=os.environ.get("TASKQ_TEST_NAMESPACE", "taskq"),
)
app.topic("jobs", partitions=int(os.environ.get("TASKQ_TEST_PARTITIONS", "1")))
app.topic("calls", partitions=2)
EVENTS = f"{app.keys.namespace}:test:events"


def note(event: str, task: str, n: object, ctx: Context) -> None:
    record = {
        "event": event,
        "task": task,
        "n": n,
        "pid": os.getpid(),
        "attempt": ctx.attempt,
        "t": time.time(),
    }
    app.redis.rpush(EVENTS, json.dumps(record))


@app.task(topic="jobs", key="key", retries=3)
def slow(key: str, n: int, seconds: float, ctx: Context) -> None:
    note("start", "slow", n, ctx)
    time.sleep(seconds)
    note("end", "slow", n, ctx)


@app.task(topic="jobs", key="key", retries=2)
def boom(key: str, ctx: Context) -> None:
    note("start", "boom", key, ctx)
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(topic="jobs", key="key", retries=2)
def boom2(key: str, ctx: Context) -> None:
    note("start", "boom2", key, ctx)
    raise MemoryError("pretend the process ran out of memory")


@app.task(topic="jobs", key="key", retries=2)
def ok(key: str, i: int, ctx: Context) -> None:
    note("start", "ok", i, ctx)
    note("end", "ok", i, ctx)


@app.task(topic="calls", retries=3, backoff=taskq.exponential(1, 2, 10, jitter=False))
def call_api(n: int, ctx: Context) -> None:
    note("start", "call_api", n, ctx)
    note("end", "call_api", n, ctx)
    raise RuntimeError("upstream 503")


@app.task(topic="calls")
def ping(ctx: Context) -> None:
    note("start", "ping", ctx.key, ctx)


@app.task(topic="calls", retries=1)
def wait_then_retry(ctx: Context) -> None:
    note("start", "wait_then_retry", ctx.key, ctx)
    note("end", "wait_then_retry", ctx.key, ctx)
    if ctx.attempt == 1:
        raise taskq.Retry(delay=5)
