"""A small mailing system on taskq.

* ``send_welcome``: a task, keyed by recipient, that mails a new user;
* ``notifications``: a topic of events; three consumer groups each
  receive every event: ``urgent-mail`` mails urgent ones at once,
  ``kinds`` counts them by kind (fan-out), and the digest
  ``daily_digest`` collects them per user and mails each user one digest
  of the rest a day, at 8:00 Berlin time (``MAILER_DIGEST_CRON`` sets
  another schedule; the demo sends one every two seconds).

Mail goes out over SMTP to ``MAILER_SMTP_HOST``:``MAILER_SMTP_PORT``
(default localhost:8025; ``sink.py`` is a local server that keeps what it
receives). The Redis comes from ``TASKQ_URL``.
"""

from __future__ import annotations

import collections
import os
import smtplib
import threading
from email.message import EmailMessage

from pydantic import BaseModel

from taskq import Context, TaskQ

app = TaskQ(namespace="mailer")
app.topic("emails", partitions=4)
app.topic("notifications", partitions=4)

SENDER = "taskq demo <noreply@example.org>"

#: When digests go out: cron, in Berlin time.
DIGEST_CRON = os.environ.get("MAILER_DIGEST_CRON", "0 8 * * *")

#: What this process did, for the demo's summary.
sent = collections.Counter[str]()
kinds = collections.Counter[str]()
#: Notifications that went through a digest (urgent ones included), and
#: the users who got a digest mail.
digested = collections.Counter[str]()
digest_users: set[str] = set()
_sent_lock = threading.Lock()


class Notification(BaseModel):
    user_id: str
    email: str
    kind: str
    text: str
    urgent: bool = False


_local = threading.local()


def deliver(to: str, subject: str, body: str, message_id: str) -> None:
    """Send one mail over SMTP, on a connection kept per thread.

    The Message-ID is derived from the taskq message id, so a mail that is
    sent twice (delivery is at least once) carries the same id both times
    and the receiving side can tell the copies apart.
    """
    mail = EmailMessage()
    mail["From"] = SENDER
    mail["To"] = to
    mail["Subject"] = subject
    # taskq message ids look like "topic:partition:entry"; a Message-ID
    # may not contain ':'.
    mail["Message-ID"] = f"<{message_id.replace(':', '.')}@taskq.example.org>"
    mail.set_content(body)
    for attempt in (1, 2):
        smtp = getattr(_local, "smtp", None)
        if smtp is None:
            smtp = _local.smtp = smtplib.SMTP(
                os.environ.get("MAILER_SMTP_HOST", "localhost"),
                int(os.environ.get("MAILER_SMTP_PORT", "8025")),
                timeout=10,
            )
        try:
            smtp.send_message(mail)
            break
        except smtplib.SMTPServerDisconnected:
            # The server closed an idle connection; open a new one once.
            _local.smtp = None
            if attempt == 2:
                raise
    with _sent_lock:
        sent[subject.split(":")[0]] += 1


@app.task(topic="emails", key="to", retries=5)
def send_welcome(to: str, name: str, ctx: Context) -> None:
    """Welcome a new user."""
    deliver(
        to,
        "Welcome: your account is ready",
        f"Hello {name},\n\nthanks for signing up.\n",
        f"welcome.{ctx.message_id}",
    )


@app.consumer("notifications", group="urgent-mail", retries=5)
def mail_urgent(event: Notification, ctx: Context) -> None:
    """Mail urgent notifications at once; the rest wait for the digest."""
    if event.urgent:
        deliver(
            event.email, f"Urgent: {event.kind}", event.text, f"urgent.{ctx.message_id}"
        )


@app.consumer("notifications", group="kinds")
def count_kind(event: Notification) -> None:
    """A second group: it sees every notification too."""
    with _sent_lock:
        kinds[event.kind] += 1


@app.digest(
    "notifications",
    key="user_id",
    cron=DIGEST_CRON,
    tz="Europe/Berlin",
    retries=5,
)
def daily_digest(user_id: str, events: list[Notification], ctx: Context) -> None:
    """One mail with a user's notifications since the last digest; urgent
    ones were mailed already and are left out."""
    waiting = [event for event in events if not event.urgent]
    if waiting:
        lines = "\n".join(f"- {event.text}" for event in waiting)
        deliver(
            waiting[0].email,
            f"Digest: {len(waiting)} new notification{'s' if len(waiting) > 1 else ''}",
            f"Since your last digest:\n\n{lines}\n",
            f"digest.{ctx.message_id}",
        )
    with _sent_lock:
        digested["events"] += len(events)
        if waiting:
            digest_users.add(user_id)
