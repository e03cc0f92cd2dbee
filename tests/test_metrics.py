"""A worker's Prometheus metrics (``taskq worker --metrics-port``)."""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request
from typing import Any

import pytest
import redis
from click.testing import CliRunner

import taskq.stats
from taskq import TaskQ, Worker
from taskq.cli import main
from taskq.metrics import MetricsServer, render
from tests.support import wait_for

SAMPLE = re.compile(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$")


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples of the text format: (name, labels) -> value."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, inner, value = match.groups()
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', inner or ""))
        samples[(name, labels)] = float(value)
    return samples


def total(samples: dict[Any, float], name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def test_a_worker_serves_its_metrics(app: TaskQ, running: Any) -> None:
    app.topic("jobs", partitions=2)

    @app.task(topic="jobs", retries=0)
    def work(n: int) -> None:
        if n < 0:
            raise ValueError("not this one")

    work.send_many([(n,) for n in range(5)] + [(-1,)])
    worker = Worker(app)
    server = MetricsServer(worker, "127.0.0.1", 0)
    server.start()
    url = f"http://127.0.0.1:{server.port}"
    try:
        with running(worker):
            wait_for(lambda: sum(worker.outcomes.values()) == 6, timeout=10)
            with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
                assert response.headers["Content-Type"].startswith("text/plain")
                samples = parse(response.read().decode())
            with pytest.raises(urllib.error.HTTPError) as missing:
                urllib.request.urlopen(url + "/", timeout=5)
            assert missing.value.code == 404
            missing.value.close()
    finally:
        server.stop()
    group = {"topic": "jobs", "group": app.task_group}
    assert total(samples, "taskq_messages_total", outcome="acked", **group) == 5
    assert total(samples, "taskq_messages_total", outcome="dead", **group) == 1
    assert total(samples, "taskq_partition_dead", topic="jobs") == 1
    assert total(samples, "taskq_partition_lag", **group) == 0
    assert total(samples, "taskq_partition_pending", **group) == 0
    assert total(samples, "taskq_redis_up") == 1
    assert ("taskq_running", frozenset()) in samples


def test_metrics_without_redis_say_so(
    app: TaskQ, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.task(topic="jobs")
    def work(n: int) -> None: ...

    worker = Worker(app)

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(taskq.stats, "collect", unreachable)
    samples = parse(render(worker))
    assert total(samples, "taskq_redis_up") == 0
    assert total(samples, "taskq_messages_total") == 0


def test_label_values_are_escaped(app: TaskQ) -> None:
    topic = "odd-topic"

    @app.task(topic=topic)
    def work(n: int) -> None: ...

    worker = Worker(app)
    sub = worker.subscriptions[0]
    sub.group = 'a"b\\c'
    worker.count("acked", sub, 2)
    samples = parse(render(worker))
    assert total(samples, "taskq_messages_total", group='a\\"b\\\\c') == 2


def test_the_command_line_refuses_a_port_in_use(redis_app: TaskQ) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            main,
            [
                "worker",
                "tests.apps.cli_app:app",
                "--burst",
                "--metrics-port",
                str(port),
            ],
            env={"TASKQ_URL": redis_app.url},
        )
    assert result.exit_code == 1, result.output
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.output


def test_large_counts_are_exact(app: TaskQ) -> None:
    @app.task(topic="jobs")
    def work(n: int) -> None: ...

    worker = Worker(app)
    worker.count("acked", worker.subscriptions[0], 1_234_567)
    assert " 1234567\n" in render(worker)


def test_unreadable_records_do_not_stop_a_scrape(app: TaskQ) -> None:
    @app.task(topic="jobs")
    def work(n: int) -> None: ...

    work.send(1)
    app.redis.hset(app.keys.topics, "other", "sixteen")
    app.redis.zadd(app.keys.workers, {"ghost": 1})
    app.redis.set(app.keys.worker("ghost"), "{not json")
    samples = parse(render(Worker(app)))
    assert total(samples, "taskq_redis_up") == 1
    jobs = [
        labels
        for name, labels in samples
        if name == "taskq_partition_dead" and ("topic", "jobs") in labels
    ]
    assert len(jobs) == app.partitions("jobs")
