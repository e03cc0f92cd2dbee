"""A master dies mid-run and its replica takes over; every task still runs.

On a Redis Cluster (three masters with a replica each) and under Sentinel
(one master, one replica, three sentinels). The tasks sent before the
failure are on the replica before the master is killed: replication is
asynchronous, and a write the master acknowledged but had not passed on
is lost with it (see the README). What the tests hold taskq to is the
rest: workers and producers find the new master by themselves, and
every task that was sent runs, at least once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis

import taskq
from taskq import Context, TaskQ, Worker
from tests.clusters import ClusterServers, SentinelServers
from tests.support import RedisServer
from tests.test_worker import pending

BEFORE = 200  # tasks sent before the master is killed
DURING = 60  # tasks sent while it fails over, and after


def _run_across_a_failover(
    app: TaskQ,
    running: Any,
    until: Any,
    *,
    replicate: Callable[[], None],
    kill: Callable[[], None],
    promoted: Callable[[], bool],
) -> Counter[int]:
    app.topic("jobs", partitions=6)
    runs: Counter[int] = Counter()
    lock = threading.Lock()

    @app.task(topic="jobs", key="n", retries=3, backoff=0.05)
    def job(n: int, ctx: Context) -> None:
        time.sleep(0.005)
        if n % 25 == 0 and ctx.attempt == 1:
            raise RuntimeError("a retry in flight across the failover")
        with lock:
            runs[n] += 1

    job.send_many([{"n": n} for n in range(BEFORE)])
    replicate()
    # A short lease: entries whose acknowledgment the dead master took
    # with it are pending again on the new one, and come back after it.
    with running(Worker(app, concurrency=4, lease=3.0)):
        until(lambda: len(runs) >= BEFORE // 4, timeout=20)
        kill()
        for n in range(BEFORE, BEFORE + DURING):
            _send(job, n)
        until(promoted, timeout=30, interval=0.1, what="a replica to take over")
        until(lambda: len(runs) == BEFORE + DURING, timeout=60, interval=0.05)
        until(lambda: pending(app, "jobs") == 0, timeout=30, interval=0.1)
    return runs


def _send(job: Any, n: int) -> None:
    """Send as a producer should while its Redis fails over: again."""
    deadline = time.monotonic() + 30
    while True:
        try:
            job.send(n)
            return
        except taskq.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_every_task_runs_across_a_cluster_failover(
    make_app: Any,
    cluster_url: str,
    redis_cluster: ClusterServers,
    running: Any,
    until: Any,
) -> None:
    app = make_app(cluster_url)
    client: Any = app.redis
    victim_port = int(
        client.node_of(app.keys.partition("jobs", 0).stream).split(":")[1]
    )
    [victim] = [node for node in redis_cluster.nodes if node.port == victim_port]
    try:
        runs = _run_across_a_failover(
            app,
            running,
            until,
            replicate=redis_cluster.wait_replicated,
            kill=victim.kill,
            promoted=lambda: len(redis_cluster.primaries()) == 3,
        )
    finally:
        redis_cluster.heal()
    assert sorted(runs) == list(range(BEFORE + DURING))
    # The partition that was on the killed master is on its replica now.
    assert (
        client.node_of(app.keys.partition("jobs", 0).stream)
        != f"127.0.0.1:{victim_port}"
    )


def test_every_task_runs_across_a_sentinel_failover(
    make_app: Any, sentinels: SentinelServers, running: Any, until: Any
) -> None:
    app = make_app(sentinels.url)
    old_port = sentinels.master.port
    runs = _run_across_a_failover(
        app,
        running,
        until,
        replicate=sentinels.wait_replicated,
        kill=sentinels.master.kill,
        promoted=lambda: sentinels.master_port() == sentinels.replica.port,
    )
    assert sorted(runs) == list(range(BEFORE + DURING))
    assert sentinels.master_port() != old_port
    _assert_served_by(app, sentinels.replica)


def _assert_served_by(app: TaskQ, server: RedisServer) -> None:
    direct = redis.Redis(port=server.port)
    try:
        assert direct.exists(app.keys.partition("jobs", 0).stream)
        assert direct.info("replication")["role"] == "master"
    finally:
        direct.close()
