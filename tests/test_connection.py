"""URLs that name one server: each kind connects."""

from __future__ import annotations

from pathlib import Path

from taskq import TaskQ, Worker
from tests.support import RedisServer


def test_a_unix_socket_url_connects(
    redis_server: RedisServer, tmp_path: Path, namespace: str
) -> None:
    socket = tmp_path / "redis.sock"
    server = RedisServer(
        redis_server.binary, tmp_path, extra_args=["--unixsocket", str(socket)]
    )
    server.start()
    try:
        app = TaskQ(f"unix://{socket}?db=0", namespace=namespace)
        ran: list[int] = []

        @app.task
        def job(n: int) -> None:
            ran.append(n)

        job.send(1)
        Worker(app, burst=True).run(install_signals=False)
        assert ran == [1]
        app.close()
    finally:
        server.stop()
