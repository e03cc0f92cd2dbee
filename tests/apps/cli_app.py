"""An app for the command-line tests; its URL and namespace come from the
environment."""

from __future__ import annotations

import os

from taskq import TaskQ

app = TaskQ(
    os.environ.get("TASKQ_URL"),
    namespace=os.environ.get("TASKQ_TEST_NAMESPACE", "taskq"),
)
app.topic("calls", partitions=2)


@app.task(topic="calls", key="k", retries=0)
def call_api(k: str, n: int) -> None:
    if n < 0:
        raise RuntimeError("upstream 503")


@app.consumer("events", group="audit", retries=0)
def audit(event: dict[str, int]) -> None:
    if event.get("fail"):
        raise ValueError("bad event")


not_an_app = "just a string"


@app.periodic("0 * * * *", tz="Europe/Berlin", catchup="skip")
def hourly() -> None:
    """A periodic job for the schedule commands."""


@app.digest("notes", key="user", cron="0 8 * * *", tz="Europe/Berlin")
def morning(user: str, events: list[dict[str, str]]) -> None:
    """A digest for the schedule commands."""
