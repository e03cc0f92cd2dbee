import collections
import subprocess
import sys

import pytest

from taskq import partition_for
from taskq.partitioning import RoundRobin


def test_known_values_are_fixed_forever() -> None:
    # CRC-32 (IEEE 802.3) of the UTF-8 bytes, modulo the partition count.
    # These values are part of the public contract: changing them moves
    # every key to another partition.
    assert partition_for("a@example.org", 2**32) == 665612698
    assert partition_for("user-1", 2**32) == 2116437524
    assert partition_for("a@example.org", 4) == 2
    assert partition_for("user-1", 4) == 0


def test_int_and_str_keys_are_one_key() -> None:
    assert partition_for(7, 8) == partition_for("7", 8) == partition_for(b"7", 8)


def test_stable_across_processes_with_different_hash_seeds() -> None:
    code = "from taskq import partition_for; print(partition_for('k-42', 16))"
    results = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": seed, "PATH": ""},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2", "3")
    }
    assert results == {str(partition_for("k-42", 16))}


def test_keys_spread_over_partitions() -> None:
    counts = collections.Counter(partition_for(f"user-{i}", 8) for i in range(8000))
    assert set(counts) == set(range(8))
    assert min(counts.values()) > 800


def test_round_robin_is_even() -> None:
    rr = RoundRobin()
    counts = collections.Counter(rr.next(4) for _ in range(400))
    assert counts == {0: 100, 1: 100, 2: 100, 3: 100}


def test_partition_count_must_be_positive() -> None:
    with pytest.raises(ValueError):
        partition_for("k", 0)
