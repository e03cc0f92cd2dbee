"""The ceiling: plain redis-py (with hiredis) on one stream, no framework.

Producing: one XADD per call, or XADD pipelined in batches of 1000.
Consuming (``python -m benchmarks.apps.ceiling TASK``): XREADGROUP in
batches of 1000, then one pipeline per batch with the task's own commands
(nothing, one INCR per entry, or the latency push) and the XACK of the
batch. This is the least work a Redis Streams queue can do per message.

On a Redis Cluster (``--target cluster``) the client is redis-py's
``RedisCluster`` and the work is the same, on the same one stream: it
lives in one slot, on one of the masters, so the ceiling there is what
one master serves; the INCR counter and the latency list may live on
others.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import redis
import redis.cluster

from benchmarks.apps.common import (
    COUNTER,
    LATENCIES,
    now_us,
    sync_client,
)
from benchmarks.apps.common import (
    Producer as BaseProducer,
)

STREAM = "ceiling:stream"
GROUP = "ceiling"
BATCH = 1000


class Producer(BaseProducer):
    def __init__(self) -> None:
        self.client = sync_client()

    def send(self, task: str, n: int) -> None:
        self.client.execute_command("XADD", STREAM, "*", "task", task, "n", n)

    def send_many(self, task: str, values: list[int]) -> None:
        for start in range(0, len(values), BATCH):
            pipe = self.client.pipeline(transaction=False)
            for n in values[start : start + BATCH]:
                pipe.execute_command("XADD", STREAM, "*", "task", task, "n", n)
            pipe.execute()

    def close(self) -> None:
        self.client.close()


def make_producer() -> Producer:
    return Producer()


def raw_replies(client: redis.Redis | redis.cluster.RedisCluster, command: str) -> None:
    """Leave ``command``'s replies unparsed (no dict per entry).

    A ``RedisCluster`` parses a reply with the callbacks of the node's own
    client, so those get it too.
    """

    def keep(response: Any, **options: Any) -> Any:
        return response

    client.set_response_callback(command, keep)
    if isinstance(client, redis.cluster.RedisCluster):
        for node in client.get_nodes():
            if node.redis_connection is not None:
                node.redis_connection.set_response_callback(command, keep)


def consume(task: str) -> None:
    client = sync_client()
    raw_replies(client, "XREADGROUP")
    # The other process of a 2-process run may have made it already.
    with contextlib.suppress(redis.ResponseError):
        client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    consumer = f"c{os.getpid()}"
    while True:
        response: Any = client.execute_command(
            "XREADGROUP", "GROUP", GROUP, consumer, "COUNT", BATCH, "BLOCK", 1000,
            "STREAMS", STREAM, ">",
        )  # fmt: skip
        if not response:
            continue
        # RESP2 (redis-py before 8) answers [[stream, entries]], RESP3 a map.
        if isinstance(response, dict):
            entries = next(iter(response.values()))
        else:
            entries = response[0][1]
        ids = [entry_id for entry_id, _ in entries]
        pipe = client.pipeline(transaction=False)
        if task == "incr":
            for _ in entries:
                pipe.execute_command("INCR", COUNTER)
        elif task == "lat":
            now = now_us()
            pipe.execute_command(
                "RPUSH", LATENCIES, *(now - int(f[3]) for _, f in entries)
            )
        pipe.execute_command("XACK", STREAM, GROUP, *ids)
        pipe.execute()


if __name__ == "__main__":
    consume(sys.argv[1])
