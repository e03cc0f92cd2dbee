"""Schedulers and digest workers as real processes against a real Redis:
several schedulers with one stopped, workers killed mid-batch (case 17)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from typing import Any

import pytest
import redis

from taskq import TaskQ
from taskq.digest import window_sizes
from taskq.partitioning import partition_for
from taskq.scheduler import Scheduler
from tests.scheduling import ticks
from tests.support import (
    ROOT,
    RedisServer,
    find_redis_server,
    wait_for,
    worker_process,
)

pytestmark = pytest.mark.redis


def beat_process(url: str, namespace: str) -> subprocess.Popen[bytes]:
    environment = dict(os.environ)
    environment.update(
        TASKQ_URL=url,
        TASKQ_TEST_NAMESPACE=namespace,
        PYTHONPATH=str(ROOT) + os.pathsep + environment.get("PYTHONPATH", ""),
    )
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskq",
            "beat",
            "tests.apps.beat_app:app",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_beat_waits_for_redis_to_come_up(tmp_path: Any, namespace: str) -> None:
    binary = find_redis_server()
    if binary is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(binary, tmp_path)  # not started yet
    beat = beat_process(server.url, namespace)
    try:
        time.sleep(2.0)
        assert beat.poll() is None, beat.communicate()[0].decode()
        server.start()
        client = redis.Redis(port=server.port)
        try:
            wait_for(
                lambda: client.keys(f"{namespace}:*"),
                timeout=15,
                what="the scheduler to write its first run",
            )
        finally:
            client.close()
        beat.send_signal(signal.SIGTERM)
        output = beat.communicate(timeout=15)[0].decode()
        assert beat.returncode == 0, output
        assert "Traceback" not in output
    finally:
        if beat.poll() is None:
            beat.kill()
            beat.wait()
        server.stop()


@pytest.mark.slow
def test_three_schedulers_one_stopped_run_every_tick_once(
    make_app: Any, redis_url: str, namespace: str
) -> None:
    app = make_app(redis_url, namespace=namespace)

    @app.periodic("* * * * * *")
    def every_second() -> None: ...

    keys = app.keys.schedule("every_second")
    beats = [beat_process(redis_url, namespace) for _ in range(3)]
    try:
        wait_for(
            lambda: len(ticks(app, "every_second")) >= 3, timeout=15, what="first runs"
        )
        # Stop one, if possible while it holds the job's lock.
        victim = beats[0]
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            holder = app.redis.get(keys.lock)
            if holder and f"-{victim.pid}-" in holder.decode():
                break
            time.sleep(0.001)
        victim.send_signal(signal.SIGSTOP)
        stopped_at = time.time()
        time.sleep(7)
        victim.send_signal(signal.SIGCONT)
        time.sleep(4)
    finally:
        for beat in beats:
            beat.send_signal(signal.SIGCONT)
            beat.terminate()
        outputs = [beat.communicate(timeout=20)[0].decode() for beat in beats]
    assert [beat.returncode for beat in beats] == [0, 0, 0], outputs
    runs = ticks(app, "every_second")
    assert len(runs) == len(set(runs)), "a tick ran twice"
    seconds = [int(t.timestamp()) for t in runs]
    assert seconds == list(range(seconds[0], seconds[0] + len(seconds))), (
        "a tick was skipped"
    )
    assert stopped_at < seconds[-1] - 5 and len(seconds) >= 10
    # Covered within the lock's lifetime: no run was written much later
    # than its tick.
    delays = []
    for p in range(app.partitions("default")):
        stream = app.keys.partition("default", p).stream
        for entry_id, fields in app.redis.xrange(stream):
            delays.append(
                int(entry_id.split(b"-")[0]) / 1000 - int(fields[b"tick"]) / 1000
            )
    assert max(delays) < 8.0, max(delays)


# -- digests with worker processes (case 17, variants 3 and 4) ------------------


@pytest.fixture
def digest_app(redis_url: str, namespace: str) -> Any:
    import tests.apps.digest_app as module

    module.app.url = redis_url
    module.app.keys.namespace = namespace
    module.app._client = None
    module.app._scripts = None
    module.app._partitions.clear()
    yield module
    module.app.close()
    module.app._client = None
    module.app._scripts = None


def berlin(text: str) -> datetime:
    return datetime.fromisoformat(text + "+01:00")


def calls(module: Any) -> list[dict[str, Any]]:
    app: TaskQ = module.app
    return [json.loads(item) for item in app.redis.lrange(module.calls_key(app), 0, -1)]


def publish(module: Any, when: datetime, user: str, text: str) -> None:
    app: TaskQ = module.app
    module.app.clock.set(when.timestamp())
    before = window_sizes(app, module.daily_mail)[0]
    app.publish("notifications", module.Note(user_id=user, text=text), key=user)
    wait_for(
        lambda: window_sizes(app, module.daily_mail)[0] > before,
        timeout=15,
        what=f"{text} collected",
    )


def start_worker(
    module: Any, url: str, namespace: str, *, slow: bool = False
) -> subprocess.Popen[bytes]:
    return worker_process(
        "tests.apps.digest_app:app",
        url,
        namespace,
        "-c",
        "2",
        "--log-level",
        "warning",
        env={"TASKQ_TEST_SLOW": "1" if slow else ""},
    )


@pytest.mark.slow
def test_a_batch_survives_its_worker_being_killed(
    digest_app: Any, redis_url: str, namespace: str
) -> None:
    module = digest_app
    app: TaskQ = module.app
    module.app.clock.set(berlin("2026-12-07T00:00:00").timestamp())
    scheduler = Scheduler(app)
    scheduler.run_pending()
    first = start_worker(module, redis_url, namespace, slow=True)
    second = None
    try:
        publish(module, berlin("2026-12-07T10:00:00"), "u1", "e1")
        publish(module, berlin("2026-12-07T12:00:00"), "u2", "f1")
        publish(module, berlin("2026-12-07T23:59:59"), "u1", "e2")
        publish(module, berlin("2026-12-08T07:59:59.900"), "u1", "e3")
        module.app.clock.set(berlin("2026-12-08T08:00:00").timestamp())
        scheduler.run_pending()
        wait_for(
            lambda: (
                {c["key"] for c in calls(module) if c["done"]} == {"u2"}
                and any(c["key"] == "u1" for c in calls(module))
            ),
            timeout=15,
            what="u2's batch to finish and u1's to start",
        )
        time.sleep(0.3)  # u2's acknowledgement
        first.kill()
        first.communicate(timeout=10)
        second = start_worker(module, redis_url, namespace)
        publish(module, berlin("2026-12-08T08:00:00.500"), "u1", "e4")
        wait_for(
            lambda: sum(1 for c in calls(module) if c["done"]) == 2,
            timeout=20,
            what="T1's batches",
        )
        module.app.clock.set(berlin("2026-12-09T08:00:00").timestamp())
        scheduler.run_pending()
        wait_for(
            lambda: sum(1 for c in calls(module) if c["done"]) == 3,
            timeout=20,
            what="T2's batch",
        )
    finally:
        for worker in (first, second):
            if worker is not None and worker.poll() is None:
                worker.terminate()
                worker.communicate(timeout=30)
    done = Counter(
        (c["key"], tuple(c["texts"]), c["tick"]) for c in calls(module) if c["done"]
    )
    assert done == Counter(
        {
            ("u1", ("e1", "e2", "e3"), _utc_iso("2026-12-08T07:00:00")): 1,
            ("u2", ("f1",), _utc_iso("2026-12-08T07:00:00")): 1,
            ("u1", ("e4",), _utc_iso("2026-12-09T07:00:00")): 1,
        }
    )
    u1_t1 = [
        c
        for c in calls(module)
        if c["key"] == "u1" and c["tick"] == _utc_iso("2026-12-08T07:00:00")
    ]
    # Killed during attempt 1, then redelivered unchanged and run once more.
    assert [(c["attempt"], c["done"], c["texts"]) for c in u1_t1] == [
        (1, False, ["e1", "e2", "e3"]),
        (2, False, ["e1", "e2", "e3"]),
        (2, True, ["e1", "e2", "e3"]),
    ]
    assert window_sizes(app, module.daily_mail) == (0, 0)


def _utc_iso(text: str) -> str:
    return datetime.fromisoformat(text + "+00:00").isoformat()


@pytest.mark.slow
def test_no_event_is_lost_when_every_worker_stops(
    digest_app: Any, redis_url: str, namespace: str
) -> None:
    module = digest_app
    app: TaskQ = module.app
    module.app.clock.set(berlin("2026-12-07T00:00:00").timestamp())
    scheduler = Scheduler(app)
    scheduler.run_pending()
    worker = start_worker(module, redis_url, namespace)
    try:
        publish(module, berlin("2026-12-07T10:00:00"), "u3", "e1")
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
        assert worker.returncode == 0, output.decode()
        # Published while no worker runs: it waits in the topic.
        module.app.clock.set(berlin("2026-12-07T23:59:59").timestamp())
        app.publish("notifications", module.Note(user_id="u3", text="e2"), key="u3")
        worker = start_worker(module, redis_url, namespace)
        wait_for(
            lambda: window_sizes(app, module.daily_mail)[0] == 2,
            timeout=15,
            what="e2 collected",
        )
        module.app.clock.set(berlin("2026-12-08T08:00:00").timestamp())
        scheduler.run_pending()
        wait_for(
            lambda: any(c["done"] for c in calls(module)), timeout=15, what="T1's batch"
        )
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.communicate(timeout=30)
    assert [(c["key"], c["texts"]) for c in calls(module) if c["done"]] == [
        ("u3", ["e1", "e2"])
    ]


def test_a_worker_with_beat_sends_and_runs_periodic_jobs(
    make_app: Any, redis_url: str, namespace: str
) -> None:
    app = make_app(redis_url, namespace=namespace)

    @app.periodic("* * * * * *")
    def every_second() -> None: ...

    worker = worker_process("tests.apps.beat_app:app", redis_url, namespace, "--beat")
    try:
        wait_for(lambda: len(ticks(app, "every_second")) >= 3, timeout=15, what="runs")
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, output.decode()
    assert "Scheduler" in output.decode() and "started" in output.decode()
    stream = app.keys.partition("default", partition_for("every_second", 4)).stream
    groups = {g["name"]: g for g in app.redis.xinfo_groups(stream)}
    assert groups[b"tasks"]["pending"] == 0
    assert groups[b"tasks"]["last-delivered-id"] != b"0-0"
