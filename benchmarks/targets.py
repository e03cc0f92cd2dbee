"""Where the suite's Redis comes from.

A target starts a Redis of its own on loopback, hands out the URL the
queues connect to, empties it between runs and stops it at the end. The
suite never connects to a Redis it did not start (in particular not to one
already listening on 6379).

``TARGETS`` maps a ``--target`` name to its class. Each implements the
same members: ``url`` is what the queues are given (``BENCH_REDIS_URL``),
``client()`` is what the suite itself reads progress with, ``flush()``
empties every node. ``local`` is one ``redis-server``; ``cluster`` is a
Redis Cluster of three masters, started with the test suite's
``tests.clusters.ClusterServers`` (the suite runs from the repository
root, so ``tests`` is importable). Queues and workloads that cannot use a
target say why (``unsupported_on`` in ``systems.py`` and
``workloads.py``), as any queue that cannot run here does.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import redis.cluster


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisTarget:
    """What the suite needs from a Redis deployment."""

    #: The ``--target`` name.
    name: str = ""
    #: Shown in the report, e.g. "redis-server 7.0.15, 1 node".
    description: str = ""

    @property
    def url(self) -> str:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def client(self) -> redis.Redis | redis.cluster.RedisCluster:
        """A client for the suite's own reads (progress, latencies)."""
        return redis.Redis.from_url(self.url)

    def flush(self) -> None:
        """Remove every key (between runs)."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class LocalRedis(RedisTarget):
    """One ``redis-server`` on a free loopback port, without persistence."""

    name = "local"

    def __init__(self, binary: str = "redis-server") -> None:
        found = shutil.which(binary)
        if found is None:
            raise RuntimeError(f"{binary} is not on PATH; install Redis 7 to benchmark")
        self.binary = found
        self.port = 0
        self._dir = tempfile.TemporaryDirectory(prefix="taskq-bench-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.port = free_port()
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir.name,
            "--maxclients", "10000",
            "--loglevel", "warning",
        ]  # fmt: skip
        log = open(Path(self._dir.name) / "redis.log", "wb")  # noqa: SIM115
        self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                info = client.info("server")
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        client.close()
        self.description = f"redis-server {info['redis_version']}, one node on loopback"

    def flush(self) -> None:
        client = redis.Redis(port=self.port)
        client.flushall()
        client.close()

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
            self._process = None
        self._dir.cleanup()


class ClusterRedis(RedisTarget):
    """A Redis Cluster of three masters (no replicas), each a
    ``redis-server`` on a free loopback port without persistence.

    Slots are split evenly by ``redis-cli --cluster create``. Nothing fails
    over here, so nodes keep Redis's usual node timeout: a master slowed
    down by the load must not be counted as failed.
    """

    name = "cluster"
    masters = 3
    node_timeout_ms = 15_000

    def __init__(self) -> None:
        from tests.clusters import find_redis_cli
        from tests.support import find_redis_server

        server, cli = find_redis_server(), find_redis_cli()
        if server is None or cli is None:
            raise RuntimeError(
                "redis-server and redis-cli are not on PATH; install Redis 7 "
                "to benchmark on a cluster"
            )
        self.server, self.cli = server, cli
        self._dir = tempfile.TemporaryDirectory(prefix="taskq-bench-cluster-")
        self._cluster: Any = None

    @property
    def url(self) -> str:
        """taskq's form, ``redis+cluster://host:port,host:port,...``."""
        return str(self._cluster.url)

    def start(self) -> None:
        from tests.clusters import ClusterServers

        self._cluster = ClusterServers(
            self.server,
            self.cli,
            Path(self._dir.name),
            masters=self.masters,
            replicas=0,
            node_timeout_ms=self.node_timeout_ms,
        )
        try:
            self._cluster.start()
        except BaseException:
            self._cluster.stop()
            raise
        self.description = self._cluster.description()

    def client(self) -> redis.cluster.RedisCluster:
        nodes = [
            redis.cluster.ClusterNode("127.0.0.1", node.port)
            for node in self._cluster.nodes
        ]
        return redis.cluster.RedisCluster(startup_nodes=nodes)

    def flush(self) -> None:
        self._cluster.flush()

    def stop(self) -> None:
        if self._cluster is not None:
            self._cluster.stop()
            self._cluster = None
        self._dir.cleanup()


TARGETS: dict[str, type[RedisTarget]] = {"local": LocalRedis, "cluster": ClusterRedis}
