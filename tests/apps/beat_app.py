"""A test app with a job every second, for tests that run schedulers as
separate processes."""

from __future__ import annotations

import os

from taskq import TaskQ

app = TaskQ(
    os.environ.get("TASKQ_URL"),
    namespace=os.environ.get("TASKQ_TEST_NAMESPACE", "taskq"),
)


@app.periodic("* * * * * *")
def every_second() -> None:
    """Does nothing; the tests look at the runs the schedulers wrote."""
