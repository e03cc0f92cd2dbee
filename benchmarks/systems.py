"""The queues under test: how to start each one's worker for a workload.

Each worker is started with the queue's own command (from the same
virtualenv) in a process of its own, pointed at the suite's Redis through
``BENCH_REDIS_URL``. ``settings`` is what the report prints next to the
figures, so a reader sees what was measured.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
PY = sys.executable

#: The settings a "tuned" taskq worker runs with (see README, Performance);
#: BENCH_TASKQ_TUNED overrides them, to try others.
TASKQ_TUNED = os.environ.get(
    "BENCH_TASKQ_TUNED", "--concurrency 16 --prefetch auto"
).split()


@dataclass(frozen=True)
class Launch:
    """One worker start: commands (one per process) and environment."""

    commands: list[list[str]]
    env: dict[str, str] = field(default_factory=dict)
    settings: str = ""


@dataclass(frozen=True)
class System:
    name: str
    #: Module under ``benchmarks.apps`` with its tasks and producer.
    module: str
    #: What the batched send uses.
    bulk: str
    #: Rough rates (tasks/s) of this queue, to size runs: send, send_many,
    #: processing with the INCR handler.
    rates: tuple[float, float, float]
    #: Workloads this queue cannot run here, and why.
    unsupported: dict[str, str] = field(default_factory=dict)
    #: Targets (``--target`` names) this queue cannot use at all, and why.
    unsupported_on: dict[str, str] = field(default_factory=dict)
    #: Added to the settings the report shows, on a given target.
    notes_on: dict[str, str] = field(default_factory=dict)
    ordered: bool = False
    #: Processing rate with default settings, when far below ``rates``.
    default_rate: float | None = None

    def launch(self, task: str, profile: str, processes: int) -> Launch:
        raise NotImplementedError


class Ceiling(System):
    def launch(self, task: str, profile: str, processes: int) -> Launch:
        command = [PY, "-m", "benchmarks.apps.ceiling", task]
        return Launch(
            [command] * processes,
            settings=f"{processes} process(es), XREADGROUP COUNT 1000, "
            "one pipeline per batch",
        )


class Taskq(System):
    def launch(self, task: str, profile: str, processes: int) -> Launch:
        topic = "ordered" if task == "ordered_incr" else "bench"
        command = [
            str(BIN / "taskq"), "worker", "benchmarks.apps.taskq_app:app",
            "--topics", topic, "--log-level", "warning",
        ]  # fmt: skip
        options: list[str] = []
        if task == "sleep10":
            options = ["--concurrency", "16"]
        elif profile == "tuned":
            options = list(TASKQ_TUNED)
        if processes > 1:
            options += ["--processes", str(processes)]
        return Launch([command + options], settings=" ".join(options) or "defaults")


class Celery(System):
    def launch(self, task: str, profile: str, processes: int) -> Launch:
        command = [
            str(BIN / "celery"), "-A", "benchmarks.apps.celery_app", "worker",
            "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
            "--without-heartbeat",
        ]  # fmt: skip
        if task == "sleep10":
            options = ["--pool", "threads", "--concurrency", "16"]
        elif processes > 1:
            options = ["--concurrency", str(processes), "--prefetch-multiplier", "256"]
        elif profile == "tuned":
            options = ["--pool", "solo", "--prefetch-multiplier", "256"]
        else:
            options = ["--concurrency", "1"]
        return Launch([command + options], settings=" ".join(options))


class Rq(System):
    def launch(self, task: str, profile: str, processes: int) -> Launch:
        command = [str(BIN / "rq"), "worker", "--url", "{url}", "--quiet", "bench"]
        options = []
        if profile == "tuned" or processes > 1:
            options = ["--worker-class", "rq.worker.SimpleWorker"]
        return Launch(
            [command + options] * processes,
            settings=f"{processes} x rq worker " + " ".join(options),
        )


class Dramatiq(System):
    def launch(self, task: str, profile: str, processes: int) -> Launch:
        threads = "16" if task == "sleep10" else "8"
        env = {}
        if profile == "tuned" and task != "sleep10":
            env["dramatiq_queue_prefetch"] = "256"
        command = [
            str(BIN / "dramatiq"), "benchmarks.apps.dramatiq_app",
            "--processes", str(processes), "--threads", threads,
        ]  # fmt: skip
        settings = f"--processes {processes} --threads {threads}"
        if env:
            settings += ", prefetch 256"
        return Launch([command], env=env, settings=settings)


class Arq(System):
    def launch(self, task: str, profile: str, processes: int) -> Launch:
        command = [str(BIN / "arq"), "benchmarks.apps.arq_app.WorkerSettings"]
        if profile == "tuned":
            command += ["--custom-log-dict", "benchmarks.apps.arq_app.QUIET_LOGGING"]
        jobs = "16" if task == "sleep10" else "100" if profile == "tuned" else "10"
        # arq polls its queue every 0.5 s by default; the throughput
        # settings (and the sleeping workload) poll every 5 ms.
        fast = profile == "tuned" or task == "sleep10"
        return Launch(
            [command] * processes,
            env={
                "BENCH_CONCURRENCY": jobs,
                "BENCH_PROFILE": "tuned" if fast else "default",
            },
            settings=f"{processes} process(es), max_jobs={jobs}"
            + (", poll_delay=0.005" if fast else "")
            + (", job log off" if profile == "tuned" else ""),
        )


class Taskiq(System):
    def launch(self, task: str, profile: str, processes: int) -> Launch:
        command = [
            str(BIN / "taskiq"), "worker", "benchmarks.apps.taskiq_app:broker",
            "--workers", str(processes), "--log-level", "WARNING",
        ]  # fmt: skip
        options = []
        if task == "sleep10":
            options = ["--max-async-tasks", "16"]
        elif profile == "tuned":
            options = ["--max-async-tasks", "200", "--max-prefetch", "200"]
        return Launch(
            [command + options],
            settings=f"--workers {processes} " + " ".join(options),
        )


class Saq(System):
    def launch(self, task: str, profile: str, processes: int) -> Launch:
        command = [str(BIN / "saq"), "benchmarks.apps.saq_app.settings", "--quiet"]
        concurrency = (
            "16" if task == "sleep10" else "100" if profile == "tuned" else "10"
        )
        return Launch(
            [[*command, "--workers", str(processes)]],
            env={"BENCH_CONCURRENCY": concurrency, "BENCH_PROFILE": profile},
            settings=f"--workers {processes}, concurrency={concurrency}",
        )


class Streaq(System):
    def launch(self, task: str, profile: str, processes: int) -> Launch:
        command = [str(BIN / "streaq"), "run", "benchmarks.apps.streaq_app:worker"]
        env = {"BENCH_PROFILE": "tuned" if profile == "tuned" else "default"}
        if task == "sleep10":
            env["BENCH_CONCURRENCY"] = "16"
        settings = (
            "concurrency=16"
            if task == "sleep10"
            else ("concurrency=64, prefetch=256" if profile == "tuned" else "defaults")
        )
        return Launch(
            [[*command, "--workers", str(processes)]],
            env=env,
            settings=f"--workers {processes}, {settings}",
        )


NO_ORDER = "no per-key ordering to compare with"
#: Why the other queues are not run on ``--target cluster``.
NO_CLUSTER = {"cluster": "no Redis Cluster support"}
SYSTEMS: list[System] = [
    Ceiling(
        "ceiling",
        "ceiling",
        "pipelined XADD, 1000 per batch",
        (15000, 150000, 150000),
        notes_on={
            "cluster": "RedisCluster client; its one stream lives on one "
            "of the 3 masters"
        },
    ),
    Taskq("taskq", "taskq_app", "send_many", (8000, 60000, 40000), ordered=True),
    Celery(
        "celery",
        "celery_app",
        "group().apply_async()",
        (1500, 2500, 2500),
        unsupported_on={
            "cluster": "no Redis Cluster support (kombu's Redis transport "
            "talks to one server)"
        },
    ),
    Rq(
        "rq",
        "rq_app",
        "Queue.enqueue_many",
        (1500, 4000, 800),
        default_rate=80,
        unsupported_on=NO_CLUSTER,
        unsupported={
            "sleep10": "runs one job at a time per process; "
            "concurrency 16 means 16 worker processes"
        },
    ),
    Dramatiq(
        "dramatiq",
        "dramatiq_app",
        "group().run()",
        (3000, 3000, 3000),
        unsupported_on=NO_CLUSTER,
    ),
    Arq(
        "arq",
        "arq_app",
        "concurrent enqueue_job (no bulk API)",
        (2500, 5000, 2000),
        default_rate=200,
        unsupported_on=NO_CLUSTER,
    ),
    Taskiq(
        "taskiq",
        "taskiq_app",
        "concurrent kiq (no bulk API)",
        (2500, 6000, 3000),
        unsupported_on={
            "cluster": "taskiq-redis has cluster brokers, but the versions "
            "benchmarked need redis-py < 6 and taskq on a cluster needs 8.2, "
            "so they cannot share one environment; not wired up here"
        },
    ),
    Saq(
        "saq",
        "saq_app",
        "concurrent enqueue (no bulk API)",
        (2000, 4000, 2000),
        unsupported_on=NO_CLUSTER,
    ),
    Streaq(
        "streaq",
        "streaq_app",
        "Worker.enqueue_many",
        (2500, 10000, 3000),
        unsupported_on=NO_CLUSTER,
    ),
]
BY_NAME = {s.name: s for s in SYSTEMS}
