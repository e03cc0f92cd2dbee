"""What a handler may learn about the message it is running for."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Context:
    """Passed to a handler that declares a parameter annotated ``Context``.

    ::

        @app.task(retries=5)
        def charge(order_id: int, ctx: Context) -> None:
            log.info("attempt %d of %d", ctx.attempt, ctx.max_attempts)
    """

    topic: str
    partition: int
    #: The id ``send`` returned (``TOPIC:PARTITION:ENTRY_ID``); the same on
    #: every attempt, so it serves as an idempotency key.
    message_id: str
    key: str | None
    #: 1 for the first attempt.
    attempt: int
    max_attempts: int
    group: str
    worker: str
    #: The cron tick a periodic job or digest runs for, else ``None``.
    scheduled_at: datetime | None = None
    #: Ticks this run stands for that did not run on time: with
    #: ``catchup="latest"`` the missed ticks coalesced into it, counting
    #: its own; 1 for a late run with ``catchup="all"``; 0 for a run on
    #: time.
    missed: int = 0
    #: The stream entry id of this copy of the message. Unlike
    #: ``message_id`` it changes when a retry writes a new copy.
    entry_id: str = ""
