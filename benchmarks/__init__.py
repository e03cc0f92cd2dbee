"""Benchmarks: taskq beside the ceiling of the machine and other queues.

Run ``python -m benchmarks`` (``--quick`` for a short pass); see README.md,
"Performance".
"""
