"""Every tunable default in one place, each with its unit."""

from __future__ import annotations

#: Redis URL used when neither ``TaskQ(url)`` nor ``TASKQ_URL`` gives one.
REDIS_URL = "redis://localhost:6379/0"

#: Port of a Redis server, and of a sentinel, when a cluster or sentinel
#: URL names a host without one.
REDIS_PORT = 6379
SENTINEL_PORT = 26379

#: Environment variable read by ``TaskQ()`` when no URL is passed.
URL_ENV = "TASKQ_URL"

#: Prefix of every key taskq writes.
NAMESPACE = "taskq"

#: Partitions of a topic that was not declared with ``app.topic()``.
PARTITIONS = 4

#: Consumer group that runs tasks (consumers name their own groups).
TASK_GROUP = "tasks"

#: Topic a task is sent to when its decorator names none.
TASK_TOPIC = "default"

#: Largest encoded message ``send`` accepts, in bytes.
MAX_PAYLOAD_BYTES = 1024 * 1024

#: Retries of a failing task (attempts = retries + 1).
RETRIES = 3

#: Handler threads per worker process.
CONCURRENCY = 8

#: Without an explicit prefetch, a worker holds (beyond the entries that
#: are running) as many entries as its handlers get through in this long at
#: their recent pace, in seconds; see PREFETCH_MAX.
PREFETCH_BUFFER_S = 0.1

#: Most entries a worker holds beyond those running when its prefetch is
#: automatic (at least concurrency).
PREFETCH_MAX = 4096

#: Entries one XREADGROUP call may return.
READ_BATCH = 256

#: How long a blocking XREADGROUP waits before the worker looks around, ms.
#: Finite on purpose: a reader blocked on a deleted stream key is never
#: woken. A stopping worker ends its blocked reads at once (CLIENT UNBLOCK),
#: so this only bounds how often an idle worker asks.
BLOCK_MS = 5000

#: How long a worker keeps an entry without renewing it before another
#: member of its group may take it over, in seconds.
LEASE_S = 30.0

#: How long a stopping worker waits for running handlers, in seconds.
SHUTDOWN_TIMEOUT_S = 30.0

#: Bounds of the reconnect backoff after Redis went away, in seconds.
RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 5.0

#: Socket timeouts of the Redis client, in seconds: connecting, and waiting
#: for a reply to a command (blocking reads add their block time).
CONNECT_TIMEOUT_S = 5.0
SOCKET_TIMEOUT_S = 5.0

#: How long a scheduler keeps a job's lock without renewing it, in
#: seconds: a stopped or stalled scheduler is replaced after this long.
SCHEDULE_LOCK_S = 5.0

#: A tick is missed (and handled by the job's catch-up policy) when no
#: scheduler ran it within this many seconds after its instant.
CATCHUP_GRACE_S = 30.0

#: Most missed ticks ``catchup="all"`` runs after downtime (the latest).
MAX_CATCHUP = 100

#: Missed ticks are counted up to this many (``Context.missed``).
MISSED_COUNT_MAX = 10_000

#: Longest a scheduler sleeps between two looks at its jobs, in seconds.
SCHEDULER_POLL_S = 1.0

#: Events a digest hands to one handler call at most.
DIGEST_MAX_EVENTS = 500

#: Events one step of closing a digest window moves at most (each step is
#: one Lua call, so Redis is never blocked for long).
DIGEST_SEAL_BUDGET = 2000

#: Producers and workers read a topic's partition count again this often, s:
#: a change (``taskq topics create --force``) reaches them within it.
PARTITIONS_REFRESH_S = 10.0
