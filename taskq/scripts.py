"""Typed wrappers around the Lua scripts in ``taskq/lua``.

Each script touches the keys of one partition only (see ``keys.py``), so it
runs in one slot of a Redis Cluster. Scripts are registered once per client;
redis-py's ``Script`` calls them by SHA and reloads one that the server
forgot (after a restart or a SCRIPT FLUSH).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any, TypeVar

import redis
from redis.commands.core import Script

from taskq.keys import PartitionKeys

# A Redis client or a pipeline: both take script calls.
Client = Any

#: Most ids passed to one script call; Lua's unpack() has a stack limit.
MAX_IDS_PER_CALL = 500


def _source(name: str) -> str:
    folder = resources.files("taskq").joinpath("lua")
    # Lua scripts cannot import one another; the shared helpers are put in
    # front of every script instead (unused local functions cost nothing).
    return folder.joinpath("lib.lua").read_text() + folder.joinpath(f"{name}.lua").read_text()


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


def chunks(items: Sequence[T], size: int = MAX_IDS_PER_CALL) -> Iterable[Sequence[T]]:
    """Split ``items`` into runs short enough for one script call."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Scripts:
    """The scripts, registered on one client."""

    def __init__(self, client: redis.Redis) -> None:
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
        return self._retry(
            keys=[pk.stream, pk.delayed],
            args=[group, entry_id, consumer, max(0, int(delay_ms)), packed],
            client=client,
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
    ) -> bytes | None:
        """Write a dead-letter record and acknowledge; None if lost."""
        args: list[Any] = [group, entry_id, consumer, max_len]
        for field, value in record.items():
            args.append(field)
            args.append(value)
        result = self._dead_letter(keys=[pk.stream, pk.dead], args=args, client=client)
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
        return self._schedule(
            keys=[pk.delayed],
            args=[-1 if due_ms is None else int(due_ms), max(0, int(delay_ms)), packed],
            client=client,
        )

    def move_due(self, pk: PartitionKeys, limit: int, client: Client = None) -> Any:
        """Move due messages onto the stream: ``[moved, ms_to_next or -1]``."""
        return self._move_due(keys=[pk.delayed, pk.stream], args=[limit], client=client)

    def renew(
        self,
        pk: PartitionKeys,
        group: str,
        consumer: str,
        ids: Sequence[bytes],
        client: Client = None,
    ) -> Any:
        """Reset the idle time of held entries; returns the ids lost."""
        return self._renew(keys=[pk.stream], args=[group, consumer, *ids], client=client)

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
        args: list[Any] = [group, consumer]
        for entry_id, packed in entries:
            args.append(entry_id)
            args.append(packed)
        return self._requeue(keys=[pk.stream], args=args, client=client)

    def trim(self, pk: PartitionKeys, client: Client = None) -> Any:
        """Remove entries every group is done with; returns how many."""
        return self._trim(keys=[pk.stream], args=[], client=client)

    def forget_consumers(
        self, pk: PartitionKeys, group: str, idle_ms: int, client: Client = None
    ) -> Any:
        """Remove consumers that hold nothing and were idle for ``idle_ms``."""
        return self._forget_consumers(
            keys=[pk.stream], args=[group, int(idle_ms)], client=client
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
        return self._reclaim(
            keys=[pk.stream],
            args=[group, consumer, int(lease_ms), cursor, count],
            client=client,
        )

    def append_capped(
        self,
        pk: PartitionKeys,
        max_len: int,
        fields: dict[bytes, bytes],
        client: Client = None,
    ) -> Any:
        """XADD unless the partition holds ``max_len`` entries (then None)."""
        args: list[Any] = [max_len]
        for field, value in fields.items():
            args.append(field)
            args.append(value)
        return self._append_capped(keys=[pk.stream], args=args, client=client)
