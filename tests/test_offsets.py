"""Offsets: moving a group's position, replays into a new group, topics."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner

import taskq.keeper
from taskq import TaskQ, Worker, defaults, offsets
from taskq.cli import main
from taskq.partitioning import partition_for
from tests.support import bind_app, wait_for

APP = "tests.apps.events_app:app"


@pytest.fixture
def events(backend_url: str, namespace: str) -> Iterator[Any]:
    import tests.apps.events_app as module

    bind_app(module.app, backend_url, namespace)
    module.SEEN.clear()
    yield module
    module.app.close()


@pytest.fixture
def operator(events: Any) -> Iterator[TaskQ]:
    """Another process's view of the same topics (an operator's command,
    or a producer with counts of its own)."""
    other = TaskQ(events.app.url, namespace=events.app.keys.namespace)
    yield other
    other.close()


def cli(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def reset(group: str, to: str, *options: str) -> Any:
    """``taskq groups reset`` of topic "events"."""
    return cli(
        "groups",
        "reset",
        APP,
        "--group",
        group,
        "--topic",
        "events",
        "--to",
        to,
        *options,
    )


def replay(*options: str) -> Any:
    """``taskq groups replay`` of topic "events" into group "backfill"."""
    return cli(
        "groups", "replay", APP, "--topic", "events", "--group", "backfill", *options
    )


def _publish_in_two_batches(app: Any) -> str:
    for n in range(1, 6):
        app.publish("events", n, key=n)
    time.sleep(0.01)
    middle = datetime.now(UTC).isoformat()
    time.sleep(0.01)
    for n in range(6, 11):
        app.publish("events", n, key=n)
    return middle


def test_reset_to_a_time_delivers_exactly_what_came_after(events: Any) -> None:
    app = events.app
    middle = _publish_in_two_batches(app)
    Worker(app, burst=True, groups=["audit"]).run(install_signals=False)
    assert sorted(events.SEEN) == list(range(1, 11))
    events.SEEN.clear()

    result = reset("audit", middle, "--yes")
    assert result.exit_code == 0, result.output
    assert "5 entries will be delivered again, 0 skipped." in result.output
    Worker(app, burst=True, groups=["audit"]).run(install_signals=False)
    assert sorted(events.SEEN) == [6, 7, 8, 9, 10]

    events.SEEN.clear()
    result = reset("audit", "earliest", "--yes")
    assert "10 entries will be delivered again" in result.output
    result = reset("audit", "latest", "--yes")
    assert "0 entries will be delivered again, 10 skipped." in result.output
    Worker(app, burst=True, groups=["audit"]).run(install_signals=False)
    assert events.SEEN == []


def test_reset_refuses_while_members_run(events: Any, running: Any) -> None:
    app = events.app
    app.publish("events", 1)
    with running(Worker(app, groups=["audit"])) as worker:
        worker.keeper._heartbeat()
        refused = reset("audit", "earliest", "--yes")
        assert refused.exit_code == 1
        assert "live members" in refused.output and worker.id in refused.output
        forced = reset("audit", "earliest", "--yes", "--force")
        assert forced.exit_code == 0, forced.output


def test_bad_positions_are_clear_errors(events: Any) -> None:
    events.app.publish("events", 1)
    Worker(events.app, burst=True, groups=["audit"]).run(install_signals=False)
    naive = reset("audit", "2026-01-01T00:00:00")
    assert naive.exit_code == 1 and "no time zone" in naive.output
    nonsense = reset("audit", "yesterday")
    assert nonsense.exit_code == 1 and "not earliest, latest" in nonsense.output
    unknown = reset("nobody", "earliest")
    assert unknown.exit_code == 1 and "does not read" in unknown.output


def test_reset_refuses_a_time_in_the_future(events: Any) -> None:
    app = events.app
    app.publish("events", 1)
    Worker(app, burst=True, groups=["audit"]).run(install_signals=False)
    stream = app.keys.partition("events", 0).stream
    before = app.redis.xinfo_groups(stream)
    later = datetime.fromtimestamp(time.time() + 3600, UTC).isoformat()
    refused = reset("audit", later, "--yes")
    assert refused.exit_code == 1
    assert "in the future" in refused.output and "Traceback" not in refused.output
    assert app.redis.xinfo_groups(stream) == before
    # A time just past is still fine.
    past = datetime.fromtimestamp(time.time() - 1, UTC).isoformat()
    assert reset("audit", past, "--yes").exit_code == 0


def test_replay_a_time_range_into_a_new_group(events: Any) -> None:
    app = events.app
    start = datetime.now(UTC).isoformat()
    time.sleep(0.01)
    for n in range(1, 6):
        app.publish("events", n, key=n)
    time.sleep(0.01)
    end = datetime.now(UTC).isoformat()
    time.sleep(0.01)
    for n in range(6, 9):
        app.publish("events", n, key=n)
    result = replay("--from", start, "--to", end)
    assert result.exit_code == 0, result.output
    Worker(app, burst=True, groups=["backfill"]).run(install_signals=False)
    assert sorted(events.SEEN) == [-5, -4, -3, -2, -1]
    listed = cli("groups", "list", APP).output
    assert "events/backfill" in listed and "replay ends at" in listed
    again = replay("--from", start)
    assert again.exit_code == 1 and "already" in again.output


def test_topics_create_describe_and_change(events: Any) -> None:
    app = events.app
    created = cli("topics", "create", APP, "fresh", "--partitions", "3")
    assert "created with 3 partitions" in created.output
    app.publish("events", 1, key=1)
    listed = cli("topics", "list", APP).output
    assert "fresh" in listed and "events" in listed
    described = cli("topics", "describe", APP, "events").output
    assert described.count("\n") >= 3
    refused = cli("topics", "create", APP, "events", "--partitions", "4")
    assert refused.exit_code == 1 and "map to another partition" in refused.output
    changed = cli("topics", "create", APP, "events", "--partitions", "4", "--force")
    assert changed.exit_code == 0 and "now has 4 partitions (was 2)" in changed.output
    shrink = cli("topics", "create", APP, "events", "--partitions", "1", "--force")
    assert shrink.exit_code == 1 and "still holds messages" in shrink.output


def test_producers_follow_a_changed_partition_count(
    events: Any, operator: TaskQ, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = events.app
    app.publish("events", 1, key="a")  # the count (2) is cached now
    offsets.set_partitions(operator, "events", 4, force=True)
    monkeypatch.setattr(defaults, "PARTITIONS_REFRESH_S", 0.0)
    key = next(k for k in map(str, range(100)) if partition_for(k, 4) == 3)
    app.publish("events", 2, key=key)
    assert app.redis.xlen(app.keys.partition("events", 3).stream) == 1


def test_a_partition_whose_entries_are_handled_may_be_dropped(
    events: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(defaults, "PARTITIONS_REFRESH_S", 0.0)
    app = events.app
    for n in range(1, 9):
        app.publish("events", n, key=n)
    Worker(app, burst=True).run(install_signals=False)
    assert sorted(events.SEEN) == sorted([*range(1, 9), *range(-8, 0)])
    shrunk = cli("topics", "create", APP, "events", "--partitions", "1", "--force")
    assert shrunk.exit_code == 0, shrunk.output
    assert "now has 1 partitions (was 2)" in shrunk.output


def test_a_worker_stops_to_restart_when_the_count_changes(
    events: Any, operator: TaskQ, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(taskq.keeper, "HEARTBEAT_S", 0.5)
    worker = Worker(events.app)
    thread = threading.Thread(target=worker.run, args=(False,), daemon=True)
    thread.start()
    wait_for(worker.started.is_set, timeout=10)
    offsets.set_partitions(operator, "events", 3, force=True)
    thread.join(15)
    assert not thread.is_alive()
    assert worker.restart_needed


def test_messages_sent_during_a_shrink_are_moved_to_the_partitions_left(
    events: Any, operator: TaskQ, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(defaults, "PARTITIONS_REFRESH_S", 0.5)
    app = events.app
    producer = operator  # sends with the count it read before the change
    assert producer.partitions("spread") == 4
    result: list[str] = []
    shrink = threading.Thread(
        target=lambda: result.append(
            offsets.set_partitions(app, "spread", 2, force=True)
        )
    )
    shrink.start()
    wait_for(lambda: app.redis.hget(app.keys.topics, "spread") == b"2", timeout=5)
    # This producer still has the old count for up to half a second.
    for n in range(20):
        producer.publish("spread", n, key=f"user-{n}")
    shrink.join(10)
    lengths = [app.redis.xlen(app.keys.partition("spread", p).stream) for p in range(4)]
    assert lengths[2:] == [0, 0] and sum(lengths) == 20
    assert "moved" in result[0]
