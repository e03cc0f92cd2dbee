"""One module per queue: its tasks, its worker settings and a producer.

Every module defines the same four tasks, each taking one integer:

* ``noop``: does nothing;
* ``incr``: one INCR of ``bench:count`` (how the suite sees tasks finish);
* ``sleep10``: sleeps 10 ms (I/O-bound), then the INCR;
* ``lat``: pushes ``now - n`` in microseconds onto ``bench:lat`` (``n`` is
  the send time), for the latency workload.

Worker settings come from environment variables that the suite sets, so
each queue's own command line starts the worker. ``make_producer()``
returns an object with ``send(task, n)``, ``send_many(task, values)`` and
``close()``, driven by ``benchmarks.driver`` in a process of its own.
"""
