"""An app with a consumer group, for the offset and topic commands."""

from __future__ import annotations

import os

from taskq import TaskQ

app = TaskQ(
    os.environ.get("TASKQ_URL"),
    namespace=os.environ.get("TASKQ_TEST_NAMESPACE", "taskq"),
)
app.topic("events", partitions=2)
SEEN: list[int] = []


@app.consumer("events", group="audit")
def audit(event: int) -> None:
    SEEN.append(event)


@app.consumer("events", group="backfill")
def backfill(event: int) -> None:
    SEEN.append(-event)
