"""An ordered task for the tests that run, stop and kill owners."""

from __future__ import annotations

import json
import os
import random
import time

from taskq import Context, TaskQ

app = TaskQ(
    os.environ.get("TASKQ_URL"),
    namespace=os.environ.get("TASKQ_TEST_NAMESPACE", "taskq"),
)
app.topic("orders", partitions=int(os.environ.get("TASKQ_TEST_PARTITIONS", "4")))
LOG = f"{app.keys.namespace}:test:log"
LEASE_S = float(os.environ.get("TASKQ_TEST_LEASE", "2"))


@app.task(
    topic="orders", key="key", ordered=True, retries=5, backoff=0.05, lease=LEASE_S
)
def step(
    key: str, seq: int, ctx: Context, sleep: float = 0.0, flaky: bool = True
) -> None:
    """Log a successful run; one message in twenty fails its first attempt."""
    start = time.time()
    pid = os.getpid()
    if sleep:
        app.redis.rpush(
            LOG,
            json.dumps(
                {"event": "start", "key": key, "seq": seq, "pid": pid, "t": start}
            ),
        )
        time.sleep(sleep)
    else:
        time.sleep(random.uniform(0, 0.004))
    if flaky and ctx.attempt == 1 and random.Random(f"{key}:{seq}").random() < 0.05:
        raise RuntimeError("first attempts fail now and then")
    record = {
        "event": "end",
        "key": key,
        "seq": seq,
        "attempt": ctx.attempt,
        "pid": pid,
        "start": start,
        "t": time.time(),
    }
    app.redis.rpush(LOG, json.dumps(record))


@app.task(topic="orders", key="key", ordered=True, retries=0, lease=LEASE_S)
def once(key: str, seq: int, sleep: float, ctx: Context) -> None:
    """Log each start; no retries, so a lost run is dead-lettered."""
    _log("start", key, seq, ctx)
    time.sleep(sleep)


@app.task(
    topic="orders", key="key", ordered=True, retries=1, backoff=3.0, lease=LEASE_S
)
def retrying(key: str, seq: int, ctx: Context) -> None:
    """Fail the first attempt; the second, after 3 s, succeeds."""
    _log("start", key, seq, ctx)
    if ctx.attempt == 1:
        raise RuntimeError("not yet")
    _log("end", key, seq, ctx)


def _log(event: str, key: str, seq: int, ctx: Context) -> None:
    record = {
        "event": event,
        "key": key,
        "seq": seq,
        "attempt": ctx.attempt,
        "pid": os.getpid(),
        "t": time.time(),
    }
    app.redis.rpush(LOG, json.dumps(record))
