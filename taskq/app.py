"""The application object: configuration, registry and the Redis client."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, overload

from redis import Redis
from redis.exceptions import ResponseError

from taskq import defaults
from taskq.clock import Clock, SystemClock
from taskq.connection import connect, redact, translate_errors
from taskq.cron import Cron
from taskq.digest import Digest, DigestKeyOption
from taskq.errors import ConfigurationError, TopicMismatchError, WrongKeyType
from taskq.handlers import Consumer, Handler, KeyOption, Task
from taskq.keys import Keys, check_name
from taskq.partitioning import RoundRobin
from taskq.producer import Producer
from taskq.retry import BackoffOption
from taskq.schedules import Catchup, Periodic, Schedule
from taskq.scripts import Scripts

log = logging.getLogger("taskq.app")

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class TopicConfig:
    """A topic as declared in code with :meth:`TaskQ.topic`."""

    name: str
    partitions: int | None
    #: Most entries one partition may hold; ``send`` raises QueueFull past it.
    max_len: int | None
    #: Entries younger than this (s) are kept even when every group is done
    #: with them, for replays and group resets.
    retention_s: float | None = None


class TaskQ:
    """A taskq application: the tasks, consumers and schedules of a service.

    ``url`` is the Redis to use; without it, the ``TASKQ_URL`` environment
    variable, then ``redis://localhost:6379/0``. ``memory://`` runs an
    in-process Redis, for demos and tests. Every key taskq writes starts
    with ``namespace``. ``clock`` is what schedules and digests read the
    time from (default: the system clock); tests pass a
    :class:`taskq.clock.ManualClock`.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        namespace: str = defaults.NAMESPACE,
        partitions: int = defaults.PARTITIONS,
        task_group: str = defaults.TASK_GROUP,
        default_topic: str = defaults.TASK_TOPIC,
        max_payload_bytes: int = defaults.MAX_PAYLOAD_BYTES,
        dead_letter_max_len: int = 0,
        socket_timeout: float = defaults.SOCKET_TIMEOUT_S,
        clock: Clock | None = None,
    ) -> None:
        self.url = url or os.environ.get(defaults.URL_ENV) or defaults.REDIS_URL
        self.keys = Keys(namespace)
        if not isinstance(partitions, int) or partitions < 1:
            raise ConfigurationError("partitions must be a whole number >= 1")
        self.default_partitions = partitions
        self.task_group = check_name("group", task_group)
        self.default_topic = check_name("topic", default_topic)
        self.max_payload_bytes = max_payload_bytes
        #: Dead letters kept per partition (0: all of them).
        self.dead_letter_max_len = dead_letter_max_len
        #: Longest wait for a reply from Redis, in seconds; a producer facing
        #: a dead server fails after about twice this.
        self.socket_timeout = socket_timeout
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.consumers: dict[tuple[str, str], Consumer] = {}
        self.topics: dict[str, TopicConfig] = {}
        #: Periodic jobs and digests by name.
        self.schedules: dict[str, Schedule] = {}
        self.clock: Clock = clock or SystemClock()
        #: topic -> (partition count, when it was read: monotonic s).
        self._partitions: dict[str, tuple[int, float]] = {}
        self._round_robins: dict[str, RoundRobin] = {}
        self._client: Redis | None = None
        self._scripts: Scripts | None = None
        self._lock = threading.Lock()
        self._producer = Producer(self)

    def __repr__(self) -> str:
        return f"<TaskQ {redact(self.url)} namespace={self.keys.namespace}>"

    # -- connection --------------------------------------------------------------

    @property
    def redis(self) -> Redis:
        """The app's Redis client (created on first use)."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = connect(self.url, socket_timeout=self.socket_timeout)
                client = self._client
        return client

    @property
    def scripts(self) -> Scripts:
        scripts = self._scripts
        if scripts is None:
            with self._lock:
                if self._scripts is None:
                    self._scripts = Scripts(self.redis)
                scripts = self._scripts
        return scripts

    def new_client(self, name: str | None = None, extra_timeout: float = 0.0) -> Redis:
        """A client with a connection pool of its own (workers use these).

        ``name`` is the connections' client name, shown by CLIENT LIST;
        ``extra_timeout`` (s) is added to the socket timeout, for clients
        that block in Redis.
        """
        return connect(
            self.url,
            client_name=name,
            socket_timeout=self.socket_timeout + extra_timeout,
        )

    def ping(self) -> None:
        """Check that Redis answers; raises taskq.ConnectionError if not."""
        with translate_errors(self.url):
            self.redis.ping()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    # -- topics --------------------------------------------------------------------

    def topic(
        self,
        name: str,
        partitions: int | None = None,
        *,
        max_len: int | None = None,
        retention: float | None = None,
    ) -> TopicConfig:
        """Declare a topic: its partition count, an optional length cap,
        and how long handled entries are kept.

        The partition count is stored in Redis the first time the topic is
        used; a process that declares another count for it gets
        :class:`TopicMismatchError`. Workers trim each partition up to the
        oldest entry some group still needs; with ``retention`` (seconds)
        they also keep everything younger than that, so a group can be
        reset or replayed over that time (``taskq groups``).
        """
        check_name("topic", name)
        if partitions is not None and (
            not isinstance(partitions, int) or partitions < 1
        ):
            raise ConfigurationError(f"topic {name!r}: partitions must be >= 1")
        if max_len is not None and (not isinstance(max_len, int) or max_len < 1):
            raise ConfigurationError(f"topic {name!r}: max_len must be >= 1")
        if retention is not None and (
            isinstance(retention, bool)
            or not isinstance(retention, (int, float))
            or retention <= 0
        ):
            raise ConfigurationError(f"topic {name!r}: retention must be seconds > 0")
        config = TopicConfig(name, partitions, max_len, retention)
        self.topics[name] = config
        self._partitions.pop(name, None)
        return config

    def partitions(self, topic: str) -> int:
        """The partition count of ``topic``, as stored in Redis.

        The count is read again every ``defaults.PARTITIONS_REFRESH_S``, so a
        long-running producer follows a change made with ``taskq topics
        create --force`` within that time.
        """
        cached = self._partitions.get(topic)
        now = time.monotonic()
        if cached is not None and now - cached[1] < defaults.PARTITIONS_REFRESH_S:
            return cached[0]
        declared = self.topics.get(topic)
        wanted = declared.partitions if declared and declared.partitions else None
        with translate_errors(self.url):
            pipe = self.redis.pipeline(transaction=False)
            pipe.hsetnx(self.keys.topics, topic, wanted or self.default_partitions)
            pipe.hget(self.keys.topics, topic)
            try:
                created, stored = pipe.execute()
            except ResponseError as exc:
                if "WRONGTYPE" not in str(exc):
                    raise
                kind = self.redis.type(self.keys.topics)
                raise WrongKeyType(
                    self.keys.topics,
                    kind.decode() if isinstance(kind, bytes) else str(kind),
                    "hash",
                ) from None
        count = int(stored)
        if created:
            log.info("Topic %r created with %d partitions.", topic, count)
        if cached is not None:
            if count != cached[0]:
                log.warning(
                    "Topic %r now has %d partitions (was %d); new messages use "
                    "the new count.",
                    topic,
                    count,
                    cached[0],
                )
        elif wanted is not None and wanted != count:
            raise TopicMismatchError(
                f"topic {topic!r} has {count} partitions in Redis but is declared "
                f"with {wanted} here; declare it with partitions={count}, or "
                "change the stored count on purpose with "
                f"'taskq topics create APP {topic} --partitions {wanted} --force'"
            )
        self._partitions[topic] = (count, now)
        return count

    def max_len(self, topic: str) -> int | None:
        config = self.topics.get(topic)
        return config.max_len if config else None

    def _round_robin(self, topic: str) -> RoundRobin:
        rr = self._round_robins.get(topic)
        if rr is None:
            rr = self._round_robins.setdefault(topic, RoundRobin())
        return rr

    def forget_partitions(self) -> None:
        """Drop cached partition counts (after the stored ones changed)."""
        self._partitions.clear()

    # -- registration ----------------------------------------------------------------

    @overload
    def task(self, func: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        topic: str | None = None,
        key: KeyOption = None,
        retries: int = defaults.RETRIES,
        backoff: BackoffOption = None,
        timeout: float | None = None,
        lease: float | None = None,
        ordered: bool = False,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        func: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        topic: str | None = None,
        key: KeyOption = None,
        retries: int = defaults.RETRIES,
        backoff: BackoffOption = None,
        timeout: float | None = None,
        lease: float | None = None,
        ordered: bool = False,
    ) -> Any:
        """Register a task: ``@app.task`` or ``@app.task(topic=..., ...)``.

        The task is named after the function unless ``name`` is given;
        names are unique within an app.

        ``key`` names the argument whose value is the message key (or is a
        callable of the arguments); ``retries`` is how many times a failing
        run is tried again, ``backoff`` how long it waits in between;
        ``timeout`` limits one run, in seconds; ``lease`` is how long the
        worker may go silent before another takes the message over;
        ``ordered`` runs the messages of one key one at a time, in order.
        """

        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            if not callable(f):
                raise ConfigurationError("@app.task decorates a function")
            task_name = name or f.__name__
            check_name("task", task_name)
            if task_name in self.tasks:
                raise ConfigurationError(
                    f"a task named {task_name!r} is registered already; task "
                    "names must be unique: pass name=... to one of them"
                )
            task = Task(
                self,
                f,
                name=task_name,
                topic=topic or self.default_topic,
                key=key,
                retries=retries,
                backoff=backoff,
                timeout=timeout,
                lease=lease,
                ordered=ordered,
            )
            self.tasks[task_name] = task
            return task

        if func is not None:
            return register(func)
        return register

    def consumer(
        self,
        topic: str,
        *,
        group: str | None = None,
        retries: int = defaults.RETRIES,
        backoff: BackoffOption = None,
        timeout: float | None = None,
        lease: float | None = None,
        ordered: bool = False,
    ) -> Callable[[Callable[..., Any]], Consumer]:
        """Register a handler of ``topic``'s raw events in consumer ``group``.

        Every group receives every event of the topic (fan-out); within a
        group, each event is handled once. ``group`` defaults to the
        function's name.
        """
        if callable(topic):
            raise ConfigurationError(
                "@app.consumer needs the topic: @app.consumer('signups', group=...)"
            )

        def register(f: Callable[..., Any]) -> Consumer:
            group_name = group or f.__name__
            if group_name == self.task_group:
                raise ConfigurationError(
                    f"group {group_name!r} is the task group of this app; "
                    "choose another group name for the consumer"
                )
            handler = Consumer(
                f,
                topic=topic,
                group=group_name,
                retries=retries,
                backoff=backoff,
                timeout=timeout,
                lease=lease,
                ordered=ordered,
            )
            if (topic, group_name) in self.consumers:
                raise ConfigurationError(
                    f"group {group_name!r} of topic {topic!r} has a consumer "
                    "already; each group has one handler per topic"
                )
            self.consumers[(topic, group_name)] = handler
            return handler

        return register

    def periodic(
        self,
        cron: str,
        *,
        tz: str | None = None,
        catchup: Catchup = "latest",
        max_catchup: int = defaults.MAX_CATCHUP,
        name: str | None = None,
        topic: str | None = None,
        retries: int = defaults.RETRIES,
        backoff: BackoffOption = None,
        timeout: float | None = None,
        lease: float | None = None,
    ) -> Callable[[Callable[P, R]], Task[P, R]]:
        """Register a periodic job: a task a scheduler sends at every tick
        of ``cron`` (5 fields, or 6 with seconds first) in time zone
        ``tz`` (an IANA name; default UTC).

        ``catchup`` says what runs of the ticks missed while no scheduler
        ran: ``latest`` (the newest of them, once; ``Context.missed`` says
        how many it stands for), ``all`` (each, up to ``max_catchup``) or
        ``skip``. The other options are those of :meth:`task`.
        """
        if callable(cron):
            raise ConfigurationError(
                "@app.periodic needs a cron expression: @app.periodic('0 * * * *')"
            )
        schedule_cron = Cron(cron, tz)

        def register(f: Callable[P, R]) -> Task[P, R]:
            job_name: str = name or str(getattr(f, "__name__", ""))
            check_name("periodic job", job_name)
            if job_name in self.schedules:
                raise ConfigurationError(
                    f"a periodic job or digest named {job_name!r} exists already"
                )
            task = self.task(
                name=job_name,
                topic=topic,
                key=lambda arguments: job_name,
                retries=retries,
                backoff=backoff,
                timeout=timeout,
                lease=lease,
            )(f)
            try:
                job = Periodic(
                    task, schedule_cron, catchup=catchup, max_catchup=max_catchup
                )
            except ConfigurationError:
                del self.tasks[job_name]
                raise
            task.schedule = job
            self.schedules[job_name] = job
            return task

        return register

    def digest(
        self,
        topic: str,
        *,
        key: DigestKeyOption,
        cron: str,
        tz: str | None = None,
        catchup: Catchup = "latest",
        max_catchup: int = defaults.MAX_CATCHUP,
        max_events: int = defaults.DIGEST_MAX_EVENTS,
        name: str | None = None,
        retries: int = defaults.RETRIES,
        backoff: BackoffOption = None,
        timeout: float | None = None,
        lease: float | None = None,
        ordered: bool = False,
    ) -> Callable[[Callable[..., Any]], Digest]:
        """Register a digest of ``topic``'s events, grouped by ``key`` (a
        field of the event, or a callable of it).

        The handler takes ``(key, events)``, with ``events`` annotated as
        ``list[EventType]``, plus optionally a Context. At each tick of
        ``cron`` in ``tz``, it is called once for each key that has events
        collected since the previous tick, with at most ``max_events`` of
        them per call. ``catchup`` is as for :meth:`periodic`; the events
        of a tick that is not run stay for the next one. The digest is a
        consumer group of the topic named after the function (or
        ``name``), which workers serve; the other options are those of
        :meth:`consumer`. The events of one call are in the order they were
        published (publish them with the digest key as their message key).
        """
        if callable(topic):
            raise ConfigurationError(
                "@app.digest needs the topic: @app.digest('events', key=..., cron=...)"
            )
        check_name("topic", topic)
        schedule_cron = Cron(cron, tz)

        def register(f: Callable[..., Any]) -> Digest:
            digest_name: str = name or str(getattr(f, "__name__", ""))
            check_name("digest", digest_name)
            if digest_name in self.schedules:
                raise ConfigurationError(
                    f"a periodic job or digest named {digest_name!r} exists already"
                )
            if digest_name == self.task_group or (topic, digest_name) in self.consumers:
                raise ConfigurationError(
                    f"digest {digest_name!r}: topic {topic!r} has a consumer group "
                    "of that name already; pass name=... to the digest"
                )
            handler = Digest(
                self,
                f,
                name=digest_name,
                topic=topic,
                key=key,
                cron=schedule_cron,
                catchup=catchup,
                max_catchup=max_catchup,
                max_events=max_events,
                retries=retries,
                backoff=backoff,
                timeout=timeout,
                lease=lease,
                ordered=ordered,
            )
            self.consumers[(topic, digest_name)] = handler
            self.schedules[digest_name] = handler.schedule
            return handler

        return register

    # -- producing -------------------------------------------------------------------

    def publish(self, topic: str, event: Any, *, key: Any = None) -> str:
        """Write a raw event to ``topic``; returns its message id.

        Every consumer group of the topic receives it.
        """
        check_name("topic", topic)
        carriers = [t.name for t in self.tasks.values() if t.topic == topic]
        if carriers:
            # The task group would dead-letter the event (it names no task),
            # and every consumer of the topic would see the tasks.
            raise ConfigurationError(
                f"topic {topic!r} carries tasks ({', '.join(sorted(carriers))}); "
                "publish events to a topic of their own"
            )
        return self._producer.publish(topic, event, key)

    # -- what a worker serves -------------------------------------------------------

    def subscriptions(self) -> dict[tuple[str, str], list[Handler]]:
        """(topic, group) -> the handlers a worker runs for it."""
        subs: dict[tuple[str, str], list[Handler]] = {}
        for task in self.tasks.values():
            subs.setdefault((task.topic, task.group), []).append(task)
        for (topic, group), consumer in self.consumers.items():
            subs.setdefault((topic, group), []).append(consumer)
        return subs
