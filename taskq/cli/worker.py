"""``taskq worker``: run a worker (or several, with ``--processes``)."""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from taskq import defaults
from taskq.cli import load_app, logging_options, setup_logging, wait_for_redis
from taskq.connection import is_memory
from taskq.supervisor import INDEX_ENV

if TYPE_CHECKING:
    from taskq.metrics import MetricsServer
    from taskq.worker import Worker


class PrefetchType(click.ParamType):  # type: ignore[type-arg]
    """A number of entries >= 0, or "auto"."""

    name = "N|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        if value == "auto":
            return "auto"
        if isinstance(value, int):
            return value
        try:
            number = int(value)
        except ValueError:
            number = -1
        if number < 0:
            self.fail(f"{value!r} is not a number >= 0 or 'auto'", param, ctx)
        return number


def _split(values: tuple[str, ...]) -> list[str] | None:
    names = [
        name.strip() for value in values for name in value.split(",") if name.strip()
    ]
    return names or None


@click.command()
@click.argument("app")
@click.option(
    "--group",
    "groups",
    multiple=True,
    help="Serve only this consumer group (repeatable).",
)
@click.option(
    "--topics",
    "topics",
    multiple=True,
    help="Serve only these topics (comma-separated, repeatable).",
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    default=defaults.CONCURRENCY,
    show_default=True,
    help="Handler threads per process.",
)
@click.option(
    "--prefetch",
    type=PrefetchType(),
    default=None,
    help="Entries read ahead beyond those that can start at once: a number, "
    "or 'auto' (about 0.1 s of work at the handlers' pace) [default: 0].",
)
@click.option(
    "--processes",
    "-p",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes to run and supervise.",
)
@click.option(
    "--lease",
    type=click.FloatRange(min=0.1),
    default=defaults.LEASE_S,
    show_default=True,
    help="Seconds a silent worker keeps its entries before others take them "
    "(tasks may set their own).",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    default=defaults.SHUTDOWN_TIMEOUT_S,
    show_default=True,
    help="Seconds to let running tasks finish after SIGTERM.",
)
@click.option(
    "--burst", is_flag=True, help="Exit once every partition read is drained."
)
@click.option(
    "--beat",
    is_flag=True,
    help="Also run a scheduler: periodic jobs and digest windows (any number may).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    default=None,
    help="Serve Prometheus metrics on this port (/metrics); with --processes N, "
    "process i uses this port + i.",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics are served on.",
)
@logging_options
def worker(
    app: str,
    groups: tuple[str, ...],
    topics: tuple[str, ...],
    concurrency: int,
    prefetch: int | str | None,
    processes: int,
    lease: float,
    shutdown_timeout: float,
    burst: bool,
    beat: bool,
    metrics_port: int | None,
    metrics_host: str,
    log_level: str,
    log_config: str | None,
) -> None:
    """Run a worker for APP (module:attribute).

    SIGTERM or SIGINT stops it gracefully: it stops reading, lets running
    tasks finish (up to --shutdown-timeout), hands unstarted entries back
    to the group and exits 0. A second signal stops it at once.
    """
    setup_logging(log_level, log_config)
    if processes > 1:
        from taskq.supervisor import supervise

        argv = sys.argv[1:]
        sys.exit(supervise(processes, _child_args(argv)))
    from taskq.worker import Worker

    the_app = load_app(app)
    if is_memory(the_app.url):
        logging.getLogger("taskq.cli").warning(
            "%s is an in-process Redis: this worker sees only what this process "
            "sends. Set TASKQ_URL to a Redis server to share work between "
            "processes.",
            the_app.url,
        )
    wait_for_redis(the_app)
    instance = Worker(
        the_app,
        concurrency=concurrency,
        prefetch=prefetch,
        lease=lease,
        shutdown_timeout=shutdown_timeout,
        burst=burst,
        beat=beat,
        groups=_split(groups),
        topics=_split(topics),
    )
    server = _metrics_server(instance, metrics_host, metrics_port)
    try:
        code = instance.run()
    finally:
        if server is not None:
            server.stop()
    if instance.restart_needed:
        # A fresh process: every part of the worker is built for the new
        # partition counts (under --processes, the child keeps its pid).
        logging.getLogger("taskq.cli").info("Starting again.")
        argv = _child_args(sys.argv[1:])
        os.execv(argv[0], argv)
    sys.exit(code)


def _metrics_server(
    instance: Worker, host: str, port: int | None
) -> MetricsServer | None:
    if port is None:
        return None
    from taskq.metrics import MetricsServer

    if port:
        port += int(os.environ.get(INDEX_ENV, "0"))
    server = MetricsServer(instance, host, port)
    server.start()
    return server


def _child_args(argv: list[str]) -> list[str]:
    """The command line of one child: this one, with ``--processes 1`` put
    last (the last value of an option wins), whatever form the count was
    given in (``-p 2``, ``-p2``, ``--processes=2``, ...)."""
    return [sys.executable, "-m", "taskq", *argv, "--processes", "1"]
