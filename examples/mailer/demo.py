"""The whole mailing system in one process: ``taskq demo``.

Starts the SMTP sink on a free loopback port, a worker (with a scheduler,
for the digests) in a thread, and the producer; waits until every
notification went through a digest and every mail has reached the sink;
prints a summary. Digests go out every two seconds here instead of daily.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import click

TIMEOUT_S = 45.0

#: The demo's digest schedule: every two seconds (seconds come first).
DIGEST_CRON = "*/2 * * * * *"


def run(url: str = "memory://demo", mailbox: Path | None = None) -> int:
    """Run the demo; returns the exit status (0 when every mail arrived)."""
    os.environ["TASKQ_URL"] = url
    os.environ.setdefault("MAILER_DIGEST_CRON", DIGEST_CRON)
    from taskq_mailer import sink
    from taskq_mailer.app import app, digest_users, digested, kinds, sent
    from taskq_mailer.producer import produce

    from taskq import Worker

    folder = mailbox or Path(tempfile.mkdtemp(prefix="taskq-demo-"))
    controller, mailbox_handler = sink.start(folder)
    os.environ["MAILER_SMTP_HOST"] = "127.0.0.1"
    os.environ["MAILER_SMTP_PORT"] = str(controller.port)
    click.echo(
        f"SMTP sink listening on 127.0.0.1:{controller.port}, mail goes to {folder}/"
    )

    worker = Worker(app, concurrency=8, beat=True)
    thread = threading.Thread(target=worker.run, kwargs={"install_signals": False})
    started = time.monotonic()
    thread.start()
    counts = produce()
    click.echo(
        f"Sent {counts['signups']} signups and {counts['notifications']} "
        f"notifications ({counts['urgent']} urgent); waiting for the mails and "
        f"for digests ({os.environ['MAILER_DIGEST_CRON']!r}, Berlin time)..."
    )

    def done() -> bool:
        # Every notification went through a digest, and every mail sent
        # (welcome, urgent, digest) is in the mailbox.
        expected = counts["signups"] + counts["urgent"]
        return (
            digested["events"] >= counts["notifications"]
            and sum(sent.values()) >= expected
            and mailbox_handler.unique() >= sum(sent.values())
        )

    while not done() and time.monotonic() - started < TIMEOUT_S:
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    worker.stop()
    thread.join(30)
    controller.stop()

    expected = sum(sent.values())
    received = mailbox_handler.unique()
    click.echo()
    click.echo(f"  mails sent by the worker   {expected}")
    for subject, count in sorted(sent.items()):
        click.echo(f"    {subject:<22} {count}")
    click.echo(f"  mails received by the sink {received} of {expected}")
    click.echo(
        f"  digests                    {sent['Digest']} for {len(digest_users)} users, "
        f"covering {digested['events']} of {counts['notifications']} notifications"
    )
    click.echo(f"  notifications by kind      {dict(sorted(kinds.items()))}")
    click.echo(f"  time taken                 {elapsed:.2f} s")
    if not done():
        click.echo(
            f"Not done within {TIMEOUT_S:g} s: {received} of {expected} mails arrived, "
            f"{digested['events']} of {counts['notifications']} notifications "
            "digested.",
            err=True,
        )
        return 1
    return 0
