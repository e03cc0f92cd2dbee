"""Turning a URL into a Redis client, and Redis errors into taskq errors.

Supported URLs:

* ``redis://[user:password@]host:port/db`` and ``rediss://`` (TLS);
* ``unix:///path/to/redis.sock?db=0``;
* ``redis+cluster://[user:password@]host:port[,host:port...]``: a Redis
  Cluster, found through any of the nodes listed (startup nodes);
* ``redis+sentinel://host:port[,host:port...]/SERVICE[?db=N]``: the master
  of ``SERVICE`` as the listed sentinels name it, followed through
  failovers; a user and password in the URL are the master's, and
  ``sentinel_password`` in the query is the sentinels' own;
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
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import redis
import redis.exceptions
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterNode
from redis.retry import Retry
from redis.sentinel import Sentinel

from taskq import defaults
from taskq.cluster import ClusterClient, scripts_in_cluster_pipelines
from taskq.errors import ConfigurationError, ConnectionError

CLUSTER_SCHEME = "redis+cluster"
SENTINEL_SCHEME = "redis+sentinel"

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
    # One retry, on a lost connection only: after a timeout the server may
    # have carried the commands out, and sending them again would write
    # every message of a batch twice.
    return Retry(
        ExponentialWithJitterBackoff(base=0.05, cap=0.5),
        retries=1,
        supported_errors=(redis.exceptions.ConnectionError,),
    )


def _socket_options(
    socket_timeout: float = defaults.SOCKET_TIMEOUT_S,
    client_name: str | None = None,
    tcp: bool = True,
) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_connect_timeout": min(defaults.CONNECT_TIMEOUT_S, socket_timeout),
        "socket_timeout": socket_timeout,
        "health_check_interval": 30,
    }
    if client_name:
        options["client_name"] = client_name
    if tcp:  # a Unix socket connection refuses the option
        options["socket_keepalive"] = True
    return options


def connect(
    url: str,
    client_name: str | None = None,
    socket_timeout: float = defaults.SOCKET_TIMEOUT_S,
) -> redis.Redis:
    """Return a client for ``url``.

    ``client_name`` names its connections (``CLIENT LIST`` shows it);
    ``socket_timeout`` bounds the wait for any reply, in seconds.

    Nothing is sent until the client is used, except to a cluster: its
    client asks the nodes for the slot map at once, and raises
    :class:`taskq.ConnectionError` when none answers. A cluster client is
    typed as a plain client: taskq sends it only commands and pipelines
    that both accept (each touching one slot).
    """
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return _memory_client(url)
    options = _socket_options(socket_timeout, client_name, tcp=scheme != "unix")
    if scheme == CLUSTER_SCHEME:
        return _cluster_client(url, options)  # type: ignore[return-value]
    if scheme == SENTINEL_SCHEME:
        return _sentinel_client(url, options)
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(
            f"unsupported Redis URL {redact(url)!r}: use redis://, rediss://, "
            "unix://, redis+cluster://, redis+sentinel:// or memory://"
        )
    try:
        return redis.Redis.from_url(url, retry=_retry(), **options)
    except ValueError as exc:
        raise ConfigurationError(f"invalid Redis URL {redact(url)!r}: {exc}") from None


def is_cluster(url: str) -> bool:
    return urlsplit(url).scheme == CLUSTER_SCHEME


def _invalid(url: str, problem: str) -> ConfigurationError:
    return ConfigurationError(f"invalid Redis URL {redact(url)!r}: {problem}")


def _credentials(url: str) -> dict[str, str]:
    parts = urlsplit(url)
    found = {}
    if parts.username:
        found["username"] = unquote(parts.username)
    if parts.password is not None:
        found["password"] = unquote(parts.password)
    return found


def _hosts(url: str, default_port: int) -> list[tuple[str, int]]:
    """The ``host:port`` list of a cluster or sentinel URL."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    hosts = []
    for item in netloc.split(","):
        host, port = item.strip(), str(default_port)
        if host.startswith("["):  # [IPv6]:port
            address, _, rest = host[1:].partition("]")
            host, port = address, rest.removeprefix(":") or port
        elif ":" in host:
            host, port = host.rsplit(":", 1)
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise _invalid(url, f"{item!r} is not host:port")
        hosts.append((host, int(port)))
    return hosts


def _cluster_client(url: str, options: dict[str, Any]) -> ClusterClient:
    if not scripts_in_cluster_pipelines():
        raise ConfigurationError(
            f"redis-py {redis.__version__} cannot send Lua scripts in a cluster "
            "pipeline, which taskq needs on a Redis Cluster; upgrade it: "
            "pip install 'redis>=8.2'"
        )
    parts = urlsplit(url)
    if parts.path.strip("/") or parts.query:
        raise _invalid(
            url,
            "a cluster URL is redis+cluster://host:port[,host:port...] "
            "(a cluster has no databases to choose)",
        )
    nodes = [
        ClusterNode(host, port)  # type: ignore[no-untyped-call]
        for host, port in _hosts(url, defaults.REDIS_PORT)
    ]
    with translate_errors(url):
        return ClusterClient(
            startup_nodes=nodes,
            retry=_retry(),
            **_credentials(url),
            **options,
        )


def _sentinel_client(url: str, socket_options: dict[str, Any]) -> redis.Redis:
    parts = urlsplit(url)
    service = parts.path.strip("/")
    if not service or "/" in service:
        raise _invalid(
            url,
            "name the service: redis+sentinel://host:port[,host:port...]/SERVICE",
        )
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    db = query.pop("db", "0")
    sentinel_password = query.pop("sentinel_password", None)
    if query:
        raise _invalid(url, f"unknown option(s) {', '.join(sorted(query))}")
    if not db.isdigit():
        raise _invalid(url, f"db must be a number, not {db!r}")
    sentinel_options: dict[str, Any] = {
        "socket_connect_timeout": defaults.CONNECT_TIMEOUT_S,
        "socket_timeout": defaults.CONNECT_TIMEOUT_S,
    }
    if sentinel_password is not None:
        sentinel_options["password"] = sentinel_password
    sentinel = Sentinel(
        _hosts(url, defaults.SENTINEL_PORT), sentinel_kwargs=sentinel_options
    )
    options: dict[str, Any] = {"db": int(db), "retry": _retry()}
    options.update(_credentials(url), **socket_options)
    client: redis.Redis = sentinel.master_for(unquote(service), **options)
    return client


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


#: The redis-py errors that mean "the server is not reachable right now".
#: On a cluster that includes a cluster that is failing over: its nodes
#: answer CLUSTERDOWN until a replica has taken over the failed master's
#: slots, and the client gives up when no node answers at all.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    OSError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
    # redis-py 8.2 and newer say so when no node of a cluster answers.
    getattr(redis.exceptions, "RedisClusterUnreachableError", OSError),
)


def unreachable(url: str, exc: BaseException) -> ConnectionError:
    """The :class:`taskq.ConnectionError` for a redis-py connection error."""
    return ConnectionError(f"cannot reach Redis at {redact(url)}: {exc}")


@contextlib.contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """Re-raise redis-py's connection errors as :class:`taskq.ConnectionError`."""
    try:
        yield
    except CONNECTION_ERRORS as exc:
        raise unreachable(url, exc) from exc


class Outage:
    """Backoff and logging while Redis is unreachable, shared by threads.

    Each thread that meets a connection error calls :meth:`failed` and
    sleeps for the delay it returns (capped exponential backoff with full
    jitter, per thread); the first failure of an outage is logged as a
    warning and its end as info, however many threads notice them. The
    outage ends when every thread that met it has got through again: on a
    cluster whose one master is failing over, threads that talk to the
    other masters keep succeeding all along, and say nothing about it.
    """

    def __init__(self, url: str, logger: Any, *, starting: bool = False) -> None:
        self.url = redact(url)
        self.log = logger
        #: Not connected yet: the first failure is "cannot reach", not "lost".
        self._starting = starting
        self._lock = threading.Lock()
        self._since = 0.0
        #: Threads that failed and have not got through since.
        self._failing: set[int] = set()
        self._local = threading.local()

    @property
    def down(self) -> bool:
        return bool(self._failing)

    def failed(self, exc: BaseException) -> float:
        with self._lock:
            if not self._failing:
                self._since = time.monotonic()
                self.log.warning(
                    "%s Redis at %s (%s); retrying.",
                    "Cannot reach" if self._starting else "Lost the connection to",
                    self.url,
                    exc,
                )
            self._failing.add(threading.get_ident())
        tries = getattr(self._local, "tries", 0)
        self._local.tries = tries + 1
        ceiling = min(defaults.RECONNECT_MAX_S, defaults.RECONNECT_MIN_S * 2**tries)
        return random.uniform(defaults.RECONNECT_MIN_S / 2, ceiling)

    def recovered(self) -> None:
        self._local.tries = 0
        if not self._failing:
            return
        with self._lock:
            ident = threading.get_ident()
            if ident not in self._failing:
                return
            self._failing.discard(ident)
            if not self._failing:
                self.log.info(
                    "Reconnected to Redis at %s after %.1f s.",
                    self.url,
                    time.monotonic() - self._since,
                )
