"""Where the suite's Redis comes from.

A target starts a Redis of its own on loopback, hands out the URL the
queues connect to, empties it between runs and stops it at the end. The
suite never connects to a Redis it did not start (in particular not to one
already listening on 6379).

``TARGETS`` maps a ``--target`` name to its class. A Redis Cluster target
(several masters) fits in by implementing the same members: ``url`` is
what the queues are given (``BENCH_REDIS_URL``), ``client()`` is what the
suite itself reads progress with (a ``RedisCluster`` there), ``flush()``
empties every master. Queues that cannot use a cluster report why, as any
queue that cannot run here does.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisTarget:
    """What the suite needs from a Redis deployment."""

    #: Shown in the report, e.g. "redis-server 7.0.15, 1 node".
    description: str = ""

    @property
    def url(self) -> str:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def client(self) -> redis.Redis:
        """A client for the suite's own reads (progress, latencies)."""
        return redis.Redis.from_url(self.url)

    def flush(self) -> None:
        """Remove every key (between runs)."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class LocalRedis(RedisTarget):
    """One ``redis-server`` on a free loopback port, without persistence."""

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


TARGETS: dict[str, type[RedisTarget]] = {"local": LocalRedis}
