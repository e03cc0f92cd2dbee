"""Ordered handlers across real worker processes that join, leave, die
and stall."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import bind_app, wait_for, worker_process
from tests.test_worker import dead_letters, pending

pytestmark = [pytest.mark.redis, pytest.mark.slow]

APP = "tests.apps.ordered:app"


@pytest.fixture
def ordered(
    redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    import tests.apps.ordered as module

    bind_app(module.app, redis_url, namespace)
    monkeypatch.setattr(module, "LOG", f"{namespace}:test:log")
    yield module
    module.app.close()


class Procs:
    def __init__(self, url: str, namespace: str) -> None:
        self.url, self.namespace = url, namespace
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        proc = worker_process(APP, self.url, self.namespace, *args, env=env)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()


@pytest.fixture
def procs(redis_url: str, namespace: str) -> Iterator[Procs]:
    group = Procs(redis_url, namespace)
    yield group
    group.close()


def _owner_pids(module: Any) -> set[int]:
    app = module.app
    pids = set()
    for p in range(app.partitions("orders")):
        value = app.redis.get(app.keys.partition("orders", p).owner("tasks"))
        if value is None:
            return set()  # a partition without owner: not settled yet
        pids.add(int(value.decode().rsplit("|", 1)[0].split("-")[-2]))
    return pids


def _log(module: Any) -> list[dict[str, Any]]:
    return [json.loads(x) for x in module.app.redis.lrange(module.LOG, 0, -1)]


def test_per_key_order_while_workers_join_leave_and_die(
    ordered: Any, procs: Procs
) -> None:
    keys = [f"key-{i}" for i in range(20)]
    total = 500
    ordered.step.send_many(
        [{"key": key, "seq": seq} for seq in range(1, total + 1) for key in keys]
    )
    w1 = procs.start("-c", "4")
    time.sleep(1.0)
    w2 = procs.start("-c", "4")
    w3 = procs.start("-c", "4")
    time.sleep(1.5)
    w2.send_signal(signal.SIGTERM)
    procs.start("-c", "4")
    time.sleep(1.5)
    wait_for(lambda: w3.pid in _owner_pids(ordered), timeout=10)
    w3.kill()
    killed = time.monotonic()
    # The dead worker's partitions pass to live ones once its lease (2 s)
    # runs out, plus at most one ownership pass.
    wait_for(
        lambda: _owner_pids(ordered) and w3.pid not in _owner_pids(ordered), timeout=10
    )
    assert time.monotonic() - killed <= 2.0 * 1.25 + 0.5
    wait_for(
        lambda: len({(e["key"], e["seq"]) for e in _log(ordered)}) == 20 * total,
        timeout=120,
        interval=0.2,
    )
    assert w2.wait(10) == 0
    assert w1.poll() is None

    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in _log(ordered):
        runs[entry["key"]].append(entry)
    for key, entries in runs.items():
        entries.sort(key=lambda e: e["start"])
        seqs = [e["seq"] for e in entries]
        # In send order; a message may run twice only when a worker died
        # after running it and before acknowledging it, and then the copy
        # comes right after the first run.
        assert seqs == sorted(seqs), key
        assert sorted(set(seqs)) == list(range(1, total + 1)), key
        for before, after in itertools.pairwise(entries):
            assert after["start"] >= before["t"], (key, before, after)
    wait_for(lambda: pending(ordered.app, "orders") == 0, timeout=10)
    assert dead_letters(ordered.app, "orders") == []


def test_a_stalled_owner_acknowledges_nothing_it_lost(
    ordered: Any, procs: Procs
) -> None:
    ordered.app.topic("orders", partitions=1)
    env = {"TASKQ_TEST_PARTITIONS": "1"}
    for seq in (1, 2):
        ordered.step.send("k", seq, sleep=3.0, flaky=False)
    w1 = procs.start("-c", "1", env=env)
    wait_for(lambda: any(e["event"] == "start" for e in _log(ordered)), timeout=20)
    w1.send_signal(signal.SIGSTOP)
    w2 = procs.start("-c", "1", env=env)
    # W2 takes the partition once W1's lease (2 s) has run out, and runs the
    # entry W1 held again.
    wait_for(
        lambda: any(
            e["event"] == "start" and e["pid"] == w2.pid for e in _log(ordered)
        ),
        timeout=20,
    )
    w1.send_signal(signal.SIGCONT)
    wait_for(
        lambda: any(e["event"] == "end" and e["pid"] == w1.pid for e in _log(ordered)),
        timeout=10,
    )
    stream = ordered.app.keys.partition("orders", 0).stream
    time.sleep(0.3)  # W1 would settle its outcome now
    still = ordered.app.redis.xpending_range(stream, "tasks", "-", "+", 10)
    assert [p["consumer"].decode() for p in still] != []
    assert all(f"-{w2.pid}-" in p["consumer"].decode() for p in still)

    wait_for(
        lambda: (
            [
                e["seq"]
                for e in _log(ordered)
                if e["event"] == "end" and e["pid"] == w2.pid
            ]
            == [1, 2]
        ),
        timeout=20,
    )
    wait_for(lambda: pending(ordered.app, "orders") == 0, timeout=10)
    w1.send_signal(signal.SIGTERM)
    output, _ = w1.communicate(timeout=20)
    assert "Lost partition 0 of orders/tasks" in output.decode()


def test_a_dead_owner_charges_only_the_message_it_was_running(
    ordered: Any, procs: Procs
) -> None:
    """Messages waiting behind their key never ran: a crash must not count
    an attempt against them (with no retries, it would dead-letter them)."""
    for seq in range(1, 9):
        ordered.once.send("hot", seq, 0.5)
    w1 = procs.start("-c", "2")
    wait_for(
        lambda: [e for e in _log(ordered) if e["event"] == "start" and e["seq"] == 3],
        timeout=20,
    )
    w1.kill()
    running = 3
    procs.start("-c", "2")
    wait_for(
        lambda: (
            {e["seq"] for e in _log(ordered) if e["pid"] != w1.pid} >= set(range(4, 9))
        ),
        timeout=20,
    )
    wait_for(lambda: pending(ordered.app, "orders") == 0, timeout=10)
    [record] = dead_letters(ordered.app, "orders")
    assert record[b"reason"] == b"worker_lost"
    assert record[b"message:payload"] == b'{"key":"hot","seq":%d,"sleep":0.5}' % running
    later = [e for e in _log(ordered) if e["pid"] != w1.pid]
    assert [e["seq"] for e in later] == [4, 5, 6, 7, 8]
    assert all(e["attempt"] == 1 for e in later)


def test_a_worker_killed_during_a_retry_delay_costs_no_attempt(
    ordered: Any, procs: Procs
) -> None:
    """The next attempt of an ordered message is counted when it starts:
    a worker that dies while it waits out the retry delay used nothing."""
    ordered.retrying.send("r", 1)
    w1 = procs.start("-c", "1")
    wait_for(lambda: [e for e in _log(ordered) if e["event"] == "start"], timeout=20)
    time.sleep(0.5)  # the first attempt failed; its retry waits 3 s
    w1.kill()
    procs.start("-c", "1")
    wait_for(lambda: [e for e in _log(ordered) if e["event"] == "end"], timeout=30)
    starts = [e for e in _log(ordered) if e["event"] == "start"]
    assert [e["attempt"] for e in starts] == [1, 2]
    assert dead_letters(ordered.app, "orders") == []
