"""``taskq demo``: the mailing example, end to end, with no setup."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click

from taskq.cli import LOG_LEVELS, setup_logging


@click.command()
@click.option(
    "--url", default="memory://demo", show_default=True, help="Redis to run on."
)
@click.option(
    "--mailbox",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the mails in this folder [default: a temporary one, removed].",
)
@click.option(
    "--log-level", type=click.Choice(LOG_LEVELS), default="warning", show_default=True
)
def demo(url: str, mailbox: Path | None, log_level: str) -> None:
    """Run the mailing example in one process: an SMTP sink, a worker and a
    producer that sends a few hundred mails; then print a summary."""
    setup_logging(log_level)
    try:
        from taskq_mailer.demo import run
    except ImportError as exc:
        raise click.ClickException(
            f"the demo needs its extras ({exc.name} is missing): "
            "pip install 'taskq[demo]'"
        ) from None
    if mailbox is not None:
        mailbox.mkdir(parents=True, exist_ok=True)
        sys.exit(run(url, mailbox))
    with tempfile.TemporaryDirectory(prefix="taskq-demo-") as folder:
        status = run(url, Path(folder))
    sys.exit(status)
