"""Turning a URL into a Redis client, and Redis errors into taskq errors.

Supported URLs:

* ``redis://[user:password@]host:port/db`` and ``rediss://`` (TLS);
* ``unix:///path/to/redis.sock?db=0``;
* ``memory://`` or ``memory://NAME``: an in-process Redis (fakeredis) shared
  by every app in the process that uses the same URL; for demos and tests.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from taskq import defaults
from taskq.errors import ConfigurationError, ConnectionError

_memory_servers: dict[str, Any] = {}
_memory_lock = threading.Lock()


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def _retry() -> Retry:
    # redis-py's own default retries ten times with growing sleeps; a
    # producer facing a dead server must fail within a bounded time instead.
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=2)


def connect(url: str) -> redis.Redis:
    """Return a client for ``url``; nothing is sent until it is used."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return _memory_client(url)
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(
            f"unsupported Redis URL {redact(url)!r}: use redis://, rediss://, "
            "unix:// or memory://"
        )
    try:
        return redis.Redis.from_url(
            url,
            socket_connect_timeout=defaults.CONNECT_TIMEOUT_S,
            socket_timeout=defaults.SOCKET_TIMEOUT_S,
            socket_keepalive=True,
            health_check_interval=30,
            retry=_retry(),
        )
    except ValueError as exc:
        raise ConfigurationError(f"invalid Redis URL {redact(url)!r}: {exc}") from None


def _memory_client(url: str) -> redis.Redis:
    try:
        import fakeredis
    except ImportError:
        raise ConfigurationError(
            "memory:// needs fakeredis; install it with: pip install 'taskq[memory]'"
        ) from None
    with _memory_lock:
        server = _memory_servers.get(url)
        if server is None:
            server = _memory_servers[url] = fakeredis.FakeServer()
    client: redis.Redis = fakeredis.FakeRedis(server=server)
    return client


def is_memory(url: str) -> bool:
    return urlsplit(url).scheme == "memory"


#: The redis-py errors that :func:`translate_errors` turns into taskq's.
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)


def unreachable(url: str, exc: BaseException) -> ConnectionError:
    """The :class:`taskq.ConnectionError` for a redis-py connection error."""
    return ConnectionError(f"cannot reach Redis at {redact(url)}: {exc}")


@contextlib.contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """Re-raise redis-py's connection errors as :class:`taskq.ConnectionError`."""
    try:
        yield
    except UNREACHABLE as exc:
        raise unreachable(url, exc) from exc


class Outage:
    """Backoff and logging while Redis is unreachable, shared by threads.

    Each thread that meets a connection error calls :meth:`failed` and
    sleeps for the delay it returns (capped exponential backoff with full
    jitter, per thread); the first failure of an outage is logged as a
    warning and its end as info, however many threads notice them.
    """

    def __init__(self, url: str, logger: Any) -> None:
        self.url = redact(url)
        self.log = logger
        self._lock = threading.Lock()
        self._since: float | None = None
        self._local = threading.local()

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException) -> float:
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()
                self.log.warning(
                    "Lost the connection to Redis at %s (%s); retrying.", self.url, exc
                )
        tries = getattr(self._local, "tries", 0)
        self._local.tries = tries + 1
        ceiling = min(defaults.RECONNECT_MAX_S, defaults.RECONNECT_MIN_S * 2**tries)
        return random.uniform(defaults.RECONNECT_MIN_S / 2, ceiling)

    def recovered(self) -> None:
        self._local.tries = 0
        if self._since is None:
            return
        with self._lock:
            if self._since is not None:
                self.log.info(
                    "Reconnected to Redis at %s after %.1f s.",
                    self.url,
                    time.monotonic() - self._since,
                )
                self._since = None


#: The redis-py errors that mean "the server is not reachable right now".
CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)
