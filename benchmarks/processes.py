"""Starting and ending the processes the suite runs: drivers and workers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import psutil

from benchmarks.systems import Launch

ROOT = Path(__file__).resolve().parent.parent


def _env(url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["BENCH_REDIS_URL"] = url
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TASKQ_URL", None)
    env.update(extra or {})
    return env


class Driver:
    """A queue's producer process (``benchmarks.driver``)."""

    def __init__(self, module: str, url: str, log: IO[bytes]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.driver", module],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=ROOT,
            env=_env(url),
            text=True,
            start_new_session=True,
        )
        hello = self._answer()
        self.error: str | None = hello.get("error")

    def _answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            return {"error": "the producer process exited; see the log"}
        answer: dict[str, Any] = json.loads(line)
        return answer

    def request(self, **request: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        answer = self._answer()
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class Workers:
    """The worker processes of one run, each in a session of its own."""

    def __init__(self, launch: Launch, url: str, log: IO[bytes]) -> None:
        self.processes = [
            subprocess.Popen(
                [arg.replace("{url}", url) for arg in command],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=_env(url, launch.env),
                start_new_session=True,
            )
            for command in launch.commands
        ]

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.processes)

    def exit_codes(self) -> list[int | None]:
        return [p.poll() for p in self.processes]

    def rss_bytes(self) -> int:
        """Resident memory of the workers and their children, summed."""
        total = 0
        for process in self.processes:
            try:
                parent = psutil.Process(process.pid)
                for proc in [parent, *parent.children(recursive=True)]:
                    total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def kill(self) -> None:
        # The run is over and Redis is flushed next: no graceful stop needed.
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes:
            process.wait()
        time.sleep(0.05)
