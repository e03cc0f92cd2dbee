"""Test fixtures: a real redis-server of the suite's own, apps, workers.

The suite never touches a Redis it did not start: the session starts
``redis-server`` on a free loopback port (persistence off) and stops it at
the end, and likewise a Redis Cluster of three masters with a replica each
(``tests/clusters.py``) the first time a test asks for it. Each test gets
its own namespace, so tests never see each other's keys. Without the
``redis-server`` (and, for the cluster, ``redis-cli``) binaries the tests
that need them are skipped, or fail when the ``CI`` environment variable
is set.

Contract tests take the ``app`` fixture (or ``backend_url``) and run on
every backend: ``memory://``, one Redis, and the cluster. A test that
only makes sense on one server takes ``redis_app`` instead.

Every Lua script call in the suite is checked: its keys must share one
hash slot, or the test fails (a cluster would refuse the call).
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from redis.commands.core import Script
from redis.crc import key_slot

from taskq import TaskQ, Worker
from tests.clusters import ClusterServers, SentinelServers, find_redis_cli
from tests.support import RedisServer, bind_app, find_redis_server, wait_for

BACKENDS = ["memory", "redis", "cluster"]


def _missing_redis(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI needs it (see .ci/run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = find_redis_server()
    if binary is None:
        _missing_redis("redis-server is not installed")
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterServers]:
    server, cli = find_redis_server(), find_redis_cli()
    if server is None or cli is None:
        _missing_redis("redis-server and redis-cli are needed for a Redis Cluster")
    cluster = ClusterServers(server, cli, tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: ClusterServers) -> str:
    """The session's cluster, healed first if a test left a node down."""
    if not redis_cluster.healthy():
        redis_cluster.heal()
    return redis_cluster.url


@pytest.fixture
def sentinels(tmp_path: Any) -> Iterator[SentinelServers]:
    """A master, its replica and three sentinels, for one test."""
    server = find_redis_server()
    if server is None:
        _missing_redis("redis-server is not installed")
    servers = SentinelServers(server, tmp_path)
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture(autouse=True)
def scripts_touch_one_slot(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail the test if any Lua script is called with keys of two slots.

    The call raises too, but it may run in a worker thread that only logs
    the error, so the test fails at its end as well.
    """
    violations: list[str] = []
    call = Script.__call__

    def checked(
        self: Script, keys: Any = None, args: Any = None, client: Any = None
    ) -> Any:
        encoded = [k.encode() if isinstance(k, str) else bytes(k) for k in keys or ()]
        if len({key_slot(k) for k in encoded}) > 1:
            problem = f"a Lua script was called with keys of several slots: {encoded!r}"
            violations.append(problem)
            raise AssertionError(problem)
        return call(self, keys, args, client)

    monkeypatch.setattr(Script, "__call__", checked)
    yield violations
    assert not violations, violations


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if not redis_server.running:
        redis_server.start()
    return redis_server.url


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest, namespace: str) -> str:
    """A URL for each backend the contract tests run on."""
    if request.param == "memory":
        return f"memory://{namespace}"
    if request.param == "cluster":
        return str(request.getfixturevalue("cluster_url"))
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def make_app(namespace: str) -> Iterator[Any]:
    apps: list[TaskQ] = []

    def make(url: str, **options: Any) -> TaskQ:
        app = TaskQ(url, namespace=options.pop("namespace", namespace), **options)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def app(make_app: Any, backend_url: str) -> TaskQ:
    return make_app(backend_url)


@pytest.fixture
def redis_app(make_app: Any, redis_url: str) -> TaskQ:
    return make_app(redis_url)


class RunningWorker:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.thread = threading.Thread(
            target=worker.run, kwargs={"install_signals": False}, daemon=True
        )

    def __enter__(self) -> Worker:
        self.thread.start()
        assert self.worker.started.wait(10), "worker did not start"
        return self.worker

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "worker did not stop"


@pytest.fixture
def running() -> Any:
    """``with running(Worker(app, ...)) as worker:`` runs it in a thread."""
    return RunningWorker


@pytest.fixture
def until() -> Any:
    return wait_for


@pytest.fixture
def counter(
    redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """The counter test app (tests/apps/counter.py), bound to this test's
    Redis and namespace, for tests that also run it in worker processes."""
    import tests.apps.counter as module

    bind_app(module.app, redis_url, namespace)
    monkeypatch.setattr(module, "RUNS", f"{namespace}:test:runs")
    monkeypatch.setattr(module, "STARTS", f"{namespace}:test:starts")
    yield module
    module.app.close()
