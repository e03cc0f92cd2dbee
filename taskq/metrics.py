"""A worker's metrics in the Prometheus text format.

``taskq worker APP --metrics-port 9100`` serves ``GET /metrics`` from a
thread of the worker. Two kinds of figures:

* what this process did and holds: messages settled per topic, group and
  outcome (counters since it started), handlers running, entries held and
  waiting, partitions owned;
* what Redis says of the topics it serves, read at each scrape: lag,
  pending entries and the age of the oldest, delayed messages and dead
  letters per partition. Every worker of a topic reports the same values
  for them, so aggregate them with ``max``, not ``sum``.

A scrape that cannot reach Redis still answers, with ``taskq_redis_up 0``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import redis

from taskq import stats
from taskq.serving import Response, Server

if TYPE_CHECKING:
    from taskq.worker import Worker

log = logging.getLogger("taskq.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = dict[str, str]
Sample = tuple[Labels, float]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, kind: str, text: str, samples: Iterable[Sample]) -> list[str]:
    lines = [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        inner = ",".join(f'{key}="{_escape(val)}"' for key, val in labels.items())
        text = _number(value)
        lines.append(f"{name}{{{inner}}} {text}" if inner else f"{name} {text}")
    return lines


def _number(value: float) -> str:
    """Counts exactly (``:g`` would round 1234567 to 1.23457e+06)."""
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def render(worker: Worker) -> str:
    """The worker's metrics, one scrape's worth."""
    lines: list[str] = []
    outcomes = sorted(worker.outcomes.items())
    lines += _family(
        "taskq_messages_total",
        "counter",
        "Messages this worker settled, by outcome (acked, retried, dead).",
        (({"topic": t, "group": g, "outcome": o}, n) for (o, t, g), n in outcomes),
    )
    holdings = worker.holdings
    with holdings.lock:
        held = sum(len(entries) for entries in holdings.held.values())
        parked = holdings.parked
    lines += _family(
        "taskq_running",
        "gauge",
        "Handlers running now.",
        [({}, len(worker.running_now()))],
    )
    lines += _family(
        "taskq_held",
        "gauge",
        "Entries read or taken over and not yet settled.",
        [({}, held)],
    )
    lines += _family(
        "taskq_waiting",
        "gauge",
        "Entries of ordered handlers waiting for an earlier one of their key "
        "or for a retry.",
        [({}, parked)],
    )
    lines += _family(
        "taskq_owned_partitions",
        "gauge",
        "Partitions this worker owns (ordered handlers).",
        (
            ({"topic": sub.topic, "group": sub.group}, len(ownership.tokens))
            for sub, ownership in worker.ownerships.items()
        ),
    )
    lines += _topic_lines(worker)
    return "\n".join(lines) + "\n"


def _topic_lines(worker: Worker) -> list[str]:
    topics = sorted({sub.topic for sub in worker.subscriptions})
    try:
        partitions = stats.collect(worker.app, topics).partitions if topics else []
        up = 1.0
    except (redis.RedisError, OSError) as exc:
        log.debug("Metrics without Redis figures: %s", exc)
        partitions, up = [], 0.0
    except Exception:
        # Something in Redis this code cannot read: answer with what the
        # worker knows rather than not at all.
        log.exception("Metrics without the partitions' figures:")
        partitions, up = [], 1.0
    lines = _family(
        "taskq_redis_up", "gauge", "1 when this scrape could read Redis.", [({}, up)]
    )
    by_group: dict[str, list[Sample]] = {"lag": [], "pending": [], "oldest": []}
    by_partition: dict[str, list[Sample]] = {"delayed": [], "dead": []}
    for part in partitions:
        where = {"topic": part.topic, "partition": str(part.partition)}
        by_partition["delayed"].append((where, part.delayed))
        by_partition["dead"].append((where, part.dead))
        for group in part.groups:
            labels = dict(where, group=group.group)
            if group.lag is not None:
                by_group["lag"].append((labels, group.lag))
            by_group["pending"].append((labels, group.pending))
            if group.oldest_pending_s is not None:
                by_group["oldest"].append((labels, group.oldest_pending_s))
    lines += _family(
        "taskq_partition_lag",
        "gauge",
        "Entries of the partition not yet delivered to the group.",
        by_group["lag"],
    )
    lines += _family(
        "taskq_partition_pending",
        "gauge",
        "Entries delivered to the group and not yet acknowledged.",
        by_group["pending"],
    )
    lines += _family(
        "taskq_partition_oldest_pending_seconds",
        "gauge",
        "Age of the group's oldest pending entry of the partition.",
        by_group["oldest"],
    )
    lines += _family(
        "taskq_partition_delayed",
        "gauge",
        "Messages waiting in the partition's delayed set (retries, delay=, eta=).",
        by_partition["delayed"],
    )
    lines += _family(
        "taskq_partition_dead",
        "gauge",
        "Dead letters of the partition.",
        by_partition["dead"],
    )
    return lines


class MetricsServer(Server):
    """Serves ``/metrics`` (see :meth:`Server.start`)."""

    def __init__(self, worker: Worker, host: str, port: int) -> None:
        def metrics() -> Response:
            return 200, CONTENT_TYPE, render(worker).encode()

        super().__init__("metrics", host, port, {"/metrics": metrics})

    def start(self) -> None:
        super().start()
        log.info("Metrics at %smetrics.", self.url)
