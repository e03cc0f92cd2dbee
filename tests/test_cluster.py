"""Redis Cluster and Sentinel: URLs, partitions on nodes, scripts, readers.

The contract tests run on the cluster through the ``app`` fixture; these
are the cluster's own: what only a cluster (or Sentinel) can show.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import redis

import taskq
from taskq import Context, TaskQ, Worker
from taskq.cluster import ClusterClient, slot_of
from taskq.connection import connect, redact
from taskq.reading import ReadShares, read_sets
from tests.clusters import ClusterServers, SentinelServers
from tests.test_cli import cli  # noqa: F401 - a fixture
from tests.test_worker import pending

# -- URLs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, message",
    [
        ("redis+cluster://", "is not host:port"),
        ("redis+cluster://h1:7000,h2:port", "'h2:port' is not host:port"),
        ("redis+cluster://h1:7000/0", "no databases"),
        ("redis+cluster://h1:7000?db=1", "no databases"),
        ("redis+sentinel://s1:26379", "name the service"),
        ("redis+sentinel://s1:26379/a/b", "name the service"),
        ("redis+sentinel://s1:26379/svc?db=one", "db must be a number"),
        ("redis+sentinel://s1:26379/svc?colour=red", "unknown option(s) colour"),
        ("redis+shards://h1:7000", "unsupported Redis URL"),
    ],
)
def test_bad_urls_are_one_clear_error(url: str, message: str) -> None:
    with pytest.raises(taskq.ConfigurationError) as caught:
        connect(url)
    assert message in str(caught.value)


def test_passwords_stay_out_of_messages() -> None:
    url = "redis+cluster://app:s3cret@10.0.0.1:7000,10.0.0.2:7000"
    assert redact(url) == "redis+cluster://app:***@10.0.0.1:7000,10.0.0.2:7000"
    with pytest.raises(taskq.ConfigurationError) as caught:
        connect("redis+sentinel://:s3cret@s1:26379")
    assert "s3cret" not in str(caught.value)


def test_a_sentinel_url_names_the_service_db_and_passwords() -> None:
    client = connect(
        "redis+sentinel://:p%40ss@127.0.0.1:1,[::1]:2/orders?db=3&sentinel_password=x"
    )
    pool: Any = client.connection_pool
    assert pool.service_name == "orders"
    assert pool.connection_kwargs["db"] == 3
    assert pool.connection_kwargs["password"] == "p@ss"
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [1, 2]
    assert sentinels[1].connection_pool.connection_kwargs["host"] == "::1"
    assert sentinels[0].connection_pool.connection_kwargs["password"] == "x"


def test_an_unreachable_cluster_is_one_clear_error() -> None:
    from tests.support import free_port

    url = f"redis+cluster://127.0.0.1:{free_port()}"
    with pytest.raises(taskq.ConnectionError, match="cannot reach Redis at redis"):
        TaskQ(url).ping()


# -- partitions and slots --------------------------------------------------------


def test_one_read_per_slot_on_a_cluster_and_one_in_all_elsewhere() -> None:
    keys = TaskQ("memory://").keys
    partitions = [keys.partition("t", p) for p in range(8)]
    assert read_sets("redis://localhost/0", partitions) == [partitions]
    assert read_sets("redis+sentinel://s:1/svc", partitions) == [partitions]
    sets = read_sets("redis+cluster://h:1", partitions)
    assert [pk for one in sets for pk in one] == partitions
    for one in sets:
        assert len({slot_of(pk.stream) for pk in one}) == 1
        assert {slot_of(k) for pk in one for k in (pk.stream, pk.delayed, pk.dead)} == {
            slot_of(one[0].stream)
        }


class _Room:
    def __init__(self, free: int) -> None:
        self.free = free

    def reserve_room(self, most: int) -> int:
        granted = min(most, self.free)
        self.free -= granted
        return granted

    def return_room(self, count: int) -> None:
        self.free += count


def test_slot_readers_share_the_room_and_busy_ones_read_in_batches() -> None:
    one = ReadShares(1)
    with one.turn(0, free=16, streams=8, read_batch=256, room=_Room(16)) as turn:
        assert turn == (2, True)  # one server: 2 per stream, 16 in all
    shares = ReadShares(8)
    room = _Room(16)
    with shares.turn(3, free=16, streams=1, read_batch=256, room=room) as turn:
        assert turn == (2, True)  # quiet: an even share, blocking
    shares.found(3, True)
    with shares.turn(3, free=16, streams=1, read_batch=256, room=room) as turn:
        assert turn == (16, False)  # busy: all the room, at once
        assert room.free == 0  # reserved while the read is out
        with shares.turn(3, free=0, streams=1, read_batch=256, room=room) as other:
            assert other == (0, False)
    assert room.free == 16
    with shares.turn(3, free=16, streams=1, read_batch=10, room=room) as turn:
        assert turn == (10, False)


def test_the_slot_check_catches_a_script_over_two_slots(
    redis_app: TaskQ, scripts_touch_one_slot: list[str]
) -> None:
    script = redis_app.redis.register_script("return #KEYS")
    assert script(keys=["{a}x", "{a}y"]) == 2
    with pytest.raises(AssertionError, match="several slots"):
        script(keys=["{a}x", "{b}y"])
    assert len(scripts_touch_one_slot) == 1
    scripts_touch_one_slot.clear()


@pytest.mark.parametrize("backend_url", ["cluster"], indirect=True)
def test_stats_show_which_node_holds_each_partition(
    cli: Any,  # noqa: F811 - the fixture imported above
    redis_cluster: ClusterServers,
) -> None:
    app = cli.app
    app.topic("wide", partitions=12)
    for n in range(12):
        app.publish("wide", {"n": n}, key=n)
    result = cli("stats", "tests.apps.cli_app:app", "--topic", "wide", "--json")
    assert result.exit_code == 0, result.output
    partitions = json.loads(result.output)["partitions"]
    masters = {f"127.0.0.1:{node.port}" for node in redis_cluster.primaries()}
    assert len(partitions) == 12
    for stats in partitions:
        assert stats["node"] == app.redis.node_of(stats["stream"])
    # Twelve hash tags land on all three masters.
    assert {stats["node"] for stats in partitions} == masters
    table = cli("stats", "tests.apps.cli_app:app", "--topic", "wide")
    assert table.output.splitlines()[0].split()[-1] == "node"


# -- scripts ---------------------------------------------------------------------


def test_pipelines_load_scripts_a_node_has_forgotten(
    make_app: Any, cluster_url: str, running: Any, until: Any
) -> None:
    app = make_app(cluster_url)
    attempts: list[int] = []

    @app.task(topic="flaky", retries=2, backoff=0.01)
    def flaky(ctx: Context) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            # A node restarted, or a replica that never ran the script
            # took over: the retry script is unknown there.
            app.redis.script_flush()
            raise RuntimeError("once")

    app.topic("flaky", partitions=3)
    for _ in range(3):
        flaky.send()
    with running(Worker(app)):
        until(lambda: sorted(attempts) == [1, 1, 1, 2, 2, 2], timeout=10)
        until(lambda: pending(app, "flaky") == 0)


def test_a_transaction_on_a_cluster_loads_its_scripts_first(cluster_url: str) -> None:
    client = connect(cluster_url)
    assert isinstance(client, ClusterClient)
    script = client.register_script("return redis.call('INCR', KEYS[1])")
    client.script_flush()
    pipe = client.pipeline(transaction=True)
    script(keys=["{tx}n"], client=pipe)
    pipe.get("{tx}n")
    assert pipe.execute() == [1, b"1"]
    client.delete("{tx}n")
    client.close()


# -- readers ---------------------------------------------------------------------


def test_a_graceful_stop_unblocks_every_slot_reader(
    make_app: Any, cluster_url: str, until: Any
) -> None:
    app = make_app(cluster_url)
    app.topic("quiet", partitions=6)

    @app.task(topic="quiet")
    def quiet() -> None: ...

    worker = Worker(app, block_ms=20_000)
    thread = threading.Thread(target=worker.run, kwargs={"install_signals": False})
    thread.start()
    assert worker.started.wait(10)
    readers = [t for t in worker._threads if t.name.startswith("taskq-reader")]
    assert len(readers) == 6  # one per partition: six hash tags, six slots
    until(lambda: len(worker._readers) == 6 and all(_blocked(worker)), timeout=10)
    started = time.monotonic()
    worker.stop()
    thread.join(15)
    assert not thread.is_alive()
    # Far less than the 20 s block: CLIENT UNBLOCK reached each reader's node.
    assert time.monotonic() - started < 8


def _blocked(worker: Worker) -> list[bool]:
    return [reader._client_id is not None for reader in worker._readers.values()]


def test_a_topic_is_read_from_every_master_in_one_worker(
    make_app: Any, cluster_url: str, redis_cluster: ClusterServers
) -> None:
    app = make_app(cluster_url)
    app.topic("spread", partitions=9)
    seen: dict[int, int] = {}
    lock = threading.Lock()

    @app.task(topic="spread", key="n")
    def job(n: int, ctx: Context) -> None:
        with lock:
            seen[n] = ctx.partition

    job.send_many([{"n": n} for n in range(300)])
    Worker(app, concurrency=4, burst=True).run(install_signals=False)
    assert sorted(seen) == list(range(300))
    client: Any = app.redis
    nodes = {
        client.node_of(app.keys.partition("spread", p).stream) for p in seen.values()
    }
    assert len(nodes) == 3


# -- Sentinel ------------------------------------------------------------------


def test_tasks_run_on_a_sentinel_managed_master(
    make_app: Any, sentinels: SentinelServers
) -> None:
    app = make_app(sentinels.url)
    ran: list[int] = []

    @app.task(topic="jobs", retries=1, backoff=0.01)
    def job(n: int, ctx: Context) -> None:
        if n % 10 == 0 and ctx.attempt == 1:
            raise RuntimeError("retry me")
        ran.append(n)

    job.send_many([{"n": n} for n in range(50)])
    direct = redis.Redis(port=sentinels.master.port)
    assert direct.xlen(app.keys.partition("jobs", 0).stream) > 0
    direct.close()
    worker = Worker(app, concurrency=4)
    thread = threading.Thread(target=worker.run, kwargs={"install_signals": False})
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while sorted(ran) != list(range(50)) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        worker.stop()
        thread.join(15)
    assert sorted(ran) == list(range(50))


# -- resharding ------------------------------------------------------------------


def _move_slot(cluster: ClusterServers, slot: int, to_port: int) -> None:
    """Move ``slot`` with its keys to the master on ``to_port``, the way
    ``redis-cli --cluster reshard`` does it."""
    masters = {node.port: redis.Redis(port=node.port) for node in cluster.primaries()}
    try:
        ids = {
            port: client.execute_command("CLUSTER", "MYID")
            for port, client in masters.items()
        }
        [from_port] = [
            port
            for port, client in masters.items()
            if client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) > 0
        ]
        source, target = masters[from_port], masters[to_port]
        target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[from_port])
        source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[to_port])
        while keys := source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            source.execute_command(
                "MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys
            )
        for client in masters.values():
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[to_port])
    finally:
        for client in masters.values():
            client.close()


def test_a_partition_moved_to_another_master_keeps_being_served(
    make_app: Any,
    cluster_url: str,
    redis_cluster: ClusterServers,
    running: Any,
    until: Any,
) -> None:
    app = make_app(cluster_url)
    app.topic("moving", partitions=1)
    ran: set[int] = set()

    @app.task(topic="moving", retries=2, backoff=0.01)
    def job(n: int, ctx: Context) -> None:
        if n % 10 == 0 and ctx.attempt == 1:
            raise RuntimeError("a retry on each side of the move")
        ran.add(n)

    stream = app.keys.partition("moving", 0).stream
    client: Any = app.redis
    before = client.node_of(stream)
    [elsewhere] = [
        node.port
        for node in redis_cluster.primaries()
        if f"127.0.0.1:{node.port}" != before
    ][:1]
    try:
        with running(Worker(app, concurrency=2)):
            job.send_many([{"n": n} for n in range(50)])
            until(lambda: len(ran) >= 20, timeout=10)
            _move_slot(redis_cluster, slot_of(stream), elsewhere)
            job.send_many([{"n": n} for n in range(50, 100)])
            until(lambda: ran == set(range(100)), timeout=20)
            until(lambda: pending(app, "moving") == 0, timeout=10)
        assert client.node_of(stream) == f"127.0.0.1:{elsewhere}"
    finally:
        # Later tests expect the slot layout redis-cli made.
        if client.node_of(stream) != before:
            _move_slot(redis_cluster, slot_of(stream), int(before.rsplit(":", 1)[1]))
