"""Real worker processes against a real Redis: the end-to-end contract."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from taskq import TaskQ
from tests.support import ROOT, worker_process
from tests.test_worker import pending

pytestmark = pytest.mark.redis


def test_two_burst_workers_run_every_task_once(
    counter: Any, redis_url: str, namespace: str
) -> None:
    app, record = counter.app, counter.record
    keys = ["alpha", "beta", "gamma", "delta"]
    record.send_many([{"key": keys[n % 4], "n": n} for n in range(10_000)])
    workers = [
        worker_process(
            "tests.apps.counter:app", redis_url, namespace, "--burst", "-c", "4"
        )
        for _ in range(2)
    ]
    for worker in workers:
        output, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, output.decode()
    runs = app.redis.hgetall(counter.RUNS)
    assert len(runs) == 10_000
    assert set(runs.values()) == {b"1"}
    assert pending(app, "jobs") == 0

    stats = subprocess.run(
        [sys.executable, "-m", "taskq", "stats", "tests.apps.counter:app", "--json"],
        cwd=ROOT,
        env={"TASKQ_URL": redis_url, "TASKQ_TEST_NAMESPACE": namespace, "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    )
    partitions = json.loads(stats.stdout)["partitions"]
    assert len(partitions) == 4
    for partition in partitions:
        [group] = partition["groups"]
        assert (group["group"], group["lag"], group["pending"]) == ("tasks", 0, 0)


def test_worker_py_at_the_root_runs_a_worker(redis_app: TaskQ, namespace: str) -> None:
    app = redis_app
    app.topic("jobs", partitions=4)

    @app.task(topic="jobs", key="key", name="record")
    def record(key: str, n: int) -> None: ...

    record.send("k", 1)
    result = subprocess.run(
        [sys.executable, "worker.py", "tests.apps.counter:app", "--burst"],
        cwd=ROOT,
        env={"TASKQ_URL": app.url, "TASKQ_TEST_NAMESPACE": namespace, "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert app.redis.hgetall(f"{namespace}:test:runs") == {b"1": b"1"}


def test_processes_are_supervised(counter: Any, redis_url: str, namespace: str) -> None:
    import os
    import signal
    import time

    from tests.support import wait_for

    app, record = counter.app, counter.record
    record.send_many([{"key": f"k{n}", "n": n, "sleep": 0.01} for n in range(300)])
    parent = worker_process("tests.apps.counter:app", redis_url, namespace, "-p", "2")
    try:
        wait_for(lambda: len(_children(parent.pid)) == 2, timeout=20)
        first = _children(parent.pid)
        os.kill(first[0], signal.SIGKILL)
        wait_for(
            lambda: len(_children(parent.pid)) == 2 and _children(parent.pid) != first,
            timeout=20,
        )
        wait_for(lambda: app.redis.hlen(counter.RUNS) == 300, timeout=60)
        parent.send_signal(signal.SIGTERM)
        try:
            output, _ = parent.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            for child in _children(parent.pid):
                os.kill(child, signal.SIGKILL)
            parent.kill()
            output, _ = parent.communicate()
            raise AssertionError(
                "the workers did not stop:\n" + output.decode()
            ) from None
        assert parent.returncode == 0, output.decode()
        assert "starting another" in output.decode()
        time.sleep(0.1)
        assert _children(parent.pid) == []
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout:
            parent.stdout.close()


def _children(pid: int) -> list[int]:
    from pathlib import Path

    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.append(int(proc.name))
    return sorted(found)


def test_ctrl_c_on_the_process_group_stops_gracefully(
    counter: Any, redis_url: str, namespace: str
) -> None:
    """Ctrl-C in a terminal signals the supervisor and, without care, every
    child too; the running tasks must still finish."""
    import os
    import signal
    import subprocess
    import sys

    from tests.support import ROOT, wait_for

    app, record = counter.app, counter.record
    record.send_many([{"key": f"k{n}", "n": n, "sleep": 1.5} for n in range(4)])
    env = dict(os.environ, TASKQ_URL=redis_url, TASKQ_TEST_NAMESPACE=namespace)
    parent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskq",
            "worker",
            "tests.apps.counter:app",
            "-p",
            "2",
            "-c",
            "2",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: app.redis.llen(counter.STARTS) == 4, timeout=30)
        os.killpg(parent.pid, signal.SIGINT)
        output, _ = parent.communicate(timeout=30)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
    assert parent.returncode == 0, output.decode()
    assert "again" not in output.decode()
    assert app.redis.hlen(counter.RUNS) == 4


def test_a_worker_follows_a_change_of_the_partition_count(
    redis_url: str, namespace: str
) -> None:
    """``topics create --force`` on a running system: the worker restarts
    itself for the new count, producers follow, and messages on the new
    partitions are handled."""
    from taskq import offsets
    from taskq.partitioning import partition_for
    from tests.support import wait_for

    app = TaskQ(redis_url, namespace=namespace)

    @app.task(topic="jobs", key="key", name="record")
    def record(key: str, n: int) -> None: ...

    record.send("k", 0)
    runs = f"{namespace}:test:runs"
    worker = worker_process(
        "tests.apps.counter:app",
        redis_url,
        namespace,
        env={"TASKQ_TEST_PARTITIONS": "stored"},
    )
    try:
        wait_for(lambda: app.redis.hget(runs, "0"), timeout=20)
        offsets.set_partitions(app, "jobs", 6, force=True)
        keys = [k for k in map(str, range(100)) if partition_for(k, 6) >= 4][:4]
        for n, key in enumerate(keys, start=1):
            record.send(key, n)
        wait_for(lambda: app.redis.hlen(runs) == 5, timeout=40)
        assert worker.poll() is None
    finally:
        worker.terminate()
        output, _ = worker.communicate(timeout=30)
        app.close()
    assert "now has 6 partitions" in output.decode()
    assert worker.returncode == 0


def test_an_attached_process_count_starts_plain_children(
    counter: Any, redis_url: str, namespace: str
) -> None:
    """``-p2`` (the count attached to the flag) must start two workers,
    not two more supervisors."""
    import os
    import signal
    import time

    from tests.support import wait_for

    parent = worker_process("tests.apps.counter:app", redis_url, namespace, "-p2")
    try:
        wait_for(lambda: len(_children(parent.pid)) == 2, timeout=20)
        time.sleep(2.0)  # long enough for a child supervisor to start its own
        children = _children(parent.pid)
        assert len(children) == 2
        assert all(_children(child) == [] for child in children)
        parent.send_signal(signal.SIGTERM)
        output, _ = parent.communicate(timeout=60)
        assert parent.returncode == 0, output.decode()
    finally:
        if parent.poll() is None:
            for child in _children(parent.pid):
                os.kill(child, signal.SIGKILL)
            parent.kill()
            parent.wait()
        if parent.stdout:
            parent.stdout.close()


def test_sigterm_while_waiting_for_redis_exits_cleanly(namespace: str) -> None:
    """A worker started before its Redis waits for it; SIGTERM then ends
    it with status 0, as it would end a running worker."""
    import signal
    import time

    from tests.support import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    worker = worker_process("tests.apps.counter:app", url, namespace)
    try:
        time.sleep(2.0)
        assert worker.poll() is None
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=15)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        if worker.stdout:
            worker.stdout.close()
    assert worker.returncode == 0, output.decode()
    assert "Cannot reach Redis" in output.decode()
