"""The web dashboard (``taskq dashboard``): its data, and its page in a real
headless browser."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from taskq import TaskQ, Worker
from taskq.dashboard import DashboardServer

#: Chromium, as Debian installs it (or as CHROMIUM names it).
CHROMIUM = os.environ.get("CHROMIUM") or next(
    (
        found
        for name in ("chromium", "chromium-browser", "google-chrome")
        if (found := shutil.which(name))
    ),
    None,
)


@pytest.fixture
def shown(redis_app: TaskQ) -> Iterator[tuple[TaskQ, DashboardServer]]:
    """An app with a topic, a dead letter, a worker record and a periodic
    job, and a dashboard of it on a free loopback port."""
    app = redis_app
    app.topic("mail", partitions=2)

    @app.task(topic="mail", retries=0)
    def deliver(n: int) -> None:
        if n < 0:
            raise RuntimeError("mailbox full")

    @app.periodic("0 8 * * *", tz="Europe/Berlin")
    def morning() -> None: ...

    deliver.send_many([(1,), (2,), (-1,)])
    Worker(app, burst=True).run(install_signals=False)
    deliver.send(3)  # waits: lag 1
    server = DashboardServer(app, "127.0.0.1", 0)
    server.start()
    yield app, server
    server.stop()


def _get(url: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.headers["Content-Type"], response.read()


def test_the_snapshot_has_what_the_page_shows(shown: Any) -> None:
    _, server = shown
    kind, body = _get(server.url + "api/snapshot")
    assert kind == "application/json"
    data = json.loads(body)
    mail = [p for p in data["partitions"] if p["topic"] == "mail"]
    assert [p["partition"] for p in mail] == [0, 1]
    assert sum(p["dead"] for p in mail) == 1
    groups = [g for p in mail for g in p["groups"]]
    assert sum(g["lag"] for g in groups) == 1
    assert sum(g["pending"] for g in groups) == 0
    [job] = data["schedules"]
    assert (job["name"], job["cron"], job["tz"]) == (
        "morning",
        "0 8 * * *",
        "Europe/Berlin",
    )
    assert job["next"].endswith(("+01:00", "+02:00"))
    kind, page = _get(server.url)
    assert kind.startswith("text/html") and b"api/snapshot" in page


def test_unknown_paths_are_not_found(shown: Any) -> None:
    _, server = shown
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(server.url + "secrets", timeout=10)
    assert missing.value.code == 404
    missing.value.close()


def test_the_page_renders_in_a_headless_browser(shown: Any) -> None:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is needed for the dashboard's browser test in CI")
        pytest.skip("chromium is not installed")
    _, server = shown
    with tempfile.TemporaryDirectory(prefix="taskq-chromium-") as profile:
        result = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=5000",
                "--dump-dom",
                server.url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    dom = result.stdout
    assert "<table" in dom, result.stderr[-2000:]
    # The script ran and filled the tables from /api/snapshot.
    assert "Updated " in dom, dom[-3000:]
    assert "<td>mail</td>" in dom
    assert "<td>morning</td>" in dom
    assert "<td>Europe/Berlin</td>" in dom
    assert 'class="n bad">1</td>' in dom  # the dead letter stands out
