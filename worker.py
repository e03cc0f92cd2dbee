"""Run a taskq worker: ``python worker.py APP [OPTIONS]``.

The same as ``taskq worker APP [OPTIONS]``, for deployments that start a
script rather than a console command.
"""

import sys

from taskq.cli import main

if __name__ == "__main__":
    main(["worker", *sys.argv[1:]], prog_name="worker.py")
