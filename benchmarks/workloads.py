"""The workloads, and which figure of the ceiling each is compared with."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Tasks per second of 16 handlers that each sleep 10 ms: the best a
#: queue can do in the sleeping workload.
SLEEP_IDEAL = 16 / 0.010


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    #: "enqueue", "process", "latency" or "memory".
    kind: str
    task: str
    batch: bool = False
    profile: str = "default"
    processes: int = 1
    #: The workload of the ceiling this one is compared with (None: the
    #: ceiling runs this one itself; "ideal": SLEEP_IDEAL).
    ceiling: str | None = None
    #: Only these systems run it; the others are shown with ``reason``.
    only: frozenset[str] | None = None
    reason: str = ""
    #: Targets (``--target`` names) it cannot be measured on, and why.
    unsupported_on: dict[str, str] = field(default_factory=dict)


NOOP_ONLY = frozenset({"ceiling", "taskq"})
NOOP_REASON = (
    "a no-op leaves no trace that works across queues; compared in the INCR rows"
)

WORKLOADS = [
    Workload("enqueue", "enqueue, one call per task", "enqueue", "incr"),
    Workload("enqueue_batch", "enqueue, batched", "enqueue", "incr", batch=True),
    Workload(
        "noop_default",
        "no-op, 1 process, default settings",
        "process",
        "noop",
        ceiling="noop_tuned",
        only=NOOP_ONLY,
        reason=NOOP_REASON,
    ),
    Workload(
        "noop_tuned",
        "no-op, 1 process, throughput settings",
        "process",
        "noop",
        profile="tuned",
        only=NOOP_ONLY,
        reason=NOOP_REASON,
    ),
    Workload(
        "noop_2proc",
        "no-op, 2 processes",
        "process",
        "noop",
        profile="tuned",
        processes=2,
        only=NOOP_ONLY,
        reason=NOOP_REASON,
    ),
    Workload(
        "incr_default",
        "INCR, 1 process, default settings",
        "process",
        "incr",
        ceiling="incr_tuned",
    ),
    Workload(
        "incr_tuned",
        "INCR, 1 process, throughput settings",
        "process",
        "incr",
        profile="tuned",
    ),
    Workload(
        "incr_2proc",
        "INCR, 2 processes",
        "process",
        "incr",
        profile="tuned",
        processes=2,
    ),
    Workload(
        "ordered",
        "INCR, ordered=True with 64 keys, 1 process",
        "process",
        "ordered_incr",
        profile="tuned",
        ceiling="incr_tuned",
        only=frozenset({"taskq"}),
        reason="no per-key ordering to compare with",
    ),
    Workload(
        "sleep10",
        "10 ms sleeping handler, concurrency 16",
        "process",
        "sleep10",
        ceiling="ideal",
    ),
    Workload("latency", "idle latency, send to handler start", "latency", "lat"),
    Workload(
        "memory",
        "worker RSS over 1,000,000 no-op tasks (100,000 with --quick)",
        "memory",
        "noop",
        profile="tuned",
        only=frozenset({"taskq"}),
        reason="measured for taskq only (a million tasks take minutes on most peers)",
    ),
]
BY_NAME = {w.name: w for w in WORKLOADS}
