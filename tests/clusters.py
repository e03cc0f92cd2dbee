"""A Redis Cluster and a Sentinel setup of the suite's own, on loopback.

Both are built from plain ``redis-server`` processes on free ports (each
in a folder of its own, persistence off), like the single server of
``support.RedisServer``. Failover timeouts are short, so a test that kills
a master sees its replica promoted within a few seconds.

The benchmarks (``benchmarks/targets.py``) start their cluster target with
``ClusterServers`` too: masters only, and the usual node timeout, since
nothing fails over there and a node busy under load must not be counted
as failed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import redis

from tests.support import RedisServer, free_port, wait_for

#: How long a node may be silent before the others count it as failed, ms.
NODE_TIMEOUT_MS = 1000

#: A replica syncs at once; by default a master waits 5 s for more
#: replicas to share one transfer.
FAST_SYNC = ["--repl-diskless-sync-delay", "0"]


def find_redis_cli() -> str | None:
    return shutil.which("redis-cli")


def _info(client: redis.Redis, section: str) -> dict[str, Any]:
    return dict(client.info(section))


def _client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=2.0)


class ClusterServers:
    """``masters`` masters with ``replicas`` replicas each (none is fine),
    made one cluster with ``redis-cli --cluster create``.

    ``node_timeout_ms`` is how long a node may be silent before the others
    count it as failed: short for the failover tests, Redis's own 15 s
    where nothing is meant to fail.
    """

    def __init__(
        self,
        server: str,
        cli: str,
        folder: Path,
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = NODE_TIMEOUT_MS,
    ) -> None:
        self.cli = cli
        self.masters = masters
        self.replicas = replicas
        self.nodes: list[RedisServer] = []
        for n in range(masters * (1 + replicas)):
            node_folder = folder / f"node{n}"
            node_folder.mkdir()
            self.nodes.append(
                RedisServer(
                    server,
                    node_folder,
                    extra_args=[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-port",
                        str(free_port()),
                        "--cluster-node-timeout",
                        str(node_timeout_ms),
                        # Any replica may take over, however long it was
                        # cut off: the tests kill masters on purpose.
                        "--cluster-replica-validity-factor",
                        "0",
                        *FAST_SYNC,
                    ],
                )
            )

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(
            f"127.0.0.1:{node.port}" for node in self.nodes[: self.masters]
        )

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        result = subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(
                "redis-cli --cluster create failed: "
                + result.stdout.decode(errors="replace")[-2000:]
                + result.stderr.decode(errors="replace")[-2000:]
            )
        self.wait_healthy()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def description(self) -> str:
        """What runs, e.g. "redis-server 7.0.15, Redis Cluster of 3 masters
        on loopback" (after ``start``)."""
        client = _client(self.nodes[0].port)
        try:
            version = _info(client, "server")["redis_version"]
        finally:
            client.close()
        shape = f"Redis Cluster of {self.masters} masters"
        if self.replicas:
            shape += f" with {self.replicas} replica(s) each"
        return f"redis-server {version}, {shape} on loopback"

    def flush(self) -> None:
        """Remove every key, on every master (replicas follow)."""
        for node in self.primaries():
            client = _client(node.port)
            try:
                client.flushall()
            finally:
                client.close()

    def running_nodes(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.running]

    def role(self, node: RedisServer) -> str:
        client = _client(node.port)
        try:
            return _info(client, "replication").get("role", "")
        finally:
            client.close()

    def primaries(self) -> list[RedisServer]:
        return [node for node in self.running_nodes() if self.role(node) == "master"]

    def healthy(self) -> bool:
        """Every node up and agreeing: all slots served by ``masters``
        masters, each with its replicas attached and in sync."""
        try:
            masters = 0
            for node in self.nodes:
                if not node.running:
                    return False
                client = _client(node.port)
                try:
                    state = client.execute_command("CLUSTER", "INFO")
                    state = state.decode() if isinstance(state, bytes) else str(state)
                    if "cluster_state:ok" not in state:
                        return False
                    if "cluster_slots_ok:16384" not in state:
                        return False
                    replication = _info(client, "replication")
                finally:
                    client.close()
                if replication.get("role") == "master":
                    masters += 1
                    if replication.get("connected_slaves", 0) < self.replicas:
                        return False
                elif replication.get("master_link_status") != "up":
                    return False
            return masters == self.masters
        except (redis.RedisError, OSError):
            return False

    def wait_healthy(self, timeout: float = 30.0) -> None:
        wait_for(self.healthy, timeout=timeout, interval=0.1, what="a healthy cluster")

    def wait_replicated(self, timeout: float = 10.0) -> None:
        """Wait until every replica has every write its master took."""

        def caught_up() -> bool:
            for node in self.primaries():
                client = _client(node.port)
                try:
                    info = _info(client, "replication")
                finally:
                    client.close()
                offset = info.get("master_repl_offset", 0)
                for n in range(info.get("connected_slaves", 0)):
                    if info[f"slave{n}"]["offset"] < offset:
                        return False
            return True

        wait_for(caught_up, timeout=timeout, interval=0.02, what="replicas to catch up")

    def heal(self) -> None:
        """Restart nodes a test killed (they rejoin as replicas)."""
        for node in self.nodes:
            if not node.running:
                node.start()
        self.wait_healthy()


class SentinelProcess(RedisServer):
    """``redis-server CONFIG --sentinel`` on a free loopback port."""

    def __init__(self, binary: str, folder: Path, config: Path) -> None:
        super().__init__(binary, folder)
        self.config = config

    def start(self) -> None:
        args = [
            self.binary,
            str(self.config),
            "--sentinel",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.folder),
            "--logfile",
            str(self.folder / "sentinel.log"),
        ]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = _client(self.port)
        try:
            wait_for(
                lambda: self._pings(client), timeout=10, what="a sentinel to start"
            )
        finally:
            client.close()


class SentinelServers:
    """One master, one replica and three sentinels watching ``service``."""

    def __init__(self, server: str, folder: Path, *, service: str = "taskq") -> None:
        self.service = service
        (folder / "master").mkdir()
        (folder / "replica").mkdir()
        self.master = RedisServer(server, folder / "master", extra_args=FAST_SYNC)
        self.replica = RedisServer(
            server,
            folder / "replica",
            extra_args=["--replicaof", "127.0.0.1", str(self.master.port), *FAST_SYNC],
        )
        self.sentinels: list[SentinelProcess] = []
        for n in range(3):
            sentinel_folder = folder / f"sentinel{n}"
            sentinel_folder.mkdir()
            config = sentinel_folder / "sentinel.conf"
            # Sentinel rewrites its configuration file as it learns, so
            # each gets a writable one of its own.
            config.write_text(
                f"sentinel monitor {service} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {service} 500\n"
                f"sentinel failover-timeout {service} 5000\n"
                f"sentinel parallel-syncs {service} 1\n"
            )
            self.sentinels.append(SentinelProcess(server, sentinel_folder, config))

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        wait_for(self._replica_linked, timeout=10, interval=0.05, what="the replica")
        for sentinel in self.sentinels:
            sentinel.start()
        wait_for(self._sentinels_ready, timeout=15, interval=0.1, what="the sentinels")

    def _replica_linked(self) -> bool:
        client = _client(self.replica.port)
        try:
            return _info(client, "replication").get("master_link_status") == "up"
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def _sentinels_ready(self) -> bool:
        """Each sentinel knows the replica and the two other sentinels."""
        for sentinel in self.sentinels:
            client = _client(sentinel.port)
            try:
                replicas = client.execute_command("SENTINEL", "REPLICAS", self.service)
                others = client.execute_command("SENTINEL", "SENTINELS", self.service)
            except (redis.RedisError, OSError):
                return False
            finally:
                client.close()
            if len(replicas) < 1 or len(others) < 2:
                return False
        return True

    def master_port(self) -> int:
        client = _client(self.sentinels[0].port)
        try:
            _, port = client.execute_command(
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service
            )
        finally:
            client.close()
        return int(port)

    def stop(self) -> None:
        for server in [*self.sentinels, self.replica, self.master]:
            server.stop()

    def wait_replicated(self, timeout: float = 10.0) -> None:
        def caught_up() -> bool:
            master = _client(self.master.port)
            replica = _client(self.replica.port)
            try:
                offset = _info(master, "replication")["master_repl_offset"]
                seen = _info(replica, "replication").get("slave_repl_offset", -1)
            finally:
                master.close()
                replica.close()
            return seen >= offset

        wait_for(
            caught_up, timeout=timeout, interval=0.02, what="the replica to catch up"
        )
