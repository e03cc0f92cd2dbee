"""Run a taskq worker: ``python worker.py APP [OPTIONS]``.

The same as ``taskq worker APP [OPTIONS]``, for deployments that start a
script rather than a console command.
"""

from taskq.cli.worker import worker

if __name__ == "__main__":
    worker(prog_name="python worker.py")
