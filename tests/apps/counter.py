"""A test app whose tasks record every run in Redis, for tests that run
workers as separate processes (and kill them)."""

from __future__ import annotations

import os
import time

from taskq import Context, TaskQ

app = TaskQ(
    os.environ.get("TASKQ_URL"),
    namespace=os.environ.get("TASKQ_TEST_NAMESPACE", "taskq"),
)
# "stored": take the count stored in Redis, whatever it is.
_PARTITIONS = os.environ.get("TASKQ_TEST_PARTITIONS", "4")
app.topic("jobs", partitions=None if _PARTITIONS == "stored" else int(_PARTITIONS))
RUNS = f"{app.keys.namespace}:test:runs"
STARTS = f"{app.keys.namespace}:test:starts"


@app.task(
    topic="jobs", key="key", retries=int(os.environ.get("TASKQ_TEST_RETRIES", "3"))
)
def record(key: str, n: int, sleep: float = 0.0, ctx: Context | None = None) -> None:
    """Count a run of task n; sleeps first when asked to."""
    if ctx is not None:
        app.redis.rpush(STARTS, f"{n}:{os.getpid()}:{ctx.attempt}:{time.time()}")
    if sleep:
        time.sleep(sleep)
    app.redis.hincrby(RUNS, str(n), 1)
