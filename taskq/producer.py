"""Writing messages: tasks, raw events, delayed messages, batches.

Everything a producer writes is checked first (arguments against the
task's annotations, payload size, the send options), so a bad call raises
before anything reaches Redis.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from itertools import chain
from typing import TYPE_CHECKING, Any, cast

import redis

from taskq import message as wire
from taskq.connection import (
    CONNECTION_ERRORS,
    is_memory,
    translate_errors,
    unreachable,
)
from taskq.errors import PayloadTooLarge, QueueFull, ValidationError, WrongKeyType
from taskq.keys import PartitionKeys
from taskq.partitioning import key_bytes, partition_for
from taskq.scripts import pack_message
from taskq.signature import encode_event

if TYPE_CHECKING:
    from taskq.app import TaskQ
    from taskq.handlers import SendOptions, Task

#: Messages written per pipeline by ``send_many``.
BATCH_SIZE = 1000


class Outgoing:
    """A checked message, ready to be written."""

    __slots__ = ("fields", "options", "pk")

    def __init__(
        self, pk: PartitionKeys, fields: dict[bytes, bytes], options: SendOptions | None
    ) -> None:
        self.pk = pk
        self.fields = fields
        self.options = options

    @property
    def delayed(self) -> bool:
        return self.options is not None and self.options.delayed

    @property
    def wait_s(self) -> float:
        return self.options.wait_s if self.options is not None else 0.0


class Producer:
    def __init__(self, app: TaskQ) -> None:
        self.app = app

    # -- building --------------------------------------------------------------

    def _task_message(
        self,
        task: Task[Any, Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        options: SendOptions,
    ) -> Outgoing:
        signature = task.signature
        model = signature.validate(signature.bind(args, kwargs))
        payload = signature.dump(model)
        self._check_size(task.name, payload)
        key = options.key
        if key is None and task.key is not None:
            key = task.message_key(signature.arguments(model))
        fields = {wire.TASK: task.name.encode(), wire.PAYLOAD: payload}
        return self._route(task.topic, key, fields, options)

    def _route(
        self,
        topic: str,
        key: Any,
        fields: dict[bytes, bytes],
        options: SendOptions | None,
    ) -> Outgoing:
        partitions = self.app.partitions(topic)
        if key is None:
            partition = self.app._round_robin(topic).next(partitions)
        else:
            raw = key_bytes(key)
            fields[wire.KEY] = raw
            partition = partition_for(raw, partitions)
        pk = self.app.keys.partition(topic, partition)
        return Outgoing(pk, fields, options)

    def _check_size(self, name: str, payload: bytes) -> None:
        limit = self.app.max_payload_bytes
        if len(payload) > limit:
            raise PayloadTooLarge(name, len(payload), limit)

    # -- writing ---------------------------------------------------------------

    def send_task(
        self,
        task: Task[Any, Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        options: SendOptions,
    ) -> str:
        topic = task.topic
        if options.delayed or self.app.max_len(topic):
            out = self._task_message(task, args, kwargs, options)
            try:
                return self._write(out)[0]
            except CONNECTION_ERRORS as exc:
                raise unreachable(self.app.url, exc) from exc
        # The usual send: the steps of _task_message() and _write()
        # without the message object in between, and try/except rather than
        # translate_errors(). On loopback each of those costs a few percent
        # of a send.
        signature = task.signature
        model = signature.validate(signature.bind(args, kwargs))
        payload = signature.dump(model)
        self._check_size(task.name, payload)
        key = options.key
        if key is None and task.key is not None:
            key = task.message_key(signature.arguments(model))
        partitions = self.app.partitions(topic)
        name = task.name.encode()
        command = ["XADD", "", "*", wire.TASK, name, wire.PAYLOAD, payload]
        if key is None:
            partition = self.app._round_robin(topic).next(partitions)
        else:
            raw = key_bytes(key)
            partition = partition_for(raw, partitions)
            command += (wire.KEY, raw)
        stream = command[1] = self.app.keys.partition(topic, partition).stream
        try:
            entry_id = self.app.redis.execute_command(*command)  # type: ignore[no-untyped-call]
        except CONNECTION_ERRORS as exc:
            raise unreachable(self.app.url, exc) from exc
        except redis.ResponseError as exc:
            self._refused(exc, [(stream, "stream")])
            raise
        return wire.message_id(topic, partition, entry_id)

    def send_many(
        self,
        task: Task[Any, Any],
        items: Iterable[Mapping[str, Any] | tuple[Any, ...]],
        options: SendOptions,
    ) -> list[str]:
        payloads, keys = self._payloads(task, items, options)
        with translate_errors(self.app.url):
            if not options.delayed and not self.app.max_len(task.topic):
                return self._append_many(task, payloads, keys)
            batch = self._route_many(task, payloads, keys, options)
            ids: list[str] = []
            for start in range(0, len(batch), BATCH_SIZE):
                try:
                    ids.extend(self._write(*batch[start : start + BATCH_SIZE]))
                except QueueFull as exc:
                    exc.sent = ids + exc.sent
                    raise
            return ids

    def _payloads(
        self,
        task: Task[Any, Any],
        items: Iterable[Mapping[str, Any] | tuple[Any, ...]],
        options: SendOptions,
    ) -> tuple[list[bytes], list[Any] | None]:
        """Check every item: its payload and, if the task has keys, its key.

        The same steps as :meth:`_task_message`; everything that is the same
        for every item is looked up once per batch, as per-item lookups cost
        as much as the validation itself.
        """
        signature = task.signature
        names = signature.names
        bind, validate, dump = signature.bind, signature.validate, signature.dump
        limit = self.app.max_payload_bytes
        keyed = options.key is not None or task.key is not None
        payloads: list[bytes] = []
        keys: list[Any] = []
        for index, item in enumerate(items):
            try:
                if isinstance(item, (tuple, list)):
                    if len(item) <= len(names):
                        arguments = dict(zip(names, item, strict=False))
                    else:
                        arguments = bind(tuple(item), {})  # raises: too many
                    model = validate(arguments)
                elif isinstance(item, Mapping):
                    model = validate(bind((), item))
                else:
                    raise ValidationError(
                        task.name,
                        [
                            {
                                "loc": (),
                                "msg": "each item must be a dict of keyword "
                                f"arguments or a tuple, not {type(item).__name__}",
                                "type": "item_type",
                            }
                        ],
                    )
            except ValidationError as exc:
                exc.args = (f"item {index}: {exc}",)
                raise
            payload = dump(model)
            if len(payload) > limit:
                raise PayloadTooLarge(task.name, len(payload), limit)
            payloads.append(payload)
            if keyed:
                key = options.key
                if key is None:
                    key = task.message_key(signature.arguments(model))
                keys.append(key)
        return payloads, keys if keyed else None

    def _spread(
        self, topic: str, count: int, keys: list[Any] | None
    ) -> tuple[list[int], list[bytes | None] | None]:
        """The partition of each message of a batch, and its key as stored."""
        partitions = self.app.partitions(topic)
        round_robin = self.app._round_robin(topic)
        if keys is None:
            first = round_robin.take(count, partitions)
            return [(first + n) % partitions for n in range(count)], None
        chosen: list[int] = []
        raws: list[bytes | None] = []
        for key in keys:
            if key is None:
                chosen.append(round_robin.next(partitions))
                raws.append(None)
            else:
                raw = key_bytes(key)
                chosen.append(partition_for(raw, partitions))
                raws.append(raw)
        return chosen, raws

    def _append_many(
        self, task: Task[Any, Any], payloads: list[bytes], keys: list[Any] | None
    ) -> list[str]:
        """XADD checked payloads, one pipeline per BATCH_SIZE messages.

        The commands are written directly: redis-py's xadd() re-checks and
        rebuilds its arguments, which costs more than the validation.
        """
        topic = task.topic
        chosen, raws = self._spread(topic, len(payloads), keys)
        count = self.app.partitions(topic)
        streams = [self.app.keys.partition(topic, p).stream for p in range(count)]
        # Message ids are "TOPIC:PARTITION:" + the entry id.
        prefixes = [wire.message_id(topic, p, "") for p in range(count)]
        name = task.name.encode()
        TASK, PAYLOAD, KEY = wire.TASK, wire.PAYLOAD, wire.KEY
        ids: list[str] = []
        send = self._sender()
        for start in range(0, len(payloads), BATCH_SIZE):
            end = start + BATCH_SIZE
            targets = chosen[start:end]
            commands: list[tuple[Any, ...]] = []
            add = commands.append
            if raws is None:
                for p, payload in zip(targets, payloads[start:end], strict=True):
                    add(("XADD", streams[p], "*", TASK, name, PAYLOAD, payload))
            else:
                for p, payload, raw in zip(
                    targets, payloads[start:end], raws[start:end], strict=True
                ):
                    if raw is None:
                        add(("XADD", streams[p], "*", TASK, name, PAYLOAD, payload))
                    else:
                        add(
                            (
                                "XADD",
                                streams[p],
                                "*",
                                TASK,
                                name,
                                PAYLOAD,
                                payload,
                                KEY,
                                raw,
                            )
                        )
            results = send(commands)
            for result in results:
                if isinstance(result, redis.ResponseError):
                    # The other messages of the batch went in: say which.
                    written = [
                        prefixes[p] + r.decode()
                        for p, r in zip(targets, results, strict=True)
                        if not isinstance(r, Exception)
                    ]
                    try:
                        self._refused(result, [(streams[p], "stream") for p in targets])
                    except WrongKeyType as refused:
                        refused.sent = ids + written
                        raise
                    raise result
            ids.extend(
                [
                    prefixes[p] + r.decode()
                    for p, r in zip(targets, results, strict=True)
                ]
            )
        return ids

    def _sender(self) -> Any:
        """How a batch of commands is sent: on a plain Redis client, written
        on one connection and the replies read back, which is what a
        pipeline does without its bookkeeping per command (a third of the
        cost of a batched send); on a cluster or ``memory://``, a pipeline."""
        client = self.app.redis
        if is_memory(self.app.url) or not isinstance(client, redis.Redis):
            return lambda commands: _pipelined(client, commands)
        return lambda commands: _on_one_connection(client, commands)

    def _route_many(
        self,
        task: Task[Any, Any],
        payloads: list[bytes],
        keys: list[Any] | None,
        options: SendOptions,
    ) -> list[Outgoing]:
        topic = task.topic
        chosen, raws = self._spread(topic, len(payloads), keys)
        targets = [
            self.app.keys.partition(topic, p) for p in range(self.app.partitions(topic))
        ]
        name = task.name.encode()
        batch: list[Outgoing] = []
        for n, payload in enumerate(payloads):
            fields = {wire.TASK: name, wire.PAYLOAD: payload}
            raw = raws[n] if raws is not None else None
            if raw is not None:
                fields[wire.KEY] = raw
            batch.append(Outgoing(targets[chosen[n]], fields, options))
        return batch

    def publish(self, topic: str, event: Any, key: Any = None) -> str:
        payload = encode_event(topic, event)
        self._check_size(f"event on {topic}", payload)
        out = self._route(topic, key, {wire.PAYLOAD: payload}, None)
        with translate_errors(self.app.url):
            if self.app.max_len(topic):
                return self._write(out)[0]
            fields = chain.from_iterable(out.fields.items())
            try:
                entry_id = cast(Any, self.app.redis).execute_command(
                    "XADD", out.pk.stream, "*", *fields
                )
            except redis.ResponseError as exc:
                self._refused(exc, [(out.pk.stream, "stream")])
                raise
            return wire.message_id(out.pk.topic, out.pk.partition, entry_id)

    def _write(self, *batch: Outgoing) -> list[str]:
        """Write messages; wait up to their ``wait`` option for room in
        full partitions, then raise QueueFull."""
        ids: list[str | None] = [None] * len(batch)
        todo = list(range(len(batch)))
        deadline = time.monotonic() + (batch[0].wait_s if batch else 0.0)
        pause_s = 0.05
        while True:
            results = self._write_batch([batch[i] for i in todo])
            for i, result in zip(todo, results, strict=True):
                ids[i] = result
            todo = [i for i in todo if ids[i] is None]
            if not todo:
                return [i for i in ids if i is not None]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                full = batch[todo[0]].pk
                raise QueueFull(
                    full.topic,
                    full.partition,
                    self.app.max_len(full.topic) or 0,
                    sent=[i for i in ids if i is not None],
                )
            time.sleep(min(pause_s, remaining))
            pause_s = min(pause_s * 2, 1.0)

    def _write_batch(self, batch: list[Outgoing]) -> list[str | None]:
        """One pipeline; None for each message its full partition refused."""
        pipe = self.app.redis.pipeline(transaction=False)
        command = cast(Any, pipe).execute_command
        refs: list[str | None] = []
        for out in batch:
            if out.delayed:
                refs.append(self._schedule(out, pipe))
                continue
            refs.append(None)
            max_len = self.app.max_len(out.pk.topic)
            if max_len:
                self.app.scripts.append_capped(out.pk, max_len, out.fields, client=pipe)
            else:
                # The command itself: redis-py's xadd() checks and rebuilds
                # its arguments, which costs more than the validation.
                fields = chain.from_iterable(out.fields.items())
                command("XADD", out.pk.stream, "*", *fields)
        try:
            results = self.app.scripts.execute(pipe)
        except redis.ResponseError as exc:
            self._refused(
                exc,
                [
                    (out.pk.delayed, "zset")
                    if out.delayed
                    else (out.pk.stream, "stream")
                    for out in batch
                ],
            )
            raise
        ids: list[str | None] = []
        for out, ref, result in zip(batch, refs, results, strict=True):
            if ref is not None:
                ids.append(ref)
            elif result is None:
                ids.append(None)
            else:
                ids.append(wire.message_id(out.pk.topic, out.pk.partition, result))
        return ids

    def _refused(
        self, error: redis.ResponseError, targets: Iterable[tuple[str, str]]
    ) -> None:
        """Raise WrongKeyType, naming the key, when a write was refused
        because one of ``targets`` (key, type it should have) holds another
        type; return for any other error (the caller re-raises it)."""
        if "WRONGTYPE" not in str(error):
            return
        for key, expected in dict.fromkeys(targets):
            try:
                kind = wire.text(cast(Any, self.app.redis.type(key)))
            except redis.RedisError:
                continue
            if kind not in (expected, "none"):
                raise WrongKeyType(key, kind, expected) from error

    def _schedule(self, out: Outgoing, client: Any) -> str:
        # A delayed message gets its entry id only when it becomes due, so
        # its message id is made up now and travels with it as its origin.
        options = out.options
        assert options is not None
        ref = wire.message_id(
            out.pk.topic, out.pk.partition, "d-" + os.urandom(8).hex()
        )
        out.fields[wire.ORIGIN] = ref.encode()
        packed = pack_message(ref.encode(), out.fields)
        delay_ms = int((options.delay_s or 0) * 1000)
        self.app.scripts.schedule(
            out.pk, packed, due_ms=options.eta_ms, delay_ms=delay_ms, client=client
        )
        return ref


def _pipelined(client: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return list(pipe.execute(raise_on_error=False))


def _on_one_connection(
    client: redis.Redis, commands: list[tuple[Any, ...]]
) -> list[Any]:
    """Send ``commands`` in one write and read every reply: each reply is
    a result or the ResponseError the command met.

    A connection found broken when writing is replaced and the batch sent
    again once (the client's retry policy), as a pipeline does. Once the
    batch is written, nothing is sent again: a lost connection or a
    timeout then raises, since the server may have added the messages.
    """
    pool = client.connection_pool
    connection: Any = pool.get_connection()
    packed = connection.pack_commands(commands)

    def attempt() -> list[Any]:
        connection.send_packed_command(packed)
        results: list[Any] = []
        try:
            for _ in commands:
                try:
                    results.append(connection.read_response())
                except redis.ResponseError as exc:
                    results.append(exc)
        except redis.ConnectionError as exc:
            raise _Written(exc) from exc
        return results

    try:
        return cast(
            list[Any],
            connection.retry.call_with_retry(
                attempt, lambda error: connection.disconnect()
            ),
        )
    except _Written as written:
        connection.disconnect()
        raise written.error from None
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)


class _Written(Exception):
    """A connection error after a batch was written (not to be retried)."""

    def __init__(self, error: redis.ConnectionError) -> None:
        super().__init__(str(error))
        self.error = error
