"""A small HTTP server for taskq's read-only pages: a worker's metrics and
the dashboard. Each path maps to a function that makes the response at
request time; the server runs in a daemon thread (or in the caller's, for
``taskq dashboard``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from taskq.errors import TaskqError

log = logging.getLogger("taskq.serving")

#: A response: status, content type, body.
Response = tuple[int, str, bytes]


class Server:
    """Answers GET requests for ``routes`` (path -> response maker)."""

    def __init__(
        self,
        what: str,
        host: str,
        port: int,
        routes: Mapping[str, Callable[[], Response]],
    ) -> None:
        self.what = what

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                make = routes.get(self.path.split("?", 1)[0])
                if make is None:
                    self.send_error(404, "try " + ", ".join(routes))
                    return
                status, kind, body = make()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("%s " + format, self.address_string(), *args)

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise TaskqError(
                f"cannot serve {what} on {host}:{port}: {exc.strerror or exc}"
            ) from None
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._server.server_address[0]!s}:{self.port}/"

    def start(self) -> None:
        """Serve from a daemon thread."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="taskq-http", daemon=True
        )
        self._thread.start()

    def serve_forever(self) -> None:
        """Serve from this thread, until :meth:`stop` or an exception."""
        self._server.serve_forever()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(2.0)
        self._server.server_close()
