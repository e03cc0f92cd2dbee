"""Helpers shared by the tests: a redis-server of our own, waiting."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent


def find_redis_server() -> str | None:
    return shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.01,
    what: str = "",
) -> Any:
    """Poll ``condition`` until it is truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what or condition}"
            )
        time.sleep(interval)


class RedisServer:
    """A redis-server on a free loopback port, in a folder of its own."""

    def __init__(
        self,
        binary: str,
        folder: Path,
        *,
        persistent: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.binary = binary
        self.folder = folder
        self.persistent = persistent
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.folder),
            "--save",
            "",
            "--appendonly",
            "yes" if self.persistent else "no",
            "--appendfsync",
            "always",
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            str(self.folder / "redis.log"),
            *self.extra_args,
        ]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            wait_for(
                lambda: self._pings(client), timeout=10, what="redis-server to start"
            )
        finally:
            client.close()

    @staticmethod
    def _pings(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


def bind_app(app: Any, url: str, namespace: str) -> Any:
    """Point a test app module's app at this test's Redis and namespace.

    The app's topic declarations are put back as the module made them, in
    case an earlier test changed them.
    """
    declared = getattr(app, "_declared_topics", None)
    if declared is None:
        declared = app._declared_topics = dict(app.topics)
    app.topics.clear()
    app.topics.update(declared)
    app.url = url
    app.keys.namespace = namespace
    app._client = None
    app._scripts = None
    app._partitions.clear()
    return app


def worker_process(
    app_path: str,
    url: str,
    namespace: str,
    *args: str,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``taskq worker APP`` as a separate process."""
    environment = dict(os.environ)
    environment.update(
        TASKQ_URL=url,
        TASKQ_TEST_NAMESPACE=namespace,
        PYTHONPATH=str(ROOT) + os.pathsep + environment.get("PYTHONPATH", ""),
    )
    environment.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "taskq", "worker", app_path, *args],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
