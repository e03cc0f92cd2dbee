"""A local SMTP server that writes every mail it receives to a folder.

Run it alone with ``python -m taskq_mailer.sink FOLDER [PORT]``; the demo
starts one on a free loopback port.
"""

from __future__ import annotations

import email
import re
import socket
import sys
import threading
import time
from email.policy import default
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class FolderHandler:
    """Keeps each mail as ``<Message-ID>.eml``: a resent copy replaces the
    first, so the folder holds each mail once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.received = 0
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        mail = email.message_from_bytes(content, policy=default)
        name = re.sub(
            r"[^A-Za-z0-9_.@-]", "_", str(mail["Message-ID"] or time.time_ns())
        )
        (self.folder / f"{name}.eml").write_bytes(content)
        with self._lock:
            self.received += 1
        return "250 Message accepted for delivery"

    def unique(self) -> int:
        return len(list(self.folder.glob("*.eml")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(folder: Path, port: int | None = None) -> tuple[Controller, FolderHandler]:
    folder.mkdir(parents=True, exist_ok=True)
    handler = FolderHandler(folder)
    controller = Controller(handler, hostname="127.0.0.1", port=port or free_port())
    controller.start()
    return controller, handler


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "mailbox")
    controller, handler = start(target, int(sys.argv[2]) if len(sys.argv) > 2 else 8025)
    print(f"SMTP sink on 127.0.0.1:{controller.port}, writing to {target}/")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        controller.stop()
