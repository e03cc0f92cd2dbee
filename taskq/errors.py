"""The exceptions taskq raises: one tree rooted at :class:`TaskqError`.

The branches follow the layers: configuration mistakes (raised at import
time, when a decorator runs), producer-side rejections (raised by ``send``
before anything is written), connection trouble (redis-py's errors,
translated at the transport boundary with the cause kept), and the control
signals a handler may raise on purpose.
"""

from __future__ import annotations

from typing import Any


class TaskqError(Exception):
    """Base class of every exception taskq raises on purpose."""


# -- configuration ---------------------------------------------------------


class ConfigurationError(TaskqError):
    """A decorator, option or command-line argument is invalid."""


class TopicMismatchError(ConfigurationError):
    """A topic is declared with a partition count other than the stored one."""


# -- producing -------------------------------------------------------------


class ValidationError(TaskqError, ValueError):
    """Task arguments (or an event) do not match the handler's annotations.

    ``task`` names the task (or the topic of an event) and ``errors`` holds
    one dict per problem, as pydantic reports them (``loc``, ``msg``,
    ``type``).
    """

    def __init__(
        self, task: str, errors: list[dict[str, Any]], *, subject: str = ""
    ) -> None:
        self.task = task
        self.errors = errors
        problems = "; ".join(_describe(e) for e in errors) or "invalid arguments"
        subject = subject or f"arguments for task {task!r}"
        super().__init__(f"invalid {subject}: {problems}")


def _describe(error: dict[str, Any]) -> str:
    loc = ".".join(str(part) for part in error.get("loc", ()))
    msg = str(error.get("msg", "invalid"))
    return f"{loc}: {msg}" if loc else msg


class PayloadTooLarge(TaskqError):
    """An encoded message is larger than ``max_payload_bytes``."""

    def __init__(self, task: str, size: int, limit: int) -> None:
        self.task = task
        self.size = size
        self.limit = limit
        super().__init__(
            f"message for {task!r} is {size} bytes, over the limit of {limit} "
            "bytes (max_payload_bytes); store large data elsewhere and send a "
            "reference to it"
        )


class QueueFull(TaskqError):
    """A partition has reached its topic's ``max_len``."""

    def __init__(
        self, topic: str, partition: int, max_len: int, sent: list[str] | None = None
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.max_len = max_len
        #: Ids of the messages of a ``send_many`` batch written before the
        #: partition was found full (the rest were not written).
        self.sent = sent or []
        super().__init__(
            f"partition {partition} of topic {topic!r} holds {max_len} entries "
            "not yet handled by every group (its max_len); the message was not "
            "written"
        )


class WrongKeyType(TaskqError):
    """A key taskq writes to holds a value of another type (WRONGTYPE):
    something else wrote it, or an operator's command went wrong."""

    def __init__(self, key: str, kind: str, expected: str) -> None:
        self.key = key
        self.kind = kind
        self.expected = expected
        #: ``send_many``: ids of the messages written to other keys before
        #: (or beside) the refused ones.
        self.sent: list[str] = []
        super().__init__(
            f"key {key!r} holds a {kind}, not a {expected} (WRONGTYPE), so taskq "
            "cannot write to it; delete or rename the key"
        )


# -- connection ------------------------------------------------------------


class ConnectionError(TaskqError):
    """Redis could not be reached or stopped answering."""


# -- handler control -------------------------------------------------------


class Retry(TaskqError):
    """Raised by a handler to ask for another attempt.

    ``delay`` is in seconds; ``None`` uses the task's backoff schedule.
    """

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        self.delay = delay
        self.reason = reason
        text = "retry requested"
        if delay is not None:
            text += f" in {delay:g} s"
        if reason:
            text += f": {reason}"
        super().__init__(text)


class TimeLimitExceeded(TaskqError):
    """A handler ran longer than its task's ``timeout``."""

    def __init__(
        self, message: str = "the handler ran longer than its timeout"
    ) -> None:
        super().__init__(message)
