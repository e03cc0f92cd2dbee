"""Where a worker's XREADGROUP calls go, and which streams one call reads.

On one server (and on a Sentinel-managed master) one blocking XREADGROUP
reads every partition of a subscription at once. On a Redis Cluster that
call would span slots, since every partition has a hash tag of its own,
and the cluster refuses it (CROSSSLOT). There the worker runs one reader
per slot instead, each blocking on a connection of its own to the master
that holds the slot. Partitions of one topic almost never share a slot,
so in practice that is one reader, one thread and one connection per
partition and consumer group.

Why not one reader per node: a node holds many slots, and one command
can still read only one of them, so reading a node's partitions from one
thread means polling them without blocking. Measured with
``python -m tests.measure_reads`` (8 partitions on 3 local masters),
blocking readers see a new entry 0.4 ms after it is written (median;
1.4 ms at the 95th percentile) and cost the servers a command per reader
per block time while idle; polling every 10 ms takes 6 ms (13 ms) and
1,300 commands a second while idle, from every worker, however quiet
the topic; every 50 ms, 25 ms (50 ms) and 300 a second. Draining a
backlog runs at about the same rate either way. Blocking readers cost a
thread and a connection each instead.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import redis
import redis.exceptions

from taskq.cluster import ClusterClient, slot_of
from taskq.connection import CONNECTION_ERRORS, is_cluster, is_memory
from taskq.keys import PartitionKeys

if TYPE_CHECKING:
    from taskq.app import TaskQ


def read_sets(
    url: str, partitions: Sequence[PartitionKeys]
) -> list[list[PartitionKeys]]:
    """Split ``partitions`` into the sets one XREADGROUP may read together.

    One set on a single server; one set per hash slot on a cluster, in the
    order of the partitions.
    """
    if not partitions:
        return []
    if not is_cluster(url):
        return [list(partitions)]
    by_slot: dict[int, list[PartitionKeys]] = {}
    for pk in partitions:
        by_slot.setdefault(slot_of(pk.stream), []).append(pk)
    return list(by_slot.values())


class Room(Protocol):
    """The worker's room for entries, as readers reserve it."""

    def reserve_room(self, most: int) -> int: ...

    def return_room(self, count: int) -> None: ...


class ReadShares:
    """How the readers of one subscription share the worker's free room.

    A reader asks each stream it reads for an even share of the room
    (COUNT applies per stream): on one server, a blocking read of all
    partitions fetches up to the whole room in one round trip. On a
    cluster each reader reads one slot, and an even share of the room is
    a sliver per round trip, so there a reader whose last read found
    entries reads at once without blocking and takes all the room there
    is, counted as held while its read is out so that no other reader
    asks for the same room. Readers of quiet partitions keep blocking for
    their even share; the worker holds at most twice its capacity.
    """

    def __init__(self, readers: int) -> None:
        #: Per reader: did its last read find anything?
        self.busy = [False] * readers

    def __len__(self) -> int:
        return len(self.busy)

    def count(self, free: int, streams: int, read_batch: int) -> int:
        """COUNT for an even share of ``free`` over ``streams`` streams."""
        share = -(-free // len(self.busy))
        return max(1, min(read_batch, -(-share // streams)))

    @contextlib.contextmanager
    def turn(
        self, index: int, free: int, streams: int, read_batch: int, room: Room
    ) -> Iterator[tuple[int, bool]]:
        """``(COUNT, block?)`` for the next read of reader ``index``, for
        the duration of the read and of holding what it found."""
        if len(self.busy) == 1 or not self.busy[index]:
            yield self.count(free, streams, read_batch), True
            return
        reserved = room.reserve_room(read_batch)
        try:
            yield reserved, False
        finally:
            room.return_room(reserved)

    def found(self, index: int, anything: bool) -> None:
        self.busy[index] = anything


#: Tries of a read whose slot moved before the worker backs off, and the
#: pause per try while a slot is being moved, in seconds.
ROUTE_ATTEMPTS = 5
MOVE_WAIT_S = 0.05


def _raw(response: Any, **options: Any) -> Any:
    # The worker parses entries itself; redis-py's parsing would build
    # dicts it throws away.
    return response


class Reader:
    """Sends the XREADGROUP calls of one reader thread to its server.

    ``blocking`` readers remember their connection's client id, so that
    :meth:`unblock` can end a blocking read from another thread (CLIENT
    UNBLOCK), and a stopping worker is not handed new entries.
    """

    def __init__(
        self, app: TaskQ, *, blocking: bool, name: str, extra_timeout: float
    ) -> None:
        self.client = app.new_client(name, extra_timeout=extra_timeout)
        self.client.set_response_callback("XREADGROUP", _raw)
        self.blocking = blocking and not is_memory(app.url)
        self._client_id: int | None = None

    def read(self, args: Sequence[Any]) -> Any:
        """Send ``XREADGROUP ...`` (``args``, command name included)."""
        if self.blocking and self._client_id is None:
            self._client_id = self.client.client_id()
        try:
            return self.client.execute_command(*args)  # type: ignore[no-untyped-call]
        except CONNECTION_ERRORS:
            self._client_id = None  # the next connection has another id
            raise

    def unblock(self, via: redis.Redis) -> None:
        """End a blocking read now (it returns empty); ``via`` is another
        client, so that the read's own connection is not the one taken."""
        client_id = self._client_id
        if client_id is None:
            return
        # On failure the read ends by itself within its block time.
        with contextlib.suppress(redis.RedisError, OSError):
            via.client_unblock(client_id)

    def close(self) -> None:
        self.client.close()


class SlotReader(Reader):
    """Reads streams of one hash slot from the cluster node that holds it.

    The calls go straight to the node's connection, not through the
    cluster client, so that the client id of a blocking read is known and
    the reply is left unparsed. When the slot has moved (MOVED) or the
    node failed, the cluster client finds the slot's master again.
    """

    def __init__(
        self, app: TaskQ, key: str, *, blocking: bool, name: str, extra_timeout: float
    ) -> None:
        super().__init__(app, blocking=blocking, name=name, extra_timeout=extra_timeout)
        self.cluster: Any = self.client  # a ClusterClient: see make_reader
        #: A key in the slot, used to ask the cluster client where it is.
        self.key = key
        self._node: Any = None
        self._node_client: redis.Redis | None = None
        self._lost = False

    def read(self, args: Sequence[Any]) -> Any:
        for attempt in range(ROUTE_ATTEMPTS):
            node_client = self._route()
            if self.blocking and self._client_id is None:
                self._client_id = node_client.client_id()
            try:
                return node_client.execute_command(*args)  # type: ignore[no-untyped-call]
            except redis.exceptions.MovedError:
                self._forget()  # the slot moved, or its master failed over
            except redis.exceptions.AskError:
                # The slot is being moved and the stream has gone ahead:
                # the move completes within moments.
                self._forget()
                time.sleep(MOVE_WAIT_S * (attempt + 1))
            except CONNECTION_ERRORS:
                self._forget()
                raise
            except redis.ResponseError as exc:
                # Blocking reads of a stream end with an UNBLOCKED error
                # when its master becomes a replica or the stream is
                # deleted (moved to another node).
                if "UNBLOCKED" not in str(exc):
                    raise
                self._forget()
        raise redis.exceptions.TryAgainError(f"the slot of {self.key} keeps moving")

    def _route(self) -> redis.Redis:
        if self._node_client is None:
            if self._lost:
                # A call through the cluster client follows the redirect
                # or refreshes the slot map after a failure; it raises a
                # connection error while the slot has no master.
                self.cluster.exists(self.key)
                self._lost = False
            self._node = self.cluster.get_node_from_key(self.key)
            node_client = self.cluster.get_redis_connection(self._node)
            node_client.set_response_callback("XREADGROUP", _raw)
            self._node_client = node_client
            self._client_id = None
        return self._node_client

    def _forget(self) -> None:
        self._node_client = None
        self._client_id = None
        self._lost = True

    def unblock(self, via: redis.Redis) -> None:
        client_id, node = self._client_id, self._node
        if client_id is None or node is None:
            return
        if not isinstance(via, ClusterClient):
            return
        target = via.get_node(node_name=node.name)
        if target is None:
            return
        with contextlib.suppress(redis.RedisError, OSError):
            via.execute_command("CLIENT UNBLOCK", client_id, target_nodes=target)


def make_reader(
    app: TaskQ,
    partitions: Sequence[PartitionKeys],
    *,
    blocking: bool,
    name: str,
    extra_timeout: float,
) -> Reader:
    """A reader for one set of :func:`read_sets`; ``name`` is its client
    name, ``extra_timeout`` (s) what its blocking reads add to the socket
    timeout."""
    if is_cluster(app.url):
        return SlotReader(
            app,
            partitions[0].stream,
            blocking=blocking,
            name=name,
            extra_timeout=extra_timeout,
        )
    return Reader(app, blocking=blocking, name=name, extra_timeout=extra_timeout)
