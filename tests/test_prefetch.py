"""How many entries a worker reads ahead: none by default, a fixed number,
or ("auto") as many as follow from how long the tasks take."""

from __future__ import annotations

import time
from typing import Any

from taskq import TaskQ, Worker, defaults


def test_no_read_ahead_by_default(make_app: Any) -> None:
    app = make_app("memory://prefetch-none")
    worker = Worker(app, concurrency=4)
    worker.holdings.run_s = 1e-6
    assert worker.holdings.auto_capacity() == 4


def test_fixed_prefetch_is_kept(make_app: Any) -> None:
    app = make_app("memory://prefetch-fixed")
    worker = Worker(app, concurrency=4, prefetch=10)
    worker.holdings.run_s = 1e-6
    assert worker.holdings.auto_capacity() == 14


def test_automatic_prefetch_follows_task_duration(make_app: Any) -> None:
    app = make_app("memory://prefetch-auto")
    worker = Worker(app, concurrency=8, prefetch="auto")
    # Before any task ran: concurrency beyond the running ones.
    assert worker.holdings.auto_capacity() == 16
    # Microsecond tasks: as many as the cap allows.
    worker.holdings.run_s = 1e-6
    assert worker.holdings.auto_capacity() == 8 + defaults.PREFETCH_MAX
    # Ten-millisecond tasks: what 8 threads get through in the buffer time.
    worker.holdings.run_s = 0.01
    assert worker.holdings.auto_capacity() == 8 + int(
        8 * defaults.PREFETCH_BUFFER_S / 0.01
    )
    # Slow tasks are not hoarded: back to concurrency.
    worker.holdings.run_s = 5.0
    assert worker.holdings.auto_capacity() == 16


def test_worker_measures_its_tasks(app: TaskQ, running: Any, until: Any) -> None:
    done: list[int] = []

    @app.task(topic="jobs")
    def slow(n: int) -> None:
        time.sleep(0.15)
        done.append(n)

    slow.send_many([(n,) for n in range(4)])
    with running(Worker(app, concurrency=2, prefetch="auto")) as worker:
        until(lambda: len(done) == 4)
        assert 0.14 < worker.holdings.run_s < 2.0
        # 2 threads x 0.1 s / 0.15 s is below concurrency: the minimum.
        assert worker.holdings.auto_capacity() == 4
