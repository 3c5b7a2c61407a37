"""The real-Redis test infrastructure works: a server, a crash with AOF, a cluster.

Each test is bounded by the project's pytest-timeout (pyproject.toml).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..conftest import unit
from .redis_fixtures import redis_cluster, redis_server, redis_server_aof
from .redis_service import RedisCluster, RedisServer, command

__all__ = ["redis_cluster", "redis_server", "redis_server_aof"]  # the fixtures, used by name


def test_set_get(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = redis_server.client()
    try:
        assert client.ping()
        assert client.set("fastws:greeting", "hello")
        assert client.get("fastws:greeting") == "hello"
    finally:
        client.close()


def test_aof_survives_kill_and_restart(redis_server_aof: RedisServer) -> None:
    server = redis_server_aof
    port, pid = server.port, server.pid
    client = server.client()
    try:
        assert client.set("fastws:durable", "kept")
    finally:
        client.close()

    server.kill()  # SIGKILL: no shutdown, no final fsync
    assert not server.running
    server.restart()
    assert server.port == port and server.pid != pid

    client = server.client()
    try:
        assert client.get("fastws:durable") == "kept"
    finally:
        client.close()
    assert any(Path(server.dir).rglob("*.aof")), "no AOF file written"


def test_cluster_state_ok(redis_cluster: RedisCluster) -> None:
    assert len(redis_cluster.nodes) == 3
    assert redis_cluster.url == f"redis+cluster://127.0.0.1:{redis_cluster.nodes[0][1]}/"
    for host, port in redis_cluster.nodes:
        info = str(command(port, "CLUSTER", "INFO", host=host))
        assert "cluster_state:ok" in info, f"{host}:{port}: {info}"
        assert "cluster_slots_assigned:16384" in info


def _next_sharded(pubsub: Any, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next sharded pub/sub message of type ``kind``, waiting at most
    ``timeout`` (scaled) seconds."""
    deadline = time.monotonic() + unit(timeout)
    while time.monotonic() < deadline:
        message = pubsub.get_sharded_message(timeout=0.2)
        if message is not None and message["type"] == kind:
            return dict(message)
    raise AssertionError(f"no {kind} message within {unit(timeout):.0f} s")


def test_sharded_pubsub_round_trip(redis_cluster: RedisCluster) -> None:
    client: Any = redis_cluster.client()  # redis-py's cluster pub/sub is untyped
    pubsub = client.pubsub()
    try:
        # One channel on each master, so every node's shard pub/sub is used.
        channels: dict[str, str] = {}
        for i in range(1000):
            channel = f"fastws:room:{i}"
            node = client.get_node_from_key(channel).name
            channels.setdefault(node, channel)
            if len(channels) == len(redis_cluster.nodes):
                break
        assert len(channels) == 3

        for channel in channels.values():
            pubsub.ssubscribe(channel)
            assert _next_sharded(pubsub, "ssubscribe")["channel"] == channel

        for channel in channels.values():
            assert client.spublish(channel, f"hello {channel}") == 1
            message = _next_sharded(pubsub, "smessage")
            assert message["channel"] == channel
            assert message["data"] == f"hello {channel}"
    finally:
        pubsub.close()
        client.close()
