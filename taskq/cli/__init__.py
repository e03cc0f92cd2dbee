"""The ``taskq`` command line.

Logging is configured here and only here: the library itself only logs
through ``taskq.*`` loggers.
"""

from __future__ import annotations

import importlib
import json
import logging
import logging.config
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from taskq.app import TaskQ
from taskq.connection import Outage
from taskq.errors import ConnectionError as TaskqConnectionError
from taskq.errors import TaskqError

LOG_FORMAT = (
    "%(asctime)s %(levelname)-7s %(name)s [%(process)d %(threadName)s] %(message)s"
)
LOG_LEVELS = ["debug", "info", "warning", "error"]


def logging_options(command: Any) -> Any:
    """``--log-level`` and ``--log-config``, for commands that keep running."""
    command = click.option(
        "--log-config",
        type=click.Path(exists=True, dir_okay=False),
        help="A JSON logging.config.dictConfig file (replaces --log-level).",
    )(command)
    return click.option(
        "--log-level",
        type=click.Choice(LOG_LEVELS),
        default="info",
        show_default=True,
    )(command)


def setup_logging(level: str, config_file: str | None = None) -> None:
    """Configure logging for a command: a dictConfig file, or a level."""
    if config_file:
        data = json.loads(Path(config_file).read_text())
        logging.config.dictConfig(data)
        return
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    # redis-py's own debug lines (a connection option the server lacks, say)
    # read like taskq's errors; taskq logs what matters of them itself.
    logging.getLogger("redis").setLevel(max(logging.INFO, logging.root.level))


def wait_for_redis(app: TaskQ) -> None:
    """Wait (with backoff) until Redis answers: a worker or scheduler may
    well start before its Redis does. SIGTERM stops the wait and exits 0,
    as it would stop a running worker; SIGINT aborts."""
    log = logging.getLogger("taskq.cli")
    outage = Outage(app.url, log, starting=True)

    def stop(signum: int, frame: Any) -> None:
        raise _Stopped

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            try:
                app.ping()
                outage.recovered()
                return
            except TaskqConnectionError as exc:
                time.sleep(outage.failed(exc))
    except _Stopped:
        log.info("SIGTERM: stopped before Redis answered.")
        sys.exit(0)
    except KeyboardInterrupt:
        raise click.Abort() from None
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Stopped(Exception):
    """SIGTERM while waiting for Redis."""


def load_app(path: str) -> TaskQ:
    """Import ``module:attribute`` and return the app it names."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise click.BadParameter(
            f"{path!r} is not MODULE:ATTRIBUTE, e.g. myproject.tasks:app",
            param_hint="APP",
        )
    # Like `python -m`, find modules in the current directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (
            module_name == exc.name or module_name.startswith(exc.name + ".")
        ):
            raise click.BadParameter(
                f"no module named {exc.name!r} (looked in the current directory "
                "and sys.path)",
                param_hint="APP",
            ) from None
        raise
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise click.BadParameter(
                f"module {module_name!r} has no attribute {attribute!r}",
                param_hint="APP",
            ) from None
    if not isinstance(target, TaskQ):
        raise click.BadParameter(
            f"{path} is not a taskq.TaskQ app (it is of type {type(target).__name__})",
            param_hint="APP",
        )
    return target


class AppGroup(click.Group):
    """Turns taskq's own errors into one-line messages, not tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TaskqError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=AppGroup)
@click.version_option(package_name="taskq")
def main() -> None:
    """taskq: a task queue on Redis Streams."""


def register_commands() -> None:
    from taskq.cli import admin, demo, ops, schedule, worker

    main.add_command(worker.worker)
    main.add_command(schedule.beat)
    main.add_command(schedule.schedule)
    main.add_command(admin.groups)
    main.add_command(admin.topics)
    main.add_command(ops.send)
    main.add_command(ops.stats)
    main.add_command(ops.dlq)
    main.add_command(ops.dashboard)
    main.add_command(demo.demo)


register_commands()
