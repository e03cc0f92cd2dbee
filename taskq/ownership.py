"""Partition ownership: one member of a group reads a partition at a time.

Redis consumer groups let any member read any entry; Kafka gives each
partition to one consumer of a group, which is what keeps a key's messages
in order. taskq does the same for subscriptions with ordered handlers:

* each member heartbeats into the group's member set (a sorted set);
* every member computes the same balanced, sticky assignment from the live
  members and the current owners (:func:`assign`), gives up what it should
  no longer own and takes what is free and meant for it;
* owning is a lease in Redis (``own.lua``) with a fencing token: a member
  that stalls past its lease loses the partition, and the steps it takes
  afterwards (acknowledge, retry, dead-letter) name a stale token and do
  nothing;
* a new owner first takes over every entry still pending in the partition
  (from a dead or departed owner), in stream order, then reads new ones.

A worker gives up a partition only once nothing of it is running, so two
members never run messages of one partition at the same time.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import redis

from taskq.connection import CONNECTION_ERRORS
from taskq.delivery import Delivery, Subscription
from taskq.holdings import sequenced
from taskq.keys import PartitionKeys
from taskq.scripts import Scripts, chunks
from taskq.sequencer import sequence_key

if TYPE_CHECKING:
    from taskq.worker import Worker

log = logging.getLogger("taskq.ownership")

#: Entries taken over per call when a partition changes hands.
TAKEOVER_BATCH = 500
#: Entries taken per pass from members that read an owned partition after
#: losing it.
ADOPT_BATCH = 100
#: Stands for the owner of a partition whose owner key is unreadable.
BROKEN = "\0broken"


def assign(
    partitions: Sequence[int],
    members: Sequence[str],
    owners: Mapping[int, str | None],
) -> dict[str, list[int]]:
    """A balanced, sticky assignment of partitions to members.

    Every member gets ``len(partitions) // len(members)`` partitions or one
    more; the members that own the most now get the larger shares. Members
    keep what they own up to their share; the rest goes, in partition
    order, to the members with room, those with the most room first. The
    result depends only on the arguments, so members that see the same
    state agree on it.
    """
    if not members:
        return {}
    ordered = sorted(set(members))
    current = {m: [p for p in partitions if owners.get(p) == m] for m in ordered}
    by_holding = sorted(ordered, key=lambda m: (-len(current[m]), m))
    base, extra = divmod(len(partitions), len(ordered))
    share = {m: base + (1 if i < extra else 0) for i, m in enumerate(by_holding)}
    result: dict[str, list[int]] = {m: [] for m in ordered}
    free = []
    for p in partitions:
        owner = owners.get(p)
        if owner in share and len(result[owner]) < share[owner]:
            result[owner].append(p)
        else:
            free.append(p)
    for p in free:
        member = max(
            ordered, key=lambda m: (share[m] - len(result[m]), -ordered.index(m))
        )
        result[member].append(p)
    return result


class Ownership:
    """The partitions one worker owns in one ordered subscription."""

    def __init__(self, worker: Worker, sub: Subscription) -> None:
        self.worker = worker
        self.sub = sub
        self.member = worker.id
        self.members_key = worker.app.keys.members(sub.topic, sub.group)
        #: Owned partitions and their fencing tokens.
        self.tokens: dict[PartitionKeys, int] = {}
        #: Partitions lost while some of their handlers still ran; they are
        #: not taken again until those finish.
        self.draining: set[PartitionKeys] = set()
        self.last_members: list[str] = []

    def owner_value(self, pk: PartitionKeys) -> str | None:
        token = self.tokens.get(pk)
        return None if token is None else f"{self.member}|{token}"

    @property
    def lease_ms(self) -> int:
        return self.sub.lease_ms

    # -- one pass ------------------------------------------------------------------

    def step(self, client: redis.Redis, scripts: Scripts) -> bool:
        """Heartbeat, renew what is owned, then move toward the assignment;
        True when this member owns just what it is assigned."""
        now_ms = int(time.time() * 1000)
        owned = list(self.tokens.items())
        group = self.sub.group
        pipe = client.pipeline(transaction=False)
        pipe.zadd(self.members_key, {self.member: now_ms})
        pipe.pexpire(self.members_key, self.lease_ms * 3)
        pipe.zremrangebyscore(self.members_key, "-inf", now_ms - self.lease_ms * 3)
        pipe.zrangebyscore(self.members_key, now_ms - self.lease_ms, "+inf")
        for pk, token in owned:
            scripts.own(pk, group, self.member, self.lease_ms, token, client=pipe)
        for pk, token in owned:
            scripts.adopt(
                pk,
                group,
                self.member,
                f"{self.member}|{token}",
                ADOPT_BATCH,
                client=pipe,
            )
        for pk in self.sub.partitions:
            pipe.get(pk.owner(group))
        results = scripts.execute(pipe, raise_on_error=False)
        for result in results:
            if isinstance(result, CONNECTION_ERRORS):
                raise result
        members = self._members(results[3])
        renewed = results[4 : 4 + len(owned)]
        adopted = results[4 + len(owned) : 4 + 2 * len(owned)]
        values = results[4 + 2 * len(owned) :]
        for (pk, _), token, taken in zip(owned, renewed, adopted, strict=True):
            if isinstance(token, Exception):
                self._broken(pk.owner(group), token)
            elif token is None:
                self.lost(pk, "its lease ran out")
            elif isinstance(taken, Exception):
                self._broken(pk.stream, taken)
            elif isinstance(taken, list) and taken:
                self._adopt(pk, taken)
        owners: dict[int, str | None] = {}
        for pk, value in zip(self.sub.partitions, values, strict=True):
            if isinstance(value, Exception):
                self._broken(pk.owner(group), value)
                owners[pk.partition] = BROKEN  # nobody takes it
            else:
                owners[pk.partition] = (
                    value.decode().rsplit("|", 1)[0] if value else None
                )
        mine = set(
            assign([pk.partition for pk in self.sub.partitions], members, owners)[
                self.member
            ]
        )
        for pk in list(self.tokens):
            if pk.partition not in mine:
                self.give_up(client, scripts, pk)
            elif pk not in self.sub.accepting:
                self._resume(pk)
        for pk in self.sub.partitions:
            if (
                pk.partition in mine
                and pk not in self.tokens
                and owners[pk.partition] is None
            ):
                self.take(client, scripts, pk)
        return {pk.partition for pk in self.tokens} == mine and all(
            pk in self.sub.accepting for pk in self.tokens
        )

    def _members(self, result: Any) -> list[str]:
        """The live members (always including this one)."""
        if isinstance(result, Exception):
            # Without the member set every worker works alone: each takes
            # what is free, which the leases keep exclusive.
            self._broken(self.members_key, result)
            members = []
        else:
            members = [m.decode() for m in result]
        if self.member not in members:
            members.append(self.member)
        if sorted(members) != self.last_members:
            self.last_members = sorted(members)
            log.info(
                "Members of %s/%s: %s.",
                self.sub.topic,
                self.sub.group,
                ", ".join(self.last_members),
            )
        return members

    def _broken(self, key: str, error: Exception) -> None:
        self.worker.keeper.warn_once(
            "ownership",
            key,
            "Partition ownership of %s/%s cannot use %s (%s); the partitions "
            "that need it wait until it is repaired.",
            self.sub.topic,
            self.sub.group,
            key,
            error,
            level=logging.ERROR,
        )

    # -- taking and giving up --------------------------------------------------------

    def take(self, client: redis.Redis, scripts: Scripts, pk: PartitionKeys) -> None:
        holdings = self.worker.holdings
        if pk in self.draining and holdings.running_in(self.sub.group, pk):
            return
        self.draining.discard(pk)
        try:
            owned = scripts.own(pk, self.sub.group, self.member, self.lease_ms)
        except redis.ResponseError as exc:
            # The owner key was read without error a moment ago, so it is the
            # fence counter that is not a number; the other partitions go on.
            self._broken(pk.fence(self.sub.group), exc)
            return
        if owned is None:
            return
        token, handed_over = int(owned[0]), bool(owned[1])
        self.tokens[pk] = token
        self.sub.accepting.add(pk)
        owner = f"{self.member}|{token}"
        # Whatever the previous owner left pending comes first, in order;
        # new entries are read only after it.
        cursor = b"0-0"
        taken = 0
        heads: set[bytes] = set()
        while True:
            cursor, entries, _, _ = scripts.reclaim(
                pk, self.sub.group, self.member, 0, cursor, TAKEOVER_BATCH
            )
            batch = []
            for entry_id, flat, deliveries, _idle in entries:
                it = iter(flat)
                fields = dict(zip(it, it, strict=False))
                batch.append(Delivery(self.sub, pk, entry_id, fields, int(deliveries)))
            if not handed_over:
                self._uncharge(scripts, pk, owner, batch, heads)
            taken += len(batch)
            holdings.hold(batch)
            if cursor in (b"0-0", "0-0"):
                break
        self.sub.start_reading(pk)
        log.info(
            "Took partition %d of %s/%s (token %d)%s.",
            pk.partition,
            self.sub.topic,
            self.sub.group,
            token,
            f", with {taken} pending entr{'y' if taken == 1 else 'ies'}"
            if taken
            else "",
        )
        self.worker.reading_changed(self.sub)

    def _uncharge(
        self,
        scripts: Scripts,
        pk: PartitionKeys,
        owner: str,
        batch: list[Delivery],
        heads: set[bytes],
    ) -> None:
        """Take back the attempt a dead owner's takeover charged to entries
        that cannot have run: only the oldest pending entry of a key can
        have been running (the others waited behind it)."""
        counts = []
        for delivery in batch:
            key = sequence_key(delivery) if sequenced(delivery) else None
            if key is None:
                continue
            if key[2] not in heads:
                heads.add(key[2])
            elif delivery.deliveries > 1:
                delivery.deliveries -= 1
                counts.append((delivery.id, delivery.deliveries))
        for part in chunks(counts):
            scripts.recount(pk, self.sub.group, self.member, owner, part)

    def give_up(
        self,
        client: redis.Redis,
        scripts: Scripts,
        pk: PartitionKeys,
        *,
        force: bool = False,
    ) -> bool:
        """Hand a partition over, once nothing of it runs; True when done.

        Entries not yet started are returned uncharged; with ``force``
        (shutdown timeout) running ones are handed over as a further
        attempt.
        """
        owner = self.owner_value(pk)
        if owner is None:
            return True
        if pk in self.sub.accepting:
            self.sub.accepting.discard(pk)
            self.sub.stop_reading(pk)
            self.worker.reading_changed(self.sub)
        counts = self.worker.holdings.hand_over(self.sub, pk, force=force)
        if counts is None:
            return False  # handlers of it still run; try again next pass
        try:
            scripts.disown(pk, self.sub.group, self.member, owner, counts)
        except (redis.RedisError, OSError) as exc:
            if isinstance(exc, CONNECTION_ERRORS):
                raise
            log.warning(
                "Could not give up partition %d of %s: %s", pk.partition, pk.topic, exc
            )
        del self.tokens[pk]
        log.info(
            "Gave up partition %d of %s/%s%s.",
            pk.partition,
            self.sub.topic,
            self.sub.group,
            f", handing over {len(counts)} entr{'y' if len(counts) == 1 else 'ies'}"
            if counts
            else "",
        )
        return True

    def _resume(self, pk: PartitionKeys) -> None:
        """The hand-over of ``pk`` was called off (the member it was to go
        to left while handlers of it still ran): go on with it."""
        self.sub.accepting.add(pk)
        self.sub.start_reading(pk)
        self.worker.holdings.resume(self.sub, pk)
        log.info(
            "Keeping partition %d of %s/%s: the member it was to go to left.",
            pk.partition,
            self.sub.topic,
            self.sub.group,
        )
        self.worker.reading_changed(self.sub)

    def _adopt(self, pk: PartitionKeys, taken: list[Any]) -> None:
        """Hold entries of an owned partition taken from a member that read
        them after it lost the partition (it had stalled)."""
        batch = []
        for entry_id, flat, deliveries in taken:
            it = iter(flat)
            fields = dict(zip(it, it, strict=False))
            batch.append(Delivery(self.sub, pk, entry_id, fields, int(deliveries)))
        log.warning(
            "Took over %d entr%s of partition %d of %s/%s that a stalled member "
            "read after losing the partition; they may run after later "
            "messages of their keys.",
            len(batch),
            "y" if len(batch) == 1 else "ies",
            pk.partition,
            self.sub.topic,
            self.sub.group,
        )
        self.worker.holdings.hold(batch)

    def lost(self, pk: PartitionKeys, why: str) -> None:
        """The lease is gone: drop the partition without touching Redis."""
        if self.tokens.pop(pk, None) is None:
            return
        self.sub.accepting.discard(pk)
        log.warning(
            "Lost partition %d of %s/%s (%s); what this worker still holds of "
            "it will not be acknowledged here.",
            pk.partition,
            self.sub.topic,
            self.sub.group,
            why,
        )
        self.sub.stop_reading(pk)
        self.worker.holdings.drop_partition(self.sub, pk)
        self.draining.add(pk)
        self.worker.reading_changed(self.sub)

    def leave(self, client: redis.Redis, scripts: Scripts, *, force: bool) -> None:
        """On shutdown: hand every partition over and leave the group."""
        for pk in list(self.tokens):
            self.give_up(client, scripts, pk, force=force)
        # If this fails, the heartbeat ages out by itself.
        with contextlib.suppress(redis.RedisError, OSError):
            client.zrem(self.members_key, self.member)


def describe(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
