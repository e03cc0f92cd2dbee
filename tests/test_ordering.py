"""Ordered handlers: partition ownership, one message at a time per key.

Case 13 of the shared scenarios (per-key order across retries and
concurrency), the assignment of partitions to members, and rebalancing as
workers join and leave.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict
from typing import Any

import pytest

import taskq
from taskq import Context, TaskQ, Worker, partition_for
from taskq.ownership import assign
from tests.support import wait_for
from tests.test_worker import dead_letters, pending

# -- the assignment ------------------------------------------------------------


def test_assignment_is_balanced() -> None:
    parts = list(range(8))
    for members in (["a"], ["a", "b"], ["a", "b", "c"], list("abcdefghij")):
        result = assign(parts, members, {})
        sizes = sorted(len(v) for v in result.values())
        assert sum(sizes) == 8 and sizes[-1] - sizes[0] <= 1
        assert sorted(p for v in result.values() for p in v) == parts


def test_assignment_is_sticky() -> None:
    parts = list(range(8))
    before = assign(parts, ["a", "b"], {})
    owners = {p: m for m, ps in before.items() for p in ps}
    after = assign(parts, ["a", "b", "c"], owners)
    moved = [p for p in parts if p not in after[owners[p]]]
    assert len(moved) == 2  # only what the newcomer needs for its share
    assert sorted(after["c"]) == sorted(moved)
    owners = {p: m for m, ps in after.items() for p in ps}
    gone = assign(parts, ["a", "c"], owners)
    assert set(after["a"]) <= set(gone["a"]) and set(after["c"]) <= set(gone["c"])


def test_members_that_see_the_same_state_agree() -> None:
    owners = {0: "b", 1: "b", 2: "b", 3: None, 4: "a", 5: "zombie", 6: None, 7: "c"}
    results = [
        assign(range(8), order, owners) for order in (["a", "b", "c"], ["c", "a", "b"])
    ]  # type: ignore[arg-type]
    assert results[0] == results[1]


# -- case 13: per-key order across retries ---------------------------------------


def _keys() -> tuple[str, str, str]:
    k1 = "k1"
    k2 = next(
        f"k2-{n}"
        for n in range(100)
        if partition_for(f"k2-{n}", 4) != partition_for(k1, 4)
    )
    k3 = next(
        f"k3-{n}"
        for n in range(100)
        if partition_for(f"k3-{n}", 4) == partition_for(k1, 4)
    )
    return k1, k2, k3


def _ordered_app(
    app: TaskQ, fail_k1_2: int
) -> tuple[Any, list[tuple[str, int, int, float, float]]]:
    app.topic("accounts", partitions=4)
    log: list[tuple[str, int, int, float, float]] = []
    lock = threading.Lock()

    @app.task(
        topic="accounts", key="key", ordered=True, retries=2, backoff=2.0, lease=3
    )
    def apply(key: str, seq: int, ctx: Context) -> None:
        start = time.time()
        time.sleep(0.1)
        with lock:
            log.append((key, seq, ctx.attempt, start, time.time()))
        if key == "k1" and seq == 2 and ctx.attempt <= fail_k1_2:
            raise RuntimeError("retryable")

    return apply, log


def _starts(log: list[Any], key: str) -> list[tuple[int, int]]:
    return [
        (seq, attempt)
        for k, seq, attempt, _, _ in sorted(log, key=lambda e: e[3])
        if k == key
    ]


def _no_overlap(log: list[Any]) -> None:
    by_key: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for key, _, _, start, end in log:
        by_key[key].append((start, end))
    for spans in by_key.values():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end


def test_a_retry_keeps_its_place_in_its_key(app: TaskQ, running: Any) -> None:
    apply, log = _ordered_app(app, fail_k1_2=1)
    k1, k2, k3 = _keys()
    with running(Worker(app, concurrency=4)), running(Worker(app, concurrency=4)):
        sent = time.time()
        for seq in range(1, 6):
            apply.send(k1, seq)
            apply.send(k2, seq)
        apply.send(k3, 1)
        apply.send(k3, 2)
        wait_for(lambda: len(log) >= 13, timeout=15)
    assert _starts(log, k1) == [(1, 1), (2, 1), (2, 2), (3, 1), (4, 1), (5, 1)]
    k1_runs = sorted((e for e in log if e[0] == k1), key=lambda e: e[3])
    assert k1_runs[2][3] - k1_runs[1][4] >= 2.0  # the backoff, in place
    k2_runs = [e for e in log if e[0] == k2]
    assert [seq for _, seq, _, _, _ in sorted(k2_runs, key=lambda e: e[3])] == [
        1,
        2,
        3,
        4,
        5,
    ]
    assert max(end for *_, end in k2_runs) - sent <= 1.5
    assert _starts(log, k3) == [(1, 1), (2, 1)]
    _no_overlap(log)
    assert dead_letters(app, "accounts") == []
    assert pending(app, "accounts") == 0


def test_an_exhausted_message_is_set_aside_and_its_key_goes_on(
    app: TaskQ, running: Any
) -> None:
    apply, log = _ordered_app(app, fail_k1_2=99)
    k1 = "k1"
    with running(Worker(app, concurrency=4)), running(Worker(app, concurrency=4)):
        for seq in range(1, 6):
            apply.send(k1, seq)
        wait_for(lambda: len(log) >= 7, timeout=20)
    assert [seq for seq, _ in _starts(log, k1)] == [1, 2, 2, 2, 3, 4, 5]
    [record] = dead_letters(app, "accounts")
    assert (record[b"key"], record[b"attempts"]) == (b"k1", b"3")
    assert record[b"message:payload"] == b'{"key":"k1","seq":2}'
    k1_runs = sorted(log, key=lambda e: e[3])
    dead_at = int(record[b"dead_at"]) / 1000
    assert all(start >= dead_at - 0.05 for _, seq, _, start, _ in k1_runs if seq > 2)
    _no_overlap(log)


# -- ownership and rebalancing -----------------------------------------------------


def _parts(pks: Any) -> list[int]:
    return sorted(pk.partition for pk in pks)


def _state(app: TaskQ, workers: list[Worker]) -> str:
    """What to look at when a rebalance does not settle."""
    lines = [f"owners: {_owners(app, 'events', app.task_group)}"]
    for w in workers:
        h = w.holdings
        lines.append(
            f"{w.id}: unfinished={h.unfinished} parked={h.parked} "
            f"held={sum(len(e) for e in h.held.values())} "
            f"reading={_parts(pk for s in w.subscriptions for pk in s.reading)} "
            f"accepting={_parts(pk for s in w.subscriptions for pk in s.accepting)} "
            f"tokens={_parts(pk for o in w.ownerships.values() for pk in o.tokens)}"
        )
    return "\n".join(lines)


def _owners(app: TaskQ, topic: str, group: str) -> dict[int, str | None]:
    result: dict[int, str | None] = {}
    for p in range(app.partitions(topic)):
        value = app.redis.get(app.keys.partition(topic, p).owner(group))
        result[p] = value.decode().rsplit("|", 1)[0] if value else None
    return result


@pytest.mark.redis
def test_partitions_follow_the_members(redis_app: TaskQ, running: Any) -> None:
    app = redis_app
    app.topic("events", partitions=8)
    active: dict[str, int] = defaultdict(int)
    clash: list[str] = []
    done: list[int] = []
    lock = threading.Lock()

    @app.task(topic="events", key="key", ordered=True, lease=1.5)
    def handle(key: str, n: int) -> None:
        with lock:
            active[key] += 1
            if active[key] > 1:
                clash.append(key)
        time.sleep(0.002)
        with lock:
            active[key] -= 1
            done.append(n)

    lease = 1.5
    keys = [f"user-{i}" for i in range(32)]

    def feed(start: int, count: int) -> None:
        handle.send_many(
            [{"key": keys[n % 32], "n": n} for n in range(start, start + count)]
        )

    def settled(workers: list[Worker]) -> bool:
        owners = _owners(app, "events", app.task_group)
        ids = {w.id for w in workers}
        if set(owners.values()) != ids:
            return False
        counts = [list(owners.values()).count(i) for i in ids]
        return max(counts) - min(counts) <= 1

    workers = [Worker(app, concurrency=4, lease=lease) for _ in range(3)]
    with running(workers[0]):
        feed(0, 200)
        wait_for(lambda: settled(workers[:1]), timeout=lease)
        with running(workers[1]), running(workers[2]):
            feed(200, 200)
            changed = time.monotonic()
            wait_for(lambda: settled(workers), timeout=3 * lease)
            assert time.monotonic() - changed <= lease
            feed(400, 200)
            wait_for(
                lambda: len(done) >= 600,
                timeout=20,
                what=f"600 done; state at start:\n{_state(app, workers)}",
            )
        # two left gracefully: their partitions came back at once
        wait_for(lambda: settled(workers[:1]), timeout=lease)
        with running(Worker(app, concurrency=4, lease=lease)) as fourth:
            wait_for(lambda: settled([workers[0], fourth]), timeout=3 * lease)
            feed(600, 200)
            wait_for(lambda: len(done) >= 800, timeout=20)
    assert sorted(done) == list(range(800))
    assert clash == []
    assert pending(app, "events") == 0


def test_unordered_tasks_are_not_held_back_by_keys(app: TaskQ, running: Any) -> None:
    app.topic("free", partitions=1)
    active = 0
    peak = 0
    lock = threading.Lock()

    @app.task(topic="free", key="key")
    def free(key: str) -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.2)
        with lock:
            active -= 1

    for _ in range(4):
        free.send("same")
    with running(Worker(app, concurrency=4)):
        wait_for(lambda: pending(app, "free") == 0 and peak > 0, timeout=10)
    assert peak > 1


def test_ordered_option_is_validated(app: TaskQ) -> None:
    with pytest.raises(taskq.ConfigurationError, match="lease"):

        @app.task(ordered=True, lease=-1)
        def bad() -> None: ...


def test_a_hand_over_called_off_resumes_the_partition(
    redis_app: TaskQ, running: Any
) -> None:
    """A worker asked to give up a partition while one of its handlers runs
    must take it up again when the newcomer leaves before that finishes."""
    app = redis_app
    app.topic("flap", partitions=2)
    done: list[tuple[str, int]] = []
    release = threading.Event()

    @app.task(topic="flap", key="key", ordered=True, lease=1.5)
    def step(key: str, n: int) -> None:
        if n == 0:
            release.wait(10)
        done.append((key, n))

    keys = [k for k in "abcdefgh" if partition_for(k, 2) == 0][:1] + [
        k for k in "abcdefgh" if partition_for(k, 2) == 1
    ][:1]
    first = Worker(app, concurrency=4, lease=1.5)
    with running(first):
        for key in keys:
            step.send(key, 0)
        wait_for(lambda: all(_owners(app, "flap", app.task_group).values()), timeout=5)
        second = Worker(app, concurrency=4, lease=1.5)
        with running(second):
            # The newcomer's share is refused while the long handler runs.
            time.sleep(1.5)
            assert set(_owners(app, "flap", app.task_group).values()) == {first.id}
        # The newcomer left: the first worker keeps (or gets back) both.
        for key in keys:
            for n in range(1, 4):
                step.send(key, n)
        release.set()
        wait_for(lambda: len(done) == 8, timeout=15)
    for key in keys:
        assert [n for k, n in done if k == key] == [0, 1, 2, 3]
    assert pending(app, "flap") == 0


def test_one_retrying_key_does_not_stop_the_others(
    app: TaskQ, running: Any, monkeypatch: Any
) -> None:
    """A key waiting out a long retry holds up only its own partition once
    too many of its messages wait; other partitions and topics go on."""
    import taskq.holdings

    monkeypatch.setattr(taskq.holdings, "PARK_LIMIT", 20)
    app.topic("hot", partitions=2)
    app.topic("free", partitions=1)
    hot = "a"
    cool = next(k for k in "bcdefgh" if partition_for(k, 2) != partition_for(hot, 2))
    ran: list[str] = []

    @app.task(topic="hot", key="key", ordered=True, retries=1, backoff=30)
    def work(key: str, n: int, ctx: Context) -> None:
        if key == hot and n == 0 and ctx.attempt == 1:
            raise RuntimeError("try again in 30 s")
        ran.append(f"{key}{n}")

    @app.task(topic="free")
    def other(n: int) -> None:
        ran.append(f"free{n}")

    work.send(hot, 0)
    work.send_many([{"key": hot, "n": n} for n in range(1, 60)])
    with running(Worker(app, concurrency=4)):
        wait_for(lambda: not ran or True, timeout=1)
        time.sleep(1.0)  # the hot key's backlog fills its partition's share
        work.send_many([{"key": cool, "n": n} for n in range(5)])
        other.send_many([(n,) for n in range(5)])
        wait_for(
            lambda: (
                {f"{cool}{n}" for n in range(5)} | {f"free{n}" for n in range(5)}
                <= set(ran)
            ),
            timeout=10,
        )
    assert not any(r.startswith(hot) for r in ran)


def test_a_joining_worker_takes_its_share_soon(redis_app: TaskQ, running: Any) -> None:
    """Partitions handed to a newcomer are not left unread until its next
    regular ownership pass (a quarter lease): it looks again soon while
    its share is on the way."""
    app = redis_app
    app.topic("moves", partitions=4)

    @app.task(topic="moves", key="key", ordered=True, lease=20)
    def handle(key: str) -> None: ...

    first = Worker(app, lease=20)
    with running(first):
        wait_for(lambda: len(_owned(first)) == 4, timeout=10)
        second = Worker(app, lease=20)
        with running(second):
            joined = time.monotonic()
            wait_for(lambda: len(_owned(second)) == 2, timeout=15)
            # The first worker sees the newcomer at its next pass (within
            # 5 s); the newcomer takes what is given up within 0.5 s.
            assert time.monotonic() - joined < 7.0


def _owned(worker: Worker) -> list[int]:
    return [pk.partition for o in worker.ownerships.values() for pk in o.tokens]
