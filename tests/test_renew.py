"""Lease renewal tells entries another member took from ones acknowledged."""

from __future__ import annotations

from taskq import TaskQ
from taskq.scripts import Scripts


def test_renew_tells_entries_taken_over_from_entries_settled(app: TaskQ) -> None:
    pk = app.keys.partition("leases", 0)
    client = app.redis
    ids = [client.xadd(pk.stream, {"n": str(n)}) for n in range(3)]
    client.xgroup_create(pk.stream, "g", id="0")
    client.xreadgroup("g", "a", {pk.stream: ">"})
    acked, taken, kept = ids
    client.xack(pk.stream, "g", acked)  # settled while the renewal was planned
    client.xclaim(pk.stream, "g", "b", 0, [taken])  # another member took it

    lost, gone = Scripts(client).renew(pk, "g", "a", ids)

    assert lost == [taken]
    assert gone == [acked]
    pending = client.xpending_range(pk.stream, "g", "-", "+", 10)
    assert {(p["message_id"], p["consumer"]) for p in pending} == {
        (taken, b"b"),
        (kept, b"a"),
    }
