"""Typed wrappers around the Lua scripts in ``taskq/lua``.

Each script touches the keys of one partition only (see ``keys.py``), so it
runs in one slot of a Redis Cluster. Scripts are registered once per client;
redis-py's ``Script`` calls them by SHA and reloads one that the server
forgot (after a restart or a SCRIPT FLUSH).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any, TypeVar, cast

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from taskq.keys import DigestKeys, PartitionKeys, ScheduleKeys

# A Redis client or a pipeline: both take script calls.
Client = Any

#: Most ids passed to one script call; Lua's unpack() has a stack limit.
MAX_IDS_PER_CALL = 500


def _source(name: str) -> str:
    folder = resources.files("taskq").joinpath("lua")
    # Lua scripts cannot import one another; the shared helpers are put in
    # front of every script instead (unused local functions cost nothing).
    return (
        folder.joinpath("lib.lua").read_text()
        + folder.joinpath(f"{name}.lua").read_text()
    )


def pack_message(tag: bytes, fields: dict[bytes, bytes]) -> bytes:
    """Pack stream fields into one delayed-set member.

    The member is a run of length-prefixed strings, ``<len>:<bytes>``: the
    unique ``tag`` first (two equal messages must stay two members), then
    field, value, field, value. ``move_due.lua`` unpacks it.
    """
    parts = [tag]
    for field, value in fields.items():
        parts.append(field)
        parts.append(value)
    return b"".join(b"%d:%s" % (len(p), p) for p in parts)


def unpack_message(packed: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """The inverse of :func:`pack_message`: ``(tag, fields)``."""
    parts: list[bytes] = []
    pos = 0
    while pos < len(packed):
        colon = packed.index(b":", pos)
        size = int(packed[pos:colon])
        parts.append(packed[colon + 1 : colon + 1 + size])
        pos = colon + 1 + size
    tag, rest = parts[0], parts[1:]
    return tag, dict(zip(rest[::2], rest[1::2], strict=True))


T = TypeVar("T")


def flat(pairs: Iterable[tuple[Any, Any]]) -> list[Any]:
    """``[(a, b), (c, d)]`` as ``[a, b, c, d]``: script arguments."""
    return [item for pair in pairs for item in pair]


def chunks(items: Sequence[T], size: int = MAX_IDS_PER_CALL) -> Iterable[Sequence[T]]:
    """Split ``items`` into runs short enough for one script call."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Scripts:
    """The scripts, registered on one client.

    In a pipeline a script is sent as a plain EVALSHA: redis-py would ask
    SCRIPT EXISTS before every pipeline that holds a script, one more round
    trip each time. Scripts are loaded once instead (:meth:`load`), and
    :meth:`execute` loads them again and resends what failed when the server
    forgot them (a restart, a failover, SCRIPT FLUSH).
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

        def load(name: str) -> Script:
            return client.register_script(_source(name))

        self._retry = load("retry")
        self._dead_letter = load("dead_letter")
        self._schedule = load("schedule")
        self._move_due = load("move_due")
        self._renew = load("renew")
        self._requeue = load("requeue")
        self._reclaim = load("reclaim")
        self._append_capped = load("append_capped")
        self._trim = load("trim")
        self._forget_consumers = load("forget_consumers")
        self._own = load("own")
        self._disown = load("disown")
        self._ack_fenced = load("ack_fenced")
        self._recount = load("recount")
        self._adopt = load("adopt")
        self._schedule_lock = load("schedule_lock")
        self._schedule_commit = load("schedule_commit")
        self._fire_tick = load("fire_tick")
        self._digest_collect = load("digest_collect")
        self._digest_seal = load("digest_seal")
        self._digest_done = load("digest_done")
        self._all = [
            self._schedule_lock,
            self._schedule_commit,
            self._fire_tick,
            self._digest_collect,
            self._digest_seal,
            self._digest_done,
            self._own,
            self._disown,
            self._ack_fenced,
            self._recount,
            self._adopt,
            self._retry,
            self._dead_letter,
            self._schedule,
            self._move_due,
            self._renew,
            self._requeue,
            self._reclaim,
            self._append_capped,
            self._trim,
            self._forget_consumers,
        ]

    def load(self) -> None:
        """Load every script into the server (SCRIPT LOAD)."""
        for script in self._all:
            script.sha = self.client.script_load(script.script)

    def _call(
        self, script: Script, keys: list[Any], args: list[Any], client: Client
    ) -> Any:
        if client is not None and hasattr(client, "command_stack"):
            return cast(Any, client).execute_command(
                "EVALSHA", script.sha, len(keys), *keys, *args
            )
        return script(keys=keys, args=args, client=client)

    def execute(self, pipe: Any, raise_on_error: bool = True) -> list[Any]:
        """Execute a pipeline that may hold script calls."""
        if not isinstance(pipe, redis.client.Pipeline):
            # A cluster pipeline (taskq.cluster) reloads scripts itself.
            return list(pipe.execute(raise_on_error=raise_on_error))
        stack = [(args, options) for args, options in pipe.command_stack]
        results: list[Any] = pipe.execute(raise_on_error=False)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            self.load()
            again = self.client.pipeline(transaction=False)
            for i in missing:
                args, options = stack[i]
                cast(Any, again).execute_command(*args, **options)
            for i, result in zip(
                missing, again.execute(raise_on_error=False), strict=True
            ):
                results[i] = result
        if raise_on_error:
            for result in results:
                if isinstance(result, Exception):
                    raise result
        return results

    def retry(
        self,
        pk: PartitionKeys,
        group: str,
        entry_id: bytes,
        consumer: str,
        delay_ms: int,
        packed: bytes,
        client: Client = None,
    ) -> Any:
        """Schedule another attempt and acknowledge this copy.

        Returns the due time in ms, or None when this consumer no longer
        holds the entry (another took it over, or it was settled).
        """
        return self._call(
            self._retry,
            [pk.stream, pk.delayed],
            [group, entry_id, consumer, max(0, int(delay_ms)), packed],
            client,
        )

    def dead_letter(
        self,
        pk: PartitionKeys,
        group: str,
        entry_id: bytes,
        consumer: str,
        record: dict[bytes, bytes],
        max_len: int,
        client: Client = None,
        owner: str | None = None,
    ) -> bytes | None:
        """Write a dead-letter record and acknowledge; None if lost.

        ``owner`` is the caller's lease ("member|token") of an owned
        partition; the step is then fenced by it.
        """
        args: list[Any] = [
            group,
            entry_id,
            consumer,
            max_len,
            owner or "",
            *flat(record.items()),
        ]
        keys = [pk.stream, pk.dead] + ([pk.owner(group)] if owner else [])
        result = self._call(self._dead_letter, keys, args, client)
        return result or None

    def schedule(
        self,
        pk: PartitionKeys,
        packed: bytes,
        *,
        due_ms: int | None = None,
        delay_ms: int = 0,
        client: Client = None,
    ) -> Any:
        """Add a message to the delayed set; returns the due time in ms."""
        return self._call(
            self._schedule,
            [pk.delayed],
            [-1 if due_ms is None else int(due_ms), max(0, int(delay_ms)), packed],
            client,
        )

    def move_due(
        self,
        pk: PartitionKeys,
        limit: int,
        dead_max_len: int = 0,
        client: Client = None,
    ) -> Any:
        """Move due messages onto the stream: ``[handled, ms_to_next or -1,
        set_aside]``.

        A member that is not a valid message is written to the partition's
        dead-letter stream (kept to ``dead_max_len``, 0: no limit) instead,
        so it cannot stop the others from moving.
        """
        return self._call(
            self._move_due,
            [pk.delayed, pk.stream, pk.dead],
            [limit, int(dead_max_len), pk.topic, pk.partition],
            client,
        )

    def renew(
        self,
        pk: PartitionKeys,
        group: str,
        consumer: str,
        ids: Sequence[bytes],
        client: Client = None,
    ) -> Any:
        """Reset the idle time of held entries; returns ``[lost, gone]``,
        the ids another consumer holds now and those nobody holds."""
        return self._call(self._renew, [pk.stream], [group, consumer, *ids], client)

    def requeue(
        self,
        pk: PartitionKeys,
        group: str,
        consumer: str,
        entries: Sequence[tuple[bytes, bytes]],
        client: Client = None,
    ) -> Any:
        """Append held entries again as new ones and acknowledge the old.

        ``entries`` are ``(entry id, packed message)`` pairs.
        """
        args: list[Any] = [group, consumer, *flat(entries)]
        return self._call(self._requeue, [pk.stream], args, client)

    def trim(
        self, pk: PartitionKeys, retention_ms: int = 0, client: Client = None
    ) -> Any:
        """Remove entries every group is done with (and older than
        ``retention_ms``); returns how many."""
        return self._call(self._trim, [pk.stream], [int(retention_ms)], client)

    def forget_consumers(
        self, pk: PartitionKeys, group: str, idle_ms: int, client: Client = None
    ) -> Any:
        """Remove consumers that hold nothing and were idle for ``idle_ms``."""
        return self._call(
            self._forget_consumers, [pk.stream], [group, int(idle_ms)], client
        )

    def reclaim(
        self,
        pk: PartitionKeys,
        group: str,
        consumer: str,
        lease_ms: int,
        cursor: bytes,
        count: int,
        client: Client = None,
    ) -> Any:
        """Take over entries idle for longer than the lease."""
        return self._call(
            self._reclaim,
            [pk.stream],
            [group, consumer, int(lease_ms), cursor, count],
            client,
        )

    def append_capped(
        self,
        pk: PartitionKeys,
        max_len: int,
        fields: dict[bytes, bytes],
        client: Client = None,
    ) -> Any:
        """XADD unless the partition holds ``max_len`` entries (then None)."""
        args: list[Any] = [max_len, *flat(fields.items())]
        return self._call(self._append_capped, [pk.stream], args, client)

    # -- owned partitions (ordered subscriptions) -------------------------------

    def own(
        self,
        pk: PartitionKeys,
        group: str,
        member: str,
        lease_ms: int,
        token: int = 0,
        client: Client = None,
    ) -> Any:
        """Take a free partition (token 0) or renew its lease.

        Returns ``[token, handed_over]`` or None (see own.lua).
        """
        return self._call(
            self._own,
            [pk.owner(group), pk.fence(group), pk.handover(group)],
            [member, int(lease_ms), token],
            client,
        )

    def disown(
        self,
        pk: PartitionKeys,
        group: str,
        consumer: str,
        owner: str,
        counts: Sequence[tuple[bytes, int]],
        client: Client = None,
    ) -> Any:
        """Give up a partition, first setting the delivery counts of what
        the owner still holds; 1, or 0 when the lease was not the caller's."""
        args: list[Any] = [group, consumer, owner, *flat(counts)]
        return self._call(
            self._disown, [pk.stream, pk.owner(group), pk.handover(group)], args, client
        )

    def ack_fenced(
        self,
        pk: PartitionKeys,
        group: str,
        owner: str,
        ids: Sequence[bytes],
        client: Client = None,
    ) -> Any:
        """XACK if the lease is the caller's: the count acked, or -1."""
        return self._call(
            self._ack_fenced, [pk.stream, pk.owner(group)], [group, owner, *ids], client
        )

    def recount(
        self,
        pk: PartitionKeys,
        group: str,
        consumer: str,
        owner: str,
        counts: Sequence[tuple[bytes, int]],
        client: Client = None,
    ) -> Any:
        """Set delivery counts of entries of an owned partition: 1, or -1
        when the lease is not the caller's."""
        args: list[Any] = [group, consumer, owner, *flat(counts)]
        return self._call(self._recount, [pk.stream, pk.owner(group)], args, client)

    def adopt(
        self,
        pk: PartitionKeys,
        group: str,
        consumer: str,
        owner: str,
        limit: int,
        client: Client = None,
    ) -> Any:
        """Take over entries of an owned partition that other consumers
        hold: ``[[id, fields, deliveries], ...]``, or -1 when the lease is
        not the caller's."""
        return self._call(
            self._adopt,
            [pk.stream, pk.owner(group)],
            [group, consumer, owner, limit],
            client,
        )

    # -- schedules ---------------------------------------------------------

    def schedule_lock(
        self, sk: ScheduleKeys, owner: str, ttl_ms: int, client: Client = None
    ) -> bool:
        """Take or renew a job's lock; False when another scheduler has it."""
        taken = self._call(
            self._schedule_lock, [sk.lock], [owner, max(1, int(ttl_ms))], client
        )
        return bool(taken)

    def schedule_commit(
        self,
        sk: ScheduleKeys,
        owner: str,
        tick_ms: int | None,
        *,
        release: bool = True,
        client: Client = None,
    ) -> int | None:
        """Move a job's last tick forward to ``tick_ms`` (never back) and
        release the owner's lock; returns the recorded last tick."""
        last = self._call(
            self._schedule_commit,
            [sk.last, sk.lock],
            [-1 if tick_ms is None else int(tick_ms), owner, 1 if release else 0],
            client,
        )
        return None if last is None else int(last)

    def fire_tick(
        self,
        pk: PartitionKeys,
        job: str,
        tick_ms: int,
        fields: dict[bytes, bytes],
        client: Client = None,
    ) -> bytes | None:
        """Write a periodic job's run for a tick, once; None if written
        before."""
        args: list[Any] = [int(tick_ms), *flat(fields.items())]
        result = self._call(self._fire_tick, [pk.stream, pk.fired(job)], args, client)
        return result or None

    # -- digests -----------------------------------------------------------

    def digest_collect(
        self,
        pk: PartitionKeys,
        dk: DigestKeys,
        group: str,
        entry_id: str,
        consumer: str,
        origin: str,
        clock_ms: int,
        key: str,
        payload: bytes,
        client: Client = None,
    ) -> int:
        """Store an event in the digest: 1 collected, 0 collected before,
        -1 not this consumer's entry any more."""
        return int(
            self._call(
                self._digest_collect,
                [pk.stream, dk.meta, dk.keys, dk.open, dk.items],
                [group, entry_id, consumer, origin, int(clock_ms), key, payload],
                client,
            )
        )

    def digest_seal(
        self,
        pk: PartitionKeys,
        dk: DigestKeys,
        *,
        tick_ms: int,
        max_events: int,
        budget: int,
        group: str,
        missed: int,
        prefix: bytes,
        client: Client = None,
    ) -> tuple[bool, int, int]:
        """One step of closing a window: ``(done, batches, events)``."""
        done, batches, events = self._call(
            self._digest_seal,
            [pk.stream, dk.meta, dk.keys, dk.open, dk.items, dk.sealed],
            [
                int(tick_ms),
                int(max_events),
                int(budget),
                group,
                int(missed),
                prefix,
            ],
            client,
        )
        return bool(done), int(batches), int(events)

    def digest_done(
        self,
        pk: PartitionKeys,
        dk: DigestKeys,
        group: str,
        batch: str,
        client: Client = None,
    ) -> int:
        """Remove a finished batch's events; returns how many."""
        return int(
            self._call(
                self._digest_done,
                [pk.stream, dk.items, dk.sealed],
                [group, batch],
                client,
            )
        )
