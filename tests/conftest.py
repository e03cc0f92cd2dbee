"""Test fixtures: a real redis-server of the suite's own, apps, workers.

The suite never touches a Redis it did not start: the session starts
``redis-server`` on a free loopback port (persistence off) and stops it at
the end. Each test gets its own namespace, so tests never see each
other's keys. Without a ``redis-server`` binary the tests that need one are
skipped, or fail when the ``CI`` environment variable is set.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from taskq import TaskQ, Worker
from tests.support import RedisServer, bind_app, find_redis_server, wait_for

BACKENDS = ["memory", "redis"]


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
