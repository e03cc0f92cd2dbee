"""Measure how a worker should read a topic on a Redis Cluster.

    python -m tests.measure_reads [--partitions 8] [--entries 20000]

Starts its own cluster (three masters, no replicas) and a single
redis-server on free loopback ports, and compares:

* ``blocking``: one thread per partition, each blocking in XREADGROUP on a
  connection of its own to the partition's master (what taskq does);
* ``poll-Nms``: one thread reading every partition with non-blocking
  XREADGROUPs in one cluster pipeline, sleeping N ms when all are empty;
* ``one-server``: one blocking XREADGROUP over all partitions on a single
  redis-server (taskq's path there), for reference.

For each: the delay from XADD to the reader seeing the entry on an idle
topic (median and 95th percentile of 200 entries sent 10 ms apart), the
commands the servers process per second while nothing is sent, and the
entries read and acknowledged per second draining a backlog. Then a
worker's throughput on no-op tasks, on one server and on the cluster.
Figures on a shared 2-core machine are noisy; compare within one run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster

from taskq import TaskQ, Worker
from tests.clusters import ClusterServers, find_redis_cli
from tests.support import RedisServer, find_redis_server

GROUP = "g"


def _streams(count: int) -> list[str]:
    return [f"measure:{{t:{p}}}:stream" for p in range(count)]


class Strategy:
    """A reader: calls ``seen(stream, entry_id)`` for every entry read."""

    def __init__(self, seen: Callable[[bytes, bytes], None]) -> None:
        self.seen = seen
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(5)


class Blocking(Strategy):
    def __init__(self, seen: Any, cluster: RedisCluster, streams: list[str]) -> None:
        super().__init__(seen)
        for stream in streams:
            node = cluster.get_node_from_key(stream)
            client = redis.Redis(host=node.host, port=node.port)
            self.threads.append(
                threading.Thread(target=self.loop, args=(client, stream), daemon=True)
            )

    def loop(self, client: redis.Redis, stream: str) -> None:
        while not self.stop.is_set():
            reply = client.xreadgroup(GROUP, "c", {stream: ">"}, count=100, block=200)
            for name, entries in reply:
                ids = [entry_id for entry_id, _ in entries]
                client.xack(stream, GROUP, *ids)
                for entry_id in ids:
                    self.seen(name, entry_id)


class Polling(Strategy):
    def __init__(
        self, seen: Any, cluster: RedisCluster, streams: list[str], interval_s: float
    ) -> None:
        super().__init__(seen)
        self.interval_s = interval_s
        self.threads.append(
            threading.Thread(target=self.loop, args=(cluster, streams), daemon=True)
        )

    def loop(self, cluster: RedisCluster, streams: list[str]) -> None:
        while not self.stop.is_set():
            pipe = cluster.pipeline(transaction=False)
            for stream in streams:
                pipe.xreadgroup(GROUP, "c", {stream: ">"}, count=100)
            found = False
            acks = cluster.pipeline(transaction=False)
            for reply in pipe.execute():
                for name, entries in reply:
                    ids = [entry_id for entry_id, _ in entries]
                    acks.xack(name, GROUP, *ids)
                    for entry_id in ids:
                        self.seen(name, entry_id)
                    found = True
            if found:
                acks.execute()
            else:
                time.sleep(self.interval_s)


class OneServer(Strategy):
    def __init__(self, seen: Any, client: redis.Redis, streams: list[str]) -> None:
        super().__init__(seen)
        self.threads.append(
            threading.Thread(target=self.loop, args=(client, streams), daemon=True)
        )

    def loop(self, client: redis.Redis, streams: list[str]) -> None:
        while not self.stop.is_set():
            reply = client.xreadgroup(
                GROUP, "c", dict.fromkeys(streams, ">"), count=100, block=200
            )
            if not reply:
                continue
            pipe = client.pipeline(transaction=False)
            for name, entries in reply:
                ids = [entry_id for entry_id, _ in entries]
                pipe.xack(name, GROUP, *ids)
                for entry_id in ids:
                    self.seen(name, entry_id)
            pipe.execute()


def _commands(clients: list[redis.Redis]) -> int:
    return sum(int(c.info("stats")["total_commands_processed"]) for c in clients)


def measure(
    name: str,
    make: Callable[[Callable[[bytes, bytes], None]], Strategy],
    writer: Any,
    servers: list[redis.Redis],
    streams: list[str],
    entries: int,
) -> None:
    for stream in streams:
        writer.delete(stream)
        writer.xgroup_create(stream, GROUP, id="$", mkstream=True)
    arrived: dict[tuple[bytes, bytes], float] = {}
    lock = threading.Lock()
    done = threading.Event()
    expected = [0]

    def seen(stream: bytes, entry_id: bytes) -> None:
        with lock:
            arrived[(stream, entry_id)] = time.perf_counter()
            if len(arrived) >= expected[0]:
                done.set()

    strategy = make(seen)
    strategy.start()
    time.sleep(0.3)

    # Latency on an idle topic.
    sent: dict[tuple[bytes, bytes], float] = {}
    expected[0] = 200
    for n in range(200):
        stream = streams[n % len(streams)]
        at = time.perf_counter()
        sent[(stream.encode(), writer.xadd(stream, {"n": n}))] = at
        time.sleep(0.01)
    done.wait(10)
    delays_ms = sorted((arrived[i] - sent[i]) * 1000 for i in sent if i in arrived)
    p50 = statistics.median(delays_ms)
    p95 = delays_ms[int(len(delays_ms) * 0.95) - 1]

    # Commands per second while idle (the INFO calls themselves excluded).
    before = _commands(servers)
    time.sleep(2.0)
    idle_rate = (_commands(servers) - before - len(servers)) / 2.0

    # Draining a backlog.
    strategy.close()
    with lock:
        arrived.clear()
        done.clear()
        expected[0] = entries
    for start in range(0, entries, 1000):
        pipe = writer.pipeline(transaction=False)
        for n in range(start, min(entries, start + 1000)):
            pipe.xadd(streams[n % len(streams)], {"n": n})
        pipe.execute()
    strategy = make(seen)
    began = time.perf_counter()
    strategy.start()
    done.wait(120)
    rate = len(arrived) / (time.perf_counter() - began)
    strategy.close()
    print(
        f"{name:<12} latency p50 {p50:6.2f} ms  p95 {p95:6.2f} ms   "
        f"idle {idle_rate:7.1f} commands/s   drain {rate:8.0f} entries/s"
    )


def worker_throughput(url: str, label: str, tasks: int, partitions: int) -> None:
    app = TaskQ(url, namespace=f"measure{int(time.time() * 1000)}")
    app.topic("noop", partitions=partitions)

    @app.task(topic="noop")
    def noop(n: int) -> None: ...

    noop.send_many([{"n": n} for n in range(tasks)])
    worker = Worker(app, concurrency=8, burst=True)
    began = time.perf_counter()
    worker.run(install_signals=False)
    elapsed = time.perf_counter() - began
    print(f"{label:<12} worker, no-op tasks: {tasks / elapsed:8.0f} tasks/s")
    app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--entries", type=int, default=20_000)
    options = parser.parse_args()
    server, cli = find_redis_server(), find_redis_cli()
    if server is None or cli is None:
        raise SystemExit("needs redis-server and redis-cli on PATH")
    folder = Path(tempfile.mkdtemp(prefix="taskq-measure-"))
    (folder / "cluster").mkdir()
    (folder / "single").mkdir()
    cluster = ClusterServers(server, cli, folder / "cluster", replicas=0)
    single = RedisServer(server, folder / "single")
    cluster.start()
    single.start()
    try:
        nodes = [ClusterNode("127.0.0.1", node.port) for node in cluster.nodes]
        writer = RedisCluster(startup_nodes=nodes)
        masters = [redis.Redis(port=node.port) for node in cluster.nodes]
        one = redis.Redis(port=single.port)
        streams = _streams(options.partitions)
        print(
            f"{options.partitions} partitions, {len(cluster.nodes)} masters; "
            f"{options.entries} entries drained"
        )
        measure(
            "blocking",
            lambda seen: Blocking(seen, RedisCluster(startup_nodes=nodes), streams),
            writer,
            masters,
            streams,
            options.entries,
        )
        for interval_ms in (10, 50):
            measure(
                f"poll-{interval_ms}ms",
                lambda seen, ms=interval_ms: Polling(  # type: ignore[misc]
                    seen, RedisCluster(startup_nodes=nodes), streams, ms / 1000
                ),
                writer,
                masters,
                streams,
                options.entries,
            )
        measure(
            "one-server",
            lambda seen: OneServer(seen, redis.Redis(port=single.port), streams),
            one,
            [one],
            streams,
            options.entries,
        )
        worker_throughput(single.url, "one-server", options.entries, options.partitions)
        worker_throughput(cluster.url, "cluster", options.entries, options.partitions)
    finally:
        cluster.stop()
        single.stop()


if __name__ == "__main__":
    main()
