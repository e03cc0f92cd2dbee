"""The whole mailing system in one process: ``taskq demo``.

Starts the SMTP sink on a free loopback port, a worker in a thread, and the
producer; waits until every mail has reached the sink; prints a summary.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import click

TIMEOUT_S = 60.0


def run(url: str = "memory://demo", mailbox: Path | None = None) -> int:
    """Run the demo; returns the exit status (0 when every mail arrived)."""
    os.environ["TASKQ_URL"] = url
    from taskq_mailer import sink
    from taskq_mailer.app import app, kinds, sent
    from taskq_mailer.producer import produce

    from taskq import Worker

    folder = mailbox or Path(tempfile.mkdtemp(prefix="taskq-demo-"))
    controller, mailbox_handler = sink.start(folder)
    os.environ["MAILER_SMTP_HOST"] = "127.0.0.1"
    os.environ["MAILER_SMTP_PORT"] = str(controller.port)
    click.echo(
        f"SMTP sink listening on 127.0.0.1:{controller.port}, mail goes to {folder}/"
    )

    worker = Worker(app, concurrency=8)
    thread = threading.Thread(target=worker.run, kwargs={"install_signals": False})
    started = time.monotonic()
    thread.start()
    counts = produce()
    expected = counts["signups"] + counts["urgent"]
    click.echo(
        f"Sent {counts['signups']} signups and {counts['notifications']} "
        f"notifications ({counts['urgent']} urgent); waiting for {expected} mails..."
    )
    while (
        mailbox_handler.unique() < expected and time.monotonic() - started < TIMEOUT_S
    ):
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    worker.stop()
    thread.join(30)
    controller.stop()

    received = mailbox_handler.unique()
    click.echo()
    click.echo(f"  mails sent by the worker   {sum(sent.values())}")
    for subject, count in sorted(sent.items()):
        click.echo(f"    {subject:<22} {count}")
    click.echo(f"  mails received by the sink {received} of {expected}")
    click.echo(f"  notifications by kind      {dict(sorted(kinds.items()))}")
    click.echo(f"  time taken                 {elapsed:.2f} s")
    if received < expected:
        click.echo(
            f"Only {received} of {expected} mails arrived within {TIMEOUT_S:g} s.",
            err=True,
        )
        return 1
    return 0
