"""The command line, through click's CliRunner and as a real process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime
from typing import Any

import pytest
from click.testing import CliRunner

from taskq import Worker
from taskq.cli import main

APP = "tests.apps.cli_app:app"


@pytest.fixture
def cli(backend_url: str, namespace: str, monkeypatch: Any) -> Any:
    monkeypatch.setenv("TASKQ_URL", backend_url)
    monkeypatch.setenv("TASKQ_TEST_NAMESPACE", namespace)
    import tests.apps.cli_app as module

    # The module's app reads the environment at import: build it afresh.
    module.app.url = backend_url
    module.app.keys.namespace = namespace
    module.app._client = None
    module.app._scripts = None
    module.app._partitions.clear()
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Any:
        return runner.invoke(main, list(args), input=input, catch_exceptions=False)

    invoke.app = module.app  # type: ignore[attr-defined]
    return invoke


@pytest.mark.parametrize(
    "path, message",
    [
        ("nope.module:app", "no module named 'nope'"),
        ("tests.apps.cli_app:missing", "has no attribute 'missing'"),
        ("tests.apps.cli_app:not_an_app", "not a taskq.TaskQ app"),
        ("tests.apps.cli_app", "is not MODULE:ATTRIBUTE"),
    ],
)
def test_a_wrong_app_path_is_one_line(path: str, message: str) -> None:
    result = CliRunner().invoke(main, ["stats", path])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_send_stats_and_dead_letters(cli: Any) -> None:
    app = cli.app
    result = cli("send", APP, "call_api", '{"k": "a", "n": 1}')
    assert result.exit_code == 0, result.output
    assert result.output.startswith("calls:")
    assert cli("send", APP, "call_api", '["b", -1]').exit_code == 0
    bad = cli("send", APP, "call_api", '{"k": "a", "n": "x"}')
    assert bad.exit_code == 1 and "invalid arguments for task 'call_api'" in bad.output
    assert "Traceback" not in bad.output
    app.publish("events", {"fail": 1}, key="c")

    stats = json.loads(cli("stats", APP, "--json").output)
    assert sum(p["length"] for p in stats["partitions"] if p["topic"] == "calls") == 2
    assert sum(p["length"] for p in stats["partitions"] if p["topic"] == "events") == 1

    Worker(app, burst=True).run(install_signals=False)
    table = cli("stats", APP).output
    assert "tasks" in table and "audit" in table and "No live workers." in table

    listed = cli("dlq", "list", APP).output
    assert "retries_exhausted" in listed and "call_api" in listed and "audit" in listed
    lines = [
        json.loads(line)
        for line in cli("dlq", "list", APP, "--json").output.splitlines()
    ]
    by_group = {line["group"]: line for line in lines}
    assert by_group["tasks"]["error"] == "RuntimeError upstream 503"
    assert by_group["tasks"]["key"] == "b"
    assert by_group["audit"]["error"] == "ValueError bad event"
    assert "Traceback" in by_group["audit"]["traceback"]

    only = cli("dlq", "list", APP, "--topic", "calls", "--json").output
    [failed] = [json.loads(line) for line in only.splitlines()]
    replayed = cli("dlq", "replay", APP, "--id", failed["id"])
    assert replayed.exit_code == 0 and "Replayed 1" in replayed.output
    assert "call_api" not in cli("dlq", "list", APP).output
    # The replay goes to the task group only, with its attempts reset.
    Worker(app, burst=True).run(install_signals=False)
    [again] = [
        json.loads(line)
        for line in cli(
            "dlq", "list", APP, "--topic", "calls", "--json"
        ).output.splitlines()
    ]
    assert again["attempts"] == "1" and again["key"] == "b"

    refused = cli("dlq", "purge", APP, input="n\n")
    assert refused.exit_code == 1
    purged = cli("dlq", "purge", APP, "--yes")
    assert purged.exit_code == 0 and "Deleted" in purged.output
    assert "No dead letters." in cli("dlq", "list", APP).output


@pytest.mark.parametrize("delay", ["nan", "inf", "-inf", "-1"])
def test_send_refuses_a_delay_that_is_not_a_time(cli: Any, delay: str) -> None:
    result = cli("send", APP, "call_api", '{"k": "a", "n": 1}', "--delay", delay)
    assert result.exit_code == 2
    assert "--delay" in result.output
    assert "Traceback" not in result.output
    app = cli.app
    for p in range(2):
        pk = app.keys.partition("calls", p)
        assert app.redis.xlen(pk.stream) == 0
        assert app.redis.zcard(pk.delayed) == 0


def test_replay_needs_ids_or_all(cli: Any) -> None:
    result = cli("dlq", "replay", APP)
    assert result.exit_code == 2 and "--id" in result.output


def test_the_demo_runs_end_to_end(tmp_path: Any) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "taskq", "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    received = re.search(r"mails received by the sink (\d+) of (\d+)", result.stdout)
    assert received is not None and received[1] == received[2]
    # 150 welcome mails, 50 urgent ones, and at least one digest per user
    # with notifications that were not urgent.
    assert int(received[1]) >= 240
    assert "covering 250 of 250 notifications" in result.stdout


def test_schedule_list_and_run(cli: Any, running: Any, until: Any) -> None:
    from taskq.clock import ManualClock
    from taskq.digest import window_sizes

    app = cli.app
    app.clock = ManualClock(datetime.fromisoformat("2026-12-08T09:30:00+00:00"))
    try:
        listed = cli("schedule", "list", APP).output
        lines = {line.split()[0]: line for line in listed.splitlines()[1:]}
        assert lines["hourly"].split()[1:6] == ["job", "0", "*", "*", "*"]
        assert "Europe/Berlin  skip" in lines["hourly"]
        assert "2026-12-08T11:00:00+01:00" in lines["hourly"]
        assert "digest" in lines["morning"]
        assert "0 open, 0 in batches" in lines["morning"]

        ran = cli("schedule", "run", APP, "hourly", "--tick", "2026-12-08T10:00")
        assert ran.exit_code == 0, ran.output
        assert ran.output == "Sent hourly for 2026-12-08T10:00:00+01:00.\n"
        again = cli("schedule", "run", APP, "hourly", "--tick", "2026-12-08T09:00:00Z")
        assert again.output == (
            "hourly ran for 2026-12-08T10:00:00+01:00 already; nothing to do.\n"
        )
        assert "2026-12-08T10:00:00+01:00" in cli("schedule", "list", APP).output

        for user in ("ada", "bob", "ada"):
            app.publish("notes", {"user": user}, key=user)
        with running(Worker(app)):
            until(lambda: window_sizes(app, app.schedules["morning"].digest) == (3, 0))
            assert "3 open, 0 in batches" in cli("schedule", "list", APP).output
            # Collected at 10:30 exactly, so a close at 10:30 leaves them open.
            assert "0 event(s)" in cli("schedule", "run", APP, "morning").output
            app.clock.advance(60)
            closed = cli("schedule", "run", APP, "morning")
            assert closed.output == (
                "Closed morning for 2026-12-08T10:31:00+01:00: "
                "3 event(s) in 2 batch(es).\n"
            )
            until(lambda: window_sizes(app, app.schedules["morning"].digest) == (0, 0))
        repeated = cli(
            "schedule", "run", APP, "morning", "--tick", "2026-12-08T10:31:00+01:00"
        )
        assert "already; nothing to do" in repeated.output

        future = cli("schedule", "run", APP, "hourly", "--tick", "2030-01-01T00:00Z")
        assert future.exit_code == 2 and "is in the future" in future.output
        unknown = cli("schedule", "run", APP, "nightly")
        assert unknown.exit_code == 2
        assert "no periodic job or digest 'nightly'; there are: hourly, morning" in (
            unknown.output
        )
        garbled = cli("schedule", "run", APP, "hourly", "--tick", "yesterday")
        assert garbled.exit_code == 2
        assert "'yesterday' is not an ISO 8601 time" in garbled.output
    finally:
        from taskq.clock import SystemClock

        app.clock = SystemClock()
