"""``python -m benchmarks``: run the suite, print the table, write the files.

Options:

* ``--quick``: short runs (for development; the figures are rougher);
* ``--systems taskq,ceiling``: only these queues (default: all);
* ``--workloads enqueue,incr_tuned``: only these workloads;
* ``--runs N``: runs per figure (default 3);
* ``--out DIR``: where results.json, results.md, throughput.png and the
  workers' log go (default ``benchmarks/results``);
* ``--target local``: where Redis comes from (see ``targets.py``):
  ``local``, one redis-server; ``cluster``, a Redis Cluster of three
  masters (taskq and the ceiling run there; the other queues are listed
  as not applicable, with the reason).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from benchmarks import report
from benchmarks.processes import Driver
from benchmarks.suite import Result, Settings, Suite, open_log
from benchmarks.systems import BY_NAME as SYSTEMS
from benchmarks.targets import TARGETS
from benchmarks.workloads import BY_NAME as WORKLOADS

PACKAGES = [
    "redis", "hiredis", "pydantic", "celery", "kombu", "rq", "dramatiq", "arq",
    "taskiq", "taskiq-redis", "saq", "streaq",
]  # fmt: skip


def _names(value: str | None, known: dict[str, object], what: str) -> list[str]:
    if not value:
        return list(known)
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        sys.exit(
            f"unknown {what}: {', '.join(unknown)}; choose from {', '.join(known)}"
        )
    return names


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--systems")
    parser.add_argument("--workloads")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--target", choices=sorted(TARGETS), default="local")
    args = parser.parse_args()

    systems = _names(args.systems, SYSTEMS, "systems")
    workloads = _names(args.workloads, WORKLOADS, "workloads")
    settings = Settings(runs=args.runs)
    if args.quick:
        settings = Settings(
            runs=args.runs, run_s=0.4, latency_tasks=100, memory_tasks=100_000
        )
    log_path = args.out / "workers.log"
    if log_path.exists():
        log_path.unlink()
    log = open_log(log_path)
    target = TARGETS[args.target]()
    target.start()
    say = lambda text: print(text, flush=True)  # noqa: E731
    say(f"Redis: {target.description} at {target.url}; logs in {log_path}")
    suite = Suite(target, settings, log, say)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.monotonic()
    results: list[Result] = []
    try:
        for name in systems:
            system = SYSTEMS[name]
            say(f"{name}:")
            off_target = system.unsupported_on.get(args.target)
            if off_target:
                say(f"  n/a on --target {args.target}: {off_target}")
                driver = None
            else:
                driver = Driver(system.module, target.url, log)
            try:
                for wname in workloads:
                    workload = WORKLOADS[wname]
                    if name == "ceiling" and (
                        workload.ceiling is not None or workload.kind == "memory"
                    ):
                        continue  # the ceiling of these is another workload
                    result = Result(name, wname)
                    if workload.kind == "latency":
                        result.unit = "ms"
                    if driver is None:
                        result.status, result.reason = "n/a", off_target or ""
                    elif workload.only is not None and name not in workload.only:
                        result.status, result.reason = "n/a", workload.reason
                    elif args.target in workload.unsupported_on:
                        result.status = "n/a"
                        result.reason = workload.unsupported_on[args.target]
                    elif wname in system.unsupported:
                        result.status, result.reason = "n/a", system.unsupported[wname]
                    elif driver.error:
                        result.status = "failed"
                        result.reason = f"cannot be imported here: {driver.error}"
                    else:
                        say(f"  {workload.title}")
                        result = suite.run(system, workload, driver)
                    results.append(result)
            finally:
                if driver is not None:
                    driver.close()
    finally:
        target.stop()
        log.close()
    data = {
        "meta": {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{os.cpu_count()} cores ({_cpu()}), Python "
            f"{platform.python_version()}",
            "target": target.description,
            "target_name": args.target,
            "runs": settings.runs,
            "quick": args.quick,
            "seconds": time.monotonic() - started,
            "load_before": load_before,
            "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "systems": systems,
            "versions": _versions(),
        },
        "results": [r.to_json() for r in results],
    }
    paths = report.write(data, args.out)
    say("")
    say(report.markdown(data))
    say("Wrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
