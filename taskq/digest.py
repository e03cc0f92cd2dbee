"""Digests: events collected per key, handed to a handler once per tick.

``@app.digest("notifications", key="user_id", cron="0 8 * * *")`` makes a
consumer group (named after the digest) on the topic, served by workers
like any other. Its handler does two things:

* **collect**: each event of the topic is validated and stored in the
  digest's keys of its partition, with its collection time (the app's
  clock), in one Lua step that also recognises an event stored before.
  Nothing is kept only in a worker's memory. An event must be in the
  partition of its digest key (publish it with the digest key as its
  message key); one that is not is moved there first.
* **run a batch**: at each tick a scheduler closes the window in every
  partition (``digest_seal.lua``): each key's events collected before the
  tick are sealed into batches of at most ``max_events``, and each batch
  is written to the partition's stream, with its events, as an entry for
  this group. A worker runs it like any message: retried with the very
  same events, dead-lettered as a whole (tick, key, events) after its
  last attempt. Only then, or after success, are the events removed.

The window of tick T holds the events collected in ``[previous tick, T)``;
an event collected while T is being closed belongs to the next window.
"""

from __future__ import annotations

import collections.abc
import inspect
import json
import logging
import time
import typing
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pydantic

from taskq import message as wire
from taskq.connection import CONNECTION_ERRORS
from taskq.context import Context
from taskq.cron import Cron
from taskq.errors import ConfigurationError, ValidationError
from taskq.handlers import Consumer
from taskq.keys import check_name
from taskq.partitioning import key_bytes, partition_for
from taskq.retry import BackoffOption
from taskq.schedules import Schedule
from taskq.signature import _error_list, _is_context

if TYPE_CHECKING:
    from taskq.app import TaskQ
    from taskq.scripts import Scripts

log = logging.getLogger("taskq.digest")

#: A batch entry's payload starts with this, which no JSON text does, so
#: batches and the topic's raw events can never be taken for each other.
BATCH_PREFIX = b"taskq-digest "

#: Attempts at removing a finished batch's events while Redis is away.
_DONE_ATTEMPTS = 5

DigestKeyOption = str | Callable[[Any], Any]


class _Event:
    """A raw event of the topic, validated, with its digest key."""

    __slots__ = ("key", "payload")

    def __init__(self, key: str, payload: bytes) -> None:
        self.key = key
        self.payload = payload


class _Batch:
    """A sealed batch: one key's events of one tick."""

    __slots__ = ("batch", "events", "key", "tick_ms")

    def __init__(self, tick_ms: int, key: str, batch: str, events: list[Any]) -> None:
        self.tick_ms = tick_ms
        self.key = key
        self.batch = batch
        self.events = events


class DigestSchedule(Schedule):
    """The schedule of a digest: when its windows close."""

    kind = "digest"

    def __init__(
        self, digest: Digest, cron: Cron, *, catchup: str, max_catchup: int
    ) -> None:
        super().__init__(digest.name, cron, catchup=catchup, max_catchup=max_catchup)
        self.digest = digest


class Digest(Consumer):
    """A handler of ``(key, events)`` that runs once per key and tick.

    Calling it calls the function, as a plain call.
    """

    def __init__(
        self,
        app: TaskQ,
        func: Callable[..., Any],
        *,
        name: str,
        topic: str,
        key: DigestKeyOption,
        cron: Cron,
        catchup: str,
        max_catchup: int,
        max_events: int,
        retries: int,
        backoff: BackoffOption,
        timeout: float | None,
        lease: float | None,
        ordered: bool,
    ) -> None:
        # The group handles raw events and batches alike, so it needs no
        # event signature of Consumer's; only the policy is shared.
        self.app = app
        self.func = func
        self.name = check_name("digest", name)
        self.topic = check_name("topic", topic)
        self.group = self.name
        self.__name__ = getattr(func, "__name__", name)
        self.__doc__ = func.__doc__
        self.__wrapped__ = func
        if (
            not isinstance(max_events, int)
            or isinstance(max_events, bool)
            or max_events < 1
        ):
            raise ConfigurationError(
                f"digest {name!r}: max_events must be a whole number >= 1"
            )
        self.max_events = max_events
        self._read_signature(func)
        self.key_option = self._check_key(key)
        self._init_policy(
            retries=retries,
            backoff=backoff,
            timeout=timeout,
            lease=lease,
            ordered=ordered,
        )
        # The runner builds a Context only for handlers that name one;
        # collecting needs it whether or not the function takes it.
        self.context_param = self.user_context_param or "ctx"
        self.schedule = DigestSchedule(
            self, cron, catchup=catchup, max_catchup=max_catchup
        )

    def __repr__(self) -> str:
        return f"<Digest {self.name} topic={self.topic} {self.schedule.cron!r}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    # -- registration --------------------------------------------------------

    def _read_signature(self, func: Callable[..., Any]) -> None:
        what = f"digest {self.name!r}"
        try:
            hints = typing.get_type_hints(func, include_extras=True)
        except Exception as exc:
            raise ConfigurationError(
                f"{what}: cannot resolve its annotations ({exc})"
            ) from exc
        params = list(inspect.signature(func).parameters.values())
        self.user_context_param = next(
            (p.name for p in params if _is_context(hints.get(p.name))), None
        )
        values = [p for p in params if not _is_context(hints.get(p.name))]
        if len(values) != 2:
            raise ConfigurationError(
                f"{what}: the handler takes (key, events), plus optionally a "
                "parameter annotated Context"
            )
        self.key_param, self.events_param = values[0].name, values[1].name
        annotation = hints.get(self.events_param, list[Any])
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin not in (list, collections.abc.Sequence) or len(args) != 1:
            raise ConfigurationError(
                f"{what}: annotate {self.events_param!r} as list[EventType] "
                f"(for example list[Notification]), not {annotation!r}"
            )
        try:
            self.event_type: Any = args[0]
            self._event = pydantic.TypeAdapter(args[0])
            self._events = pydantic.TypeAdapter(list[args[0]])  # type: ignore[valid-type]
            self._key = pydantic.TypeAdapter(hints.get(self.key_param, str))
        except Exception as exc:
            raise ConfigurationError(
                f"{what}: its annotations cannot be validated with pydantic ({exc})"
            ) from exc

    def _check_key(self, key: DigestKeyOption) -> DigestKeyOption:
        what = f"digest {self.name!r}"
        if callable(key):
            return key
        if not isinstance(key, str) or not key:
            raise ConfigurationError(
                f"{what}: key must name a field of the event or be a callable"
            )
        fields = getattr(self.event_type, "model_fields", None)
        if isinstance(fields, Mapping) and key not in fields:
            raise ConfigurationError(
                f"{what}: key={key!r} is no field of "
                f"{self.event_type.__name__}; use one of {list(fields)}"
            )
        return key

    # -- decoding --------------------------------------------------------------

    def decode(self, payload: bytes) -> _Event | _Batch:
        if payload.startswith(BATCH_PREFIX):
            return self._decode_batch(payload)
        try:
            event = self._event.validate_json(payload)
        except pydantic.ValidationError as exc:
            raise ValidationError(
                self.name, _error_list(exc), subject=f"event for digest {self.name!r}"
            ) from None
        key = self.key_of(event)
        if key is None:
            raise ValidationError(
                self.name,
                [{"loc": (), "msg": "the event has no digest key", "type": "no_key"}],
                subject=f"event for digest {self.name!r}",
            )
        return _Event(key_bytes(key).decode("utf-8", "replace"), payload)

    def key_of(self, event: Any) -> Any:
        """The digest key of a validated event."""
        if callable(self.key_option):
            return self.key_option(event)
        if isinstance(event, Mapping):
            return event.get(self.key_option)
        return getattr(event, self.key_option, None)

    def _decode_batch(self, payload: bytes) -> _Batch:
        try:
            body = json.loads(payload[len(BATCH_PREFIX) :])
            return _Batch(
                int(body["tick"]), str(body["key"]), str(body["batch"]), body["events"]
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValidationError(
                self.name,
                [{"loc": (), "msg": f"not a digest batch: {exc}", "type": "batch"}],
                subject=f"batch of digest {self.name!r}",
            ) from None

    # -- running -----------------------------------------------------------------

    def call(self, decoded: Any, context: Context) -> Any:
        if isinstance(decoded, _Event):
            if self.is_async:
                return self._collect_async(decoded, context)
            return self._collect(decoded, context)
        if self.is_async:
            return self._run_async(decoded, context)
        key, events, kwargs = self._arguments(decoded, context)
        try:
            self.func(key, events, **kwargs)
        except BaseException:
            self._failed(decoded, context)
            raise
        self._done(decoded, context)

    async def _run_async(self, batch: _Batch, context: Context) -> None:
        key, events, kwargs = self._arguments(batch, context)
        try:
            await self.func(key, events, **kwargs)
        except BaseException:
            self._failed(batch, context)
            raise
        self._done(batch, context)

    def _arguments(
        self, batch: _Batch, context: Context
    ) -> tuple[Any, list[Any], dict[str, Any]]:
        try:
            key = self._key.validate_python(batch.key)
            events = self._events.validate_python(batch.events)
        except pydantic.ValidationError as exc:
            # The events passed validation when collected; failing now
            # means the event type changed. The batch fails like any run,
            # so it ends in the dead letters with its events.
            self._failed(batch, context)
            raise ValidationError(
                self.name, _error_list(exc), subject=f"batch of digest {self.name!r}"
            ) from None
        kwargs = {self.user_context_param: context} if self.user_context_param else {}
        return key, events, kwargs

    def abandon(self, partition: int, fields: dict[bytes, bytes]) -> None:
        # A batch whose last attempt died with its worker goes to the dead
        # letters without running: its events leave the digest now.
        payload = fields.get(wire.PAYLOAD, b"")
        if not payload.startswith(BATCH_PREFIX):
            return
        try:
            self._remove(self._decode_batch(payload), partition)
        except Exception:
            log.exception(
                "Could not remove the events of a dead batch of %s.", self.name
            )

    def _failed(self, batch: _Batch, context: Context) -> None:
        # After the last attempt the runner dead-letters the entry, which
        # carries the events; they leave the digest now.
        if context.attempt >= context.max_attempts:
            self._done(batch, context)

    def _done(self, batch: _Batch, context: Context) -> None:
        self._remove(batch, context.partition)

    def _remove(self, batch: _Batch, partition: int) -> None:
        pk = self.app.keys.partition(self.topic, partition)
        for attempt in range(1, _DONE_ATTEMPTS + 1):
            try:
                self.app.scripts.digest_done(
                    pk, pk.digest(self.name), self.group, batch.batch
                )
                return
            except CONNECTION_ERRORS as exc:
                # The handler ran; failing now would run it again. Wait a
                # little for Redis instead, then leave the events sealed.
                if attempt == _DONE_ATTEMPTS:
                    log.error(
                        "Could not remove the events of finished batch %s of "
                        "digest %s (key %r): %s; they stay in Redis, sealed.",
                        batch.batch,
                        self.name,
                        batch.key,
                        exc,
                    )
                    return
                time.sleep(0.2 * attempt)

    async def _collect_async(self, event: _Event, context: Context) -> None:
        self._collect(event, context)

    def _collect(self, event: _Event, context: Context) -> None:
        app = self.app
        home = partition_for(event.key, app.partitions(self.topic))
        if home != context.partition:
            self._forward(event, home, context)
            return
        pk = app.keys.partition(self.topic, home)
        result = app.scripts.digest_collect(
            pk,
            pk.digest(self.name),
            self.group,
            context.entry_id,
            context.worker,
            context.message_id,
            int(app.clock.now() * 1000),
            event.key,
            event.payload,
        )
        if result < 0:
            log.debug(
                "Not collecting %s for digest %s: another worker took it over.",
                context.message_id,
                self.name,
            )

    def _forward(self, event: _Event, home: int, context: Context) -> None:
        """Move an event to the partition of its digest key.

        The copy is written before the original is acknowledged, so a crash
        in between writes it twice; collecting recognises the second copy
        while the first is still in the digest.
        """
        pk = self.app.keys.partition(self.topic, home)
        fields = {
            wire.PAYLOAD: event.payload,
            wire.KEY: event.key.encode(),
            wire.GROUP: self.group.encode(),
            wire.ORIGIN: context.message_id.encode(),
        }
        self.app.redis.xadd(pk.stream, fields)  # type: ignore[arg-type]
        log.debug(
            "Moved %s to partition %d of %s, the partition of digest key %r.",
            context.message_id,
            home,
            self.topic,
            event.key,
        )


def close(
    app: TaskQ,
    scripts: Scripts,
    digest: Digest,
    tick_ms: int,
    missed: int,
    *,
    budget: int,
    renew: Callable[[], object],
) -> tuple[int, int]:
    """Close the window of ``tick_ms`` in every partition; returns the
    batches written and the events they hold (0, 0 if it was closed)."""
    batches = events = 0
    for partition in range(app.partitions(digest.topic)):
        pk = app.keys.partition(digest.topic, partition)
        dk = pk.digest(digest.name)
        while True:
            done, written, moved = scripts.digest_seal(
                pk,
                dk,
                tick_ms=tick_ms,
                max_events=digest.max_events,
                budget=max(budget, digest.max_events),
                group=digest.group,
                missed=missed,
                prefix=BATCH_PREFIX,
            )
            batches += written
            events += moved
            if done:
                break
            renew()
    return batches, events


def window_sizes(app: TaskQ, digest: Digest) -> tuple[int, int]:
    """Events in the open window, and events sealed in unfinished batches."""
    pipe = app.redis.pipeline(transaction=False)
    count = app.partitions(digest.topic)
    for partition in range(count):
        dk = app.keys.partition(digest.topic, partition).digest(digest.name)
        pipe.zcard(dk.open)
        pipe.zcard(dk.sealed)
    sizes = pipe.execute()
    return sum(sizes[0::2]), sum(sizes[1::2])
