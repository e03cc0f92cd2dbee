"""taskq: a task queue on Redis Streams, with Kafka's model of topics,
partitions, keys and consumer groups.

::

    from taskq import TaskQ

    app = TaskQ()  # TASKQ_URL, else redis://localhost:6379/0

    @app.task(key="to", retries=5)
    def send_email(to: str, subject: str) -> None: ...

    send_email.send("a@example.org", "Hello")  # a worker runs it

Delivery is at least once: a handler may run more than once for one
message (a worker died after running it but before acknowledging it), so
handlers should be idempotent.
"""

from __future__ import annotations

import logging

from taskq.app import TaskQ, TopicConfig
from taskq.context import Context
from taskq.errors import (
    ConfigurationError,
    ConnectionError,
    PayloadTooLarge,
    QueueFull,
    Retry,
    TaskqError,
    TimeLimitExceeded,
    TopicMismatchError,
    ValidationError,
    WrongKeyType,
)
from taskq.handlers import Consumer, Task
from taskq.partitioning import partition_for
from taskq.retry import Backoff, exponential, fixed, schedule
from taskq.worker import Worker

__version__ = "0.1.0"

# The library never configures logging; the command line does.
logging.getLogger("taskq").addHandler(logging.NullHandler())

__all__ = [
    "Backoff",
    "ConfigurationError",
    "ConnectionError",
    "Consumer",
    "Context",
    "PayloadTooLarge",
    "QueueFull",
    "Retry",
    "Task",
    "TaskQ",
    "TaskqError",
    "TimeLimitExceeded",
    "TopicConfig",
    "TopicMismatchError",
    "ValidationError",
    "Worker",
    "WrongKeyType",
    "exponential",
    "fixed",
    "partition_for",
    "schedule",
]
