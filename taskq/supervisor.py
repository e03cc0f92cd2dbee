"""Running several worker processes under one parent (``--processes``).

The parent starts N children with the same command line, passes SIGTERM
and SIGINT on to them, and starts a child again when one dies without
being asked to (a crash, the OOM killer). It exits once every child has.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import time
from types import FrameType

log = logging.getLogger("taskq.supervisor")

#: prctl() option: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1

#: A child that dies sooner than this after its start is restarted only
#: after this long, so a worker that cannot start does not spin.
RESTART_PAUSE_S = 1.0


#: Tells a child its place among the supervisor's children (0, 1, ...):
#: with ``--metrics-port P``, child i serves its metrics on port P + i.
INDEX_ENV = "TASKQ_WORKER_INDEX"


def _start(argv: list[str], index: int) -> subprocess.Popen[bytes]:
    # A session of its own: Ctrl-C in a terminal reaches the supervisor,
    # which passes it on once, not every child at the same time.
    return subprocess.Popen(
        argv,
        start_new_session=True,
        preexec_fn=_die_with_parent,
        env={**os.environ, INDEX_ENV: str(index)},
    )


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the supervisor dies (Linux only), so no
    worker is left running without it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def supervise(count: int, argv: list[str]) -> int:
    children = [_start(argv, n) for n in range(count)]
    started = [time.monotonic()] * count
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    log.info("Started %d worker processes: %s", count, [c.pid for c in children])
    status = 0
    #: Children whose unexpected exit was dealt with already (restarting
    #: them was skipped because a stop was asked for meanwhile).
    settled: set[int] = set()
    while True:
        alive = False
        for n, child in enumerate(children):
            code = child.poll()
            if code is None:
                alive = True
                continue
            if n in settled:
                continue
            if stopping or code == 0:
                # A child stopped by the signal we passed on (before it could
                # install its handlers) stopped as asked.
                asked = code in (0, -signal.SIGTERM, -signal.SIGINT)
                status = status or (0 if asked else code)
                continue
            log.warning(
                "Worker process %d exited with %d; starting another.", child.pid, code
            )
            if time.monotonic() - started[n] < RESTART_PAUSE_S:
                time.sleep(RESTART_PAUSE_S)
                if stopping:  # told to stop during the pause
                    settled.add(n)
                    continue
            children[n] = _start(argv, n)
            started[n] = time.monotonic()
            alive = True
        if not alive:
            return status
        time.sleep(0.2)
