"""A test app with a digest whose handler records every call in Redis,
for tests that run (and kill) workers as separate processes.

The time comes from a Redis key the test sets, so the test and every
worker process read the same clock.
"""

from __future__ import annotations

import json
import os
import threading
import time

from pydantic import BaseModel

from taskq import Context, TaskQ

app = TaskQ(
    os.environ.get("TASKQ_URL"),
    namespace=os.environ.get("TASKQ_TEST_NAMESPACE", "taskq"),
)


class RedisClock:
    """The time a test keeps in Redis (epoch seconds)."""

    def __init__(self, owner: TaskQ) -> None:
        self.owner = owner

    @property
    def key(self) -> str:
        return f"{self.owner.keys.namespace}:test:clock"

    def now(self) -> float:
        value = self.owner.redis.get(self.key)
        return float(value) if value is not None else time.time()

    def set(self, seconds: float) -> None:
        self.owner.redis.set(self.key, repr(seconds))

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        return stop.wait(min(seconds, 0.05))


app.clock = RedisClock(app)


class Note(BaseModel):
    user_id: str
    text: str


def calls_key(owner: TaskQ) -> str:
    return f"{owner.keys.namespace}:test:calls"


@app.digest(
    "notifications",
    key="user_id",
    cron="0 8 * * *",
    tz="Europe/Berlin",
    lease=2,
    backoff=0,
)
def daily_mail(user_id: str, events: list[Note], ctx: Context) -> None:
    record = {
        "key": user_id,
        "texts": [e.text for e in events],
        "tick": ctx.scheduled_at.isoformat() if ctx.scheduled_at else None,
        "attempt": ctx.attempt,
        "pid": os.getpid(),
    }
    app.redis.rpush(calls_key(app), json.dumps({**record, "done": False}))
    if (
        record["texts"][:1] == ["e1"]
        and ctx.attempt == 1
        and os.environ.get("TASKQ_TEST_SLOW")
    ):
        time.sleep(60)  # long enough to be killed in the middle
    app.redis.rpush(calls_key(app), json.dumps({**record, "done": True}))
