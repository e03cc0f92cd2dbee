"""Redis Cluster: the client taskq uses, and where a key lives.

Every key of a partition carries the partition's hash tag, so every
command, script and transaction taskq sends touches one slot, and
redis-py's cluster client routes it to the node that holds the slot. What
this module adds to that client is Lua scripts in pipelines: redis-py's
single-server pipeline loads the scripts it is about to call, but its
cluster pipeline sends EVALSHA and leaves a NOSCRIPT error to the caller.
A node that never ran a script answers NOSCRIPT: a replica promoted by a
failover, a restarted master, a node added to the cluster. The pipelines
of :class:`ClusterClient` then load the script on the masters and send
those calls again.
"""

from __future__ import annotations

from typing import Any

import redis.cluster
from redis.cluster import ClusterPipeline, RedisCluster
from redis.commands.core import Script
from redis.crc import key_slot
from redis.exceptions import NoScriptError


def scripts_in_cluster_pipelines() -> bool:
    """Whether this redis-py lets EVALSHA into a cluster pipeline (8.2 on)."""
    blocked = getattr(redis.cluster, "PIPELINE_BLOCKED_COMMANDS", ())
    return "EVALSHA" not in blocked


def slot_of(key: str) -> int:
    """The hash slot of ``key`` (the slot of its hash tag, when it has one)."""
    return int(key_slot(key.encode()))


class ClusterClient(RedisCluster):
    """redis-py's cluster client, with pipelines that recover from NOSCRIPT."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Script SHA -> source, for every script registered on this client.
        self.script_sources: dict[str, Any] = {}

    def register_script(self, script: Any) -> Script:
        registered = super().register_script(script)
        self.script_sources[registered.sha] = registered.script
        return registered

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)  # type: ignore[no-untyped-call]
        # redis-py builds its pipeline from internal arguments that change
        # from one version to the next; taking the pipeline it built and
        # giving it the subclass below follows whatever it decides.
        pipe.__class__ = ScriptPipeline
        pipe.script_sources = self.script_sources
        pipe.atomic = bool(transaction)
        return pipe

    def node_of(self, key: str) -> str:
        """``host:port`` of the master that holds ``key``."""
        node = self.get_node_from_key(key)  # type: ignore[no-untyped-call]
        return str(node.name)


class ScriptPipeline(ClusterPipeline):
    """A cluster pipeline that loads the scripts a node is missing."""

    script_sources: dict[str, Any]
    atomic: bool

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        queued = [(c.args, dict(c.options)) for c in self._queued()]
        if self.atomic:
            # A transaction would run its other commands and fail only the
            # script, so the scripts go first instead.
            for args, _ in queued:
                if _is_evalsha(args):
                    self._load(args[1])
            return list(super().execute(raise_on_error))
        results = list(super().execute(raise_on_error=False))
        missing = [n for n, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing and all(self._load(queued[n][0][1]) for n in missing):
            for n in missing:
                args, options = queued[n]
                self.execute_command(*args, **options)  # type: ignore[no-untyped-call]
            for n, result in zip(missing, super().execute(False), strict=True):
                results[n] = result
        if raise_on_error:
            for result in results:
                if isinstance(result, Exception):
                    raise result
        return results

    def _queued(self) -> list[Any]:
        strategy = getattr(self, "_execution_strategy", None)
        if strategy is not None:
            return list(strategy.command_queue)
        return list(self.command_stack)

    def _load(self, sha: Any) -> bool:
        """SCRIPT LOAD on every master; False for a script of another client."""
        if isinstance(sha, bytes):
            sha = sha.decode()
        source = self.script_sources.get(sha)
        if source is None:
            return False
        # Sent at once, not queued: RedisCluster's own execute_command.
        RedisCluster.execute_command(self, "SCRIPT LOAD", source)  # type: ignore[no-untyped-call]
        return True


def _is_evalsha(args: tuple[Any, ...]) -> bool:
    name = args[0]
    if isinstance(name, bytes):
        name = name.decode()
    return str(name).upper() == "EVALSHA"
