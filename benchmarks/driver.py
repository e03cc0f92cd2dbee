"""A producer process for one queue, driven over stdin and stdout.

``python -m benchmarks.driver MODULE`` imports ``benchmarks.apps.MODULE``
and answers one JSON line per request:

* ``{"op": "enqueue", "task": T, "n": N, "batch": B}`` sends tasks
  ``0..N-1`` one call each (or with the queue's bulk API when B) through
  a fresh producer and returns ``{"seconds": ...}``, the time of the sends
  alone (the producer is made and warmed up with one ``noop`` first);
  With ``"paired": true`` the same sends also go through plain redis-py,
  slice by slice, and ``ref_seconds`` is their time;
* ``{"op": "paced", "task": T, "n": N, "rate": R}`` sends N tasks one at a
  time, R per second, each carrying its send time in microseconds.

Keeping the process between runs spares the queue's import time; a fresh
producer per request copes with the flush between runs.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from typing import Any

from benchmarks.apps import ceiling

#: Slices of a paired send run.
SLICES = 40


def handle(module: Any, request: dict[str, Any]) -> dict[str, Any]:
    producer = module.make_producer()
    try:
        if request["op"] == "enqueue":
            values = list(range(request["n"]))
            batch = bool(request.get("batch"))
            if not request.get("paired"):
                return {"seconds": producer.enqueue(request["task"], values, batch)}
            return paired(producer, request["task"], values, batch)
        if request["op"] == "paced":
            producer.paced(request["task"], request["n"], request["rate"])
            return {"seconds": 0.0}
        raise ValueError(f"unknown op {request['op']!r}")
    finally:
        producer.close()


def paired(producer: Any, task: str, values: list[int], batch: bool) -> dict[str, Any]:
    """Time the sends in slices, each right after the same slice sent with
    plain redis-py (the ceiling's way), so both see the same machine.

    Round trips on this machine drift between two speeds several times a
    second (scheduling, CPU frequency); timed apart, a ratio of two
    send loops says more about that than about the code.
    """
    plain = ceiling.make_producer()
    plain.send("noop", 0)
    seconds = ref_seconds = 0.0
    size = max(1, len(values) // SLICES)
    for index, start in enumerate(range(0, len(values), size)):
        chunk = values[start : start + size]
        # Alternate which goes first, so neither always meets the machine
        # as the other left it.
        if index % 2:
            seconds += producer.enqueue(task, chunk, batch)
            ref_seconds += plain.enqueue(task, chunk, batch)
        else:
            ref_seconds += plain.enqueue(task, chunk, batch)
            seconds += producer.enqueue(task, chunk, batch)
    plain.close()
    return {"seconds": seconds, "ref_seconds": ref_seconds}


def main() -> None:
    # Answers go to the original stdout; anything the queue prints goes to
    # stderr, so it cannot corrupt the answers.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        module = importlib.import_module(f"benchmarks.apps.{sys.argv[1]}")
    except Exception as exc:
        answers.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        return
    answers.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        try:
            answer = handle(module, json.loads(line))
        except Exception as exc:
            traceback.print_exc()
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        answers.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
