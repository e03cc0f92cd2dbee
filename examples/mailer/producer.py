"""Feeds the mailer from a file of signups and notifications.

``python -m taskq_mailer.producer [FILE]``: each line is a JSON object,
``{"type": "signup", ...}`` or ``{"type": "notification", ...}``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from taskq_mailer.app import Notification, app, send_welcome

INPUT = "signups_and_notifications.jsonl"


def records(path: Path | None = None) -> Iterator[dict[str, Any]]:
    text = (
        path.read_text()
        if path is not None
        else resources.files("taskq_mailer").joinpath(INPUT).read_text()
    )
    for line in text.splitlines():
        if line.strip():
            yield json.loads(line)


def produce(path: Path | None = None) -> dict[str, int]:
    """Send everything in the file; returns how many of each were sent."""
    signups = []
    counts = {"signups": 0, "notifications": 0, "urgent": 0}
    for record in records(path):
        if record["type"] == "signup":
            signups.append({"to": record["email"], "name": record["name"]})
            counts["signups"] += 1
        else:
            event = Notification.model_validate(record)
            app.publish("notifications", event, key=event.user_id)
            counts["notifications"] += 1
            counts["urgent"] += event.urgent
    # Signups go in one batch: one round trip to Redis per thousand.
    send_welcome.send_many(signups)
    return counts


if __name__ == "__main__":
    print(produce(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
