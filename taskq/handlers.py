"""What the decorators register: tasks and consumers.

A :class:`Task` is a function that producers call through ``send``; its
messages carry the task's name and its keyword arguments. A
:class:`Consumer` receives the raw events of a topic in its own consumer
group. Both are *handlers* to a worker: something that decodes a payload
and runs a function under a retry policy.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from taskq.context import Context
from taskq.errors import ConfigurationError, ValidationError
from taskq.keys import check_name
from taskq.retry import Backoff, BackoffOption, make_backoff
from taskq.signature import EventSignature, TaskSignature

if TYPE_CHECKING:
    from taskq.app import TaskQ
    from taskq.schedules import Periodic

P = ParamSpec("P")
R = TypeVar("R")

KeyOption = str | Callable[[Mapping[str, Any]], Any] | None


class Handler:
    """The parts of a task or consumer that a worker uses."""

    name: str
    topic: str
    group: str
    func: Callable[..., Any]
    is_async: bool
    context_param: str | None
    max_attempts: int
    backoff: Backoff
    timeout_s: float | None
    lease_s: float | None
    ordered: bool

    def _init_policy(
        self,
        *,
        retries: int,
        backoff: BackoffOption,
        timeout: float | None,
        lease: float | None,
        ordered: bool,
    ) -> None:
        what = f"{type(self).__name__.lower()} {self.name!r}"
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ConfigurationError(f"{what}: retries must be a whole number >= 0")
        for option, value in (("timeout", timeout), ("lease", lease)):
            if value is not None and (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or value <= 0
            ):
                raise ConfigurationError(f"{what}: {option} must be seconds > 0")
        self.max_attempts = retries + 1
        self.backoff = make_backoff(backoff)
        self.timeout_s = None if timeout is None else float(timeout)
        self.lease_s = None if lease is None else float(lease)
        self.ordered = bool(ordered)
        self.is_async = inspect.iscoroutinefunction(self.func)

    def decode(self, payload: bytes) -> Any:
        """Parse and validate a payload; raises ValidationError."""
        raise NotImplementedError

    def call(self, decoded: Any, context: Context) -> Any:
        """Run the function on a decoded payload; may return a coroutine."""
        raise NotImplementedError

    def abandon(self, partition: int, fields: dict[bytes, bytes]) -> None:
        """Called when a message is dead-lettered without running again
        (its worker died during the last attempt). Must not raise."""


class Task(Handler, Generic[P, R]):
    """A function that runs on a worker when a message is sent to it.

    Calling the task runs the function in the caller, as a plain call.
    """

    def __init__(
        self,
        app: TaskQ,
        func: Callable[P, R],
        *,
        name: str,
        topic: str,
        key: KeyOption,
        retries: int,
        backoff: BackoffOption,
        timeout: float | None,
        lease: float | None,
        ordered: bool,
    ) -> None:
        self.app = app
        self.func = func
        self.name = name
        self.topic = check_name("topic", topic)
        self.group = app.task_group
        self.signature = TaskSignature(func, name)
        self.context_param = self.signature.context_param
        if isinstance(key, str) and key not in self.signature.names:
            raise ConfigurationError(
                f"task {name!r}: key={key!r} names no parameter of the task; "
                f"use one of {self.signature.names} or a callable"
            )
        if key is not None and not isinstance(key, str) and not callable(key):
            raise ConfigurationError(
                f"task {name!r}: key must name a parameter or be a callable"
            )
        self.key = key
        #: The schedule of a periodic job (``@app.periodic``), else None.
        self.schedule: Periodic | None = None
        self._init_policy(
            retries=retries,
            backoff=backoff,
            timeout=timeout,
            lease=lease,
            ordered=ordered,
        )
        self.__name__ = getattr(func, "__name__", name)
        self.__doc__ = func.__doc__
        self.__wrapped__ = func

    def __repr__(self) -> str:
        return f"<Task {self.name} topic={self.topic}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        func: Callable[P, R] = self.func
        return func(*args, **kwargs)

    # -- producing -----------------------------------------------------------

    def send(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Validate the arguments and queue the task; returns the message id."""
        return self.app._producer.send_task(self, args, kwargs, NO_OPTIONS)

    def send_many(
        self, items: Iterable[Mapping[str, Any] | tuple[Any, ...]]
    ) -> list[str]:
        """Queue many calls, one pipelined round trip per batch.

        Each item is a dict of keyword arguments or a tuple of positional
        ones. Every item is validated before anything is written.
        """
        return self.app._producer.send_many(self, items, NO_OPTIONS)

    def options(
        self,
        *,
        key: Any = None,
        delay: float | None = None,
        eta: datetime | None = None,
        wait: float = 0.0,
    ) -> TaskCall[P, R]:
        """Send with other options: ``task.options(delay=30).send(...)``.

        ``key`` overrides the message key; ``delay`` (seconds) or ``eta``
        (an aware datetime) runs it later; ``wait`` (seconds) waits for room
        when the topic's partition is full instead of raising QueueFull.
        """
        return TaskCall(
            self, SendOptions.make(key=key, delay=delay, eta=eta, wait=wait)
        )

    # -- consuming -----------------------------------------------------------

    def message_key(self, arguments: Mapping[str, Any]) -> Any:
        if self.key is None:
            return None
        if isinstance(self.key, str):
            return arguments[self.key]
        return self.key(arguments)

    def decode(self, payload: bytes) -> dict[str, Any]:
        return self.signature.decode(payload)

    def call(self, decoded: dict[str, Any], context: Context) -> Any:
        if self.context_param is not None:
            decoded[self.context_param] = context
        return self.func(**decoded)


class SendOptions:
    """Per-send overrides: key, delay or an absolute time, waiting for room."""

    __slots__ = ("delay_s", "eta_ms", "key", "wait_s")

    def __init__(self) -> None:
        self.key: Any = None
        self.delay_s: float | None = None
        self.eta_ms: int | None = None
        self.wait_s = 0.0

    @classmethod
    def make(
        cls,
        *,
        key: Any = None,
        delay: float | None = None,
        eta: datetime | None = None,
        wait: float = 0.0,
    ) -> SendOptions:
        options = cls()
        options.key = key
        if (
            isinstance(wait, bool)
            or not isinstance(wait, (int, float))
            or math.isnan(wait)
            or wait < 0
        ):
            raise _bad_option("wait", f"wait must be seconds >= 0, not {wait!r}")
        options.wait_s = float(wait)
        if delay is not None and eta is not None:
            raise _bad_option("eta", "pass delay or eta, not both")
        if delay is not None:
            if (
                isinstance(delay, bool)
                or not isinstance(delay, (int, float))
                or not math.isfinite(delay)
                or delay < 0
            ):
                raise _bad_option(
                    "delay",
                    f"delay must be a finite number of seconds >= 0, not {delay!r}",
                )
            options.delay_s = float(delay)
        if eta is not None:
            if not isinstance(eta, datetime):
                raise _bad_option("eta", f"eta must be a datetime, not {eta!r}")
            if eta.tzinfo is None or eta.tzinfo.utcoffset(eta) is None:
                raise _bad_option(
                    "eta",
                    "eta must be an aware datetime (with a time zone), for "
                    "example datetime.now(timezone.utc) + timedelta(minutes=5); "
                    f"got the naive {eta.isoformat()}",
                )
            options.eta_ms = int(eta.timestamp() * 1000)
        return options

    @property
    def delayed(self) -> bool:
        return self.delay_s is not None or self.eta_ms is not None


def _bad_option(name: str, text: str) -> ValidationError:
    return ValidationError(
        "send options",
        [{"loc": (), "msg": text, "type": f"bad_{name}"}],
        subject="send options",
    )


#: The options of a plain send; shared, as nothing changes options once
#: they are made.
NO_OPTIONS = SendOptions()


class TaskCall(Generic[P, R]):
    """A task with send options bound, from :meth:`Task.options`."""

    def __init__(self, task: Task[P, R], options: SendOptions) -> None:
        self.task = task
        self._options = options

    def send(self, *args: P.args, **kwargs: P.kwargs) -> str:
        return self.task.app._producer.send_task(self.task, args, kwargs, self._options)

    def send_many(
        self, items: Iterable[Mapping[str, Any] | tuple[Any, ...]]
    ) -> list[str]:
        return self.task.app._producer.send_many(self.task, items, self._options)


class Consumer(Handler):
    """A function that receives every event of a topic in its own group."""

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        topic: str,
        group: str,
        retries: int,
        backoff: BackoffOption,
        timeout: float | None,
        lease: float | None,
        ordered: bool,
    ) -> None:
        self.func = func
        self.topic = check_name("topic", topic)
        self.group = check_name("group", group)
        self.name = f"{topic}/{group}"
        self.signature = EventSignature(func, self.name)
        self.context_param = self.signature.context_param
        self._init_policy(
            retries=retries,
            backoff=backoff,
            timeout=timeout,
            lease=lease,
            ordered=ordered,
        )

    def __repr__(self) -> str:
        return (
            f"<Consumer {self.func.__qualname__} topic={self.topic} group={self.group}>"
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def decode(self, payload: bytes) -> Any:
        return self.signature.decode(payload)

    def call(self, decoded: Any, context: Context) -> Any:
        if self.context_param is not None:
            return self.func(decoded, **{self.context_param: context})
        return self.func(decoded)


def validation_reason(error: ValidationError) -> str:
    """``decode_error`` for a payload that is not JSON, else the validation."""
    if any(e.get("type") == "json_invalid" for e in error.errors):
        return "decode_error"
    return "validation_error"
