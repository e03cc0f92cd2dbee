"""Running the workloads: sizing, repeating, measuring, summarising."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from benchmarks.apps.common import COUNTER, LATENCIES
from benchmarks.processes import Driver, Workers
from benchmarks.systems import System
from benchmarks.targets import RedisTarget
from benchmarks.workloads import Workload
from taskq.keys import Keys

#: Polling interval of the progress probe, s. Runs last about a second or
#: more, so the error on a rate is well under 2 %.
POLL_S = 0.005
#: How long a worker may take to start and handle its first task, s.
START_TIMEOUT_S = 45.0


@dataclass
class Settings:
    runs: int = 3
    #: How long one run of a throughput workload should last, s.
    run_s: float = 1.0
    latency_tasks: int = 250
    latency_rate: float = 250.0
    memory_tasks: int = 1_000_000


@dataclass
class Result:
    system: str
    workload: str
    status: str = "ok"  # "ok", "n/a" or "failed"
    reason: str = ""
    unit: str = "tasks/s"
    runs: list[dict[str, Any]] = field(default_factory=list)
    settings: str = ""

    def values(self, key: str = "value") -> list[float]:
        return [r[key] for r in self.runs if r.get(key) is not None]

    def summary(self, key: str = "value") -> dict[str, float] | None:
        values = self.values(key)
        if not values:
            return None
        return {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
        }

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "system": self.system,
            "workload": self.workload,
            "status": self.status,
            "reason": self.reason,
            "unit": self.unit,
            "settings": self.settings,
            "runs": self.runs,
        }
        if self.unit == "ms":
            data["p50"] = self.summary("p50")
            data["p99"] = self.summary("p99")
        elif self.unit == "MiB":
            data["peak"] = self.summary("peak")
        else:
            data["rate"] = self.summary()
            if self.values("paired_ratio"):
                data["paired_ratio"] = self.summary("paired_ratio")
        return data


class Probe:
    """Reads how many tasks of a run are done, from Redis."""

    def __init__(self, target: RedisTarget) -> None:
        self.client = target.client()

    def counter(self) -> int:
        return int(self.client.get(COUNTER) or 0)

    def stream_backlog(self, streams: list[str], group: str) -> int | None:
        """Entries of ``group`` not yet acknowledged (lag + pending)."""
        pipe = self.client.pipeline(transaction=False)
        for stream in streams:
            pipe.xinfo_groups(stream)
        total = 0
        for groups in pipe.execute(raise_on_error=False):
            if isinstance(groups, Exception):
                return None
            for info in groups:
                name = info["name"]
                if name in (group, group.encode()):
                    if info.get("lag") is None:
                        return None
                    total += int(info["lag"]) + int(info["pending"])
                    break
            else:
                return None
        return total

    def close(self) -> None:
        self.client.close()


def backlog_of(system: System) -> tuple[list[str], str]:
    if system.name == "ceiling":
        from benchmarks.apps.ceiling import GROUP, STREAM

        return [STREAM], GROUP
    keys = Keys("bench")
    return [keys.partition("bench", p).stream for p in range(4)], "tasks"


class Suite:
    def __init__(
        self,
        target: RedisTarget,
        settings: Settings,
        log: IO[bytes],
        say: Callable[[str], None],
    ) -> None:
        self.target = target
        self.settings = settings
        self.log = log
        self.say = say
        #: (system, workload) -> the last measured rate, to size later runs.
        self.observed: dict[tuple[str, str], float] = {}

    # -- sizing --------------------------------------------------------------

    def size(self, system: System, workload: Workload) -> int:
        send, send_many, process = system.rates
        guess = {"enqueue": send_many if workload.batch else send}.get(
            workload.kind, process
        )
        if (
            workload.kind == "process"
            and workload.profile == "default"
            and system.default_rate
        ):
            guess = system.default_rate
        if workload.task == "sleep10":
            guess = min(guess, 1600.0)
        if workload.processes > 1:
            guess *= 1.6
        rate = self.observed.get((system.name, workload.name), guess)
        n = int(rate * self.settings.run_s)
        return max(200, min(n, 3_000_000))

    # -- one system, one workload --------------------------------------------

    def run(self, system: System, workload: Workload, driver: Driver) -> Result:
        result = Result(system.name, workload.name)
        if workload.kind == "latency":
            result.unit = "ms"
        elif workload.kind == "memory":
            result.unit = "MiB"
        for index in range(self.settings.runs if workload.kind != "memory" else 1):
            self.target.flush()
            try:
                if workload.kind == "enqueue":
                    record = self._enqueue(system, workload, driver)
                elif workload.kind == "process":
                    record, result.settings = self._process(system, workload, driver)
                elif workload.kind == "latency":
                    record, result.settings = self._latency(system, workload, driver)
                else:
                    record, result.settings = self._memory(system, workload, driver)
            except Exception as exc:  # reported, and the suite goes on
                result.status = "failed"
                result.reason = f"{type(exc).__name__}: {exc}"
                self.say(f"    run {index + 1}: failed: {result.reason}")
                break
            result.runs.append(record)
            self.say(f"    run {index + 1}: {_describe(record)}")
        note = system.notes_on.get(self.target.name)
        if note and result.settings:
            result.settings += f"; {note}"
        return result

    def _enqueue(
        self, system: System, workload: Workload, driver: Driver
    ) -> dict[str, Any]:
        n = self.size(system, workload)
        answer = driver.request(
            op="enqueue", task=workload.task, n=n, batch=workload.batch, paired=True
        )
        rate = n / answer["seconds"]
        self.observed[(system.name, workload.name)] = rate
        return {
            "n": n,
            "seconds": answer["seconds"],
            "value": rate,
            # The same sends through plain redis-py, interleaved with these.
            "paired_ceiling": n / answer["ref_seconds"],
            "paired_ratio": answer["ref_seconds"] / answer["seconds"],
        }

    def _process(
        self, system: System, workload: Workload, driver: Driver
    ) -> tuple[dict[str, Any], str]:
        n = self.size(system, workload)
        driver.request(op="enqueue", task=workload.task, n=n, batch=True)
        launch = system.launch(workload.task, workload.profile, workload.processes)
        probe = Probe(self.target)
        if workload.task == "noop":
            streams, group = backlog_of(system)
            total = n + 1  # and the producer's warm-up no-op

            def done() -> int | None:
                left = probe.stream_backlog(streams, group)
                return None if left is None else total - left
        else:
            total = n
            done = probe.counter
        workers = Workers(launch, self.target.url, self.log)
        try:
            record = self._watch(workers, done, total, n)
        finally:
            workers.kill()
            probe.close()
        if record["value"]:
            self.observed[(system.name, workload.name)] = record["value"]
        return record, launch.settings

    def _watch(
        self, workers: Workers, done: Callable[[], int | None], total: int, n: int
    ) -> dict[str, Any]:
        """Poll progress; the rate counts from the first finished task."""
        started = time.monotonic()
        first: tuple[float, int] | None = None
        last: tuple[float, int] = (started, 0)
        deadline = started + START_TIMEOUT_S
        while True:
            count = done()
            now = time.monotonic()
            if count is not None:
                if first is None and count > 0:
                    first = (now, count)
                    # Allow five times the planned length for the rest.
                    deadline = now + max(5.0, 5 * self.settings.run_s)
                last = (now, count)
                if count >= total:
                    break
            if now > deadline:
                break
            if not workers.alive():
                raise RuntimeError(f"the worker exited with {workers.exit_codes()}")
            time.sleep(POLL_S)
        if first is None:
            raise RuntimeError(f"no task finished within {START_TIMEOUT_S:g} s")
        elapsed = last[0] - first[0]
        handled = last[1] - first[1]
        partial = last[1] < total
        rate = handled / elapsed if elapsed > 0 else 0.0
        return {"n": n, "seconds": elapsed, "value": rate, "partial": partial}

    def _latency(
        self, system: System, workload: Workload, driver: Driver
    ) -> tuple[dict[str, Any], str]:
        launch = system.launch(workload.task, "default", 1)
        probe = Probe(self.target)
        workers = Workers(launch, self.target.url, self.log)
        try:
            # Wait until the worker handles tasks, then let it go idle.
            driver.request(op="paced", task="lat", n=5, rate=50)
            self._wait(
                lambda: probe.client.llen(LATENCIES) >= 5, workers, START_TIMEOUT_S
            )
            probe.client.delete(LATENCIES)
            time.sleep(0.3)
            count = self.settings.latency_tasks
            driver.request(
                op="paced", task="lat", n=count, rate=self.settings.latency_rate
            )
            self._wait(lambda: probe.client.llen(LATENCIES) >= count, workers, 30.0)
            samples = sorted(
                int(v) / 1000 for v in probe.client.lrange(LATENCIES, 0, -1)
            )
        finally:
            workers.kill()
            probe.close()
        return {
            "n": count,
            "p50": _percentile(samples, 50),
            "p99": _percentile(samples, 99),
            "max": samples[-1],
        }, launch.settings

    def _wait(
        self, condition: Callable[[], bool], workers: Workers, timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:g} s")
            if not workers.alive():
                raise RuntimeError(f"the worker exited with {workers.exit_codes()}")
            time.sleep(0.01)

    def _memory(
        self, system: System, workload: Workload, driver: Driver
    ) -> tuple[dict[str, Any], str]:
        n = self.settings.memory_tasks
        driver.request(op="enqueue", task="noop", n=n, batch=True)
        launch = system.launch(workload.task, workload.profile, 1)
        probe = Probe(self.target)
        streams, group = backlog_of(system)
        workers = Workers(launch, self.target.url, self.log)
        samples: list[tuple[int, float]] = []
        started = time.monotonic()
        try:
            while True:
                left = probe.stream_backlog(streams, group)
                rss = workers.rss_bytes() / 2**20
                if left is not None:
                    samples.append((n + 1 - left, rss))
                    if left == 0:
                        break
                if not workers.alive():
                    raise RuntimeError(f"the worker exited with {workers.exit_codes()}")
                if time.monotonic() - started > 600:
                    raise RuntimeError("did not finish within 600 s")
                time.sleep(0.2)
        finally:
            workers.kill()
            probe.close()
        elapsed = time.monotonic() - started

        def rss_at(fraction: float) -> float:
            return max(r for d, r in samples if d <= max(fraction * n, samples[0][0]))

        checkpoints = {
            f"{int(f * 100)}%": rss_at(f) for f in (0.1, 0.25, 0.5, 0.75, 1.0)
        }
        return {
            "n": n,
            "seconds": elapsed,
            "peak": max(r for _, r in samples),
            "rss_mib_at": checkpoints,
        }, launch.settings


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(
        len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1)
    )
    return sorted_values[index]


def _describe(record: dict[str, Any]) -> str:
    if "p50" in record:
        return f"p50 {record['p50']:.2f} ms, p99 {record['p99']:.2f} ms"
    if "peak" in record:
        return f"peak {record['peak']:.1f} MiB, at {record['rss_mib_at']}"
    text = f"{record['value']:,.0f}/s over {record['n']:,} tasks"
    if record.get("partial"):
        text += " (stopped early)"
    return text


def open_log(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab")
