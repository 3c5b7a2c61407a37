"""The rooms broadcast servers of ``bench.servers`` as the benchmark runs them
(``python -m bench.servers NAME --port P``, the real ``websockets`` client,
SIGTERM; see ``test_bench_peers.py``, whose helpers these tests use):

- ``fastws-rooms-broadcast`` (memory broker, one process),
  ``fastws-rooms-workers-broadcast`` (``fastws serve --workers 2 --broker
  workers``), ``fastws-rooms-redisN-broadcast`` (redis-server and N
  independent nodes on one port): clients are connected until every serving
  process (worker, node) has one, then five messages that one client sends
  reach every client (at least 3 others, on every process), the sender
  included, in order and with their opcode. When the server is stopped,
  every process it started (nodes, workers, redis-server) is gone.
- ``bench.run`` accepts the names without ``-broadcast`` for the broadcast
  scenario only.

The redis ones are skipped without ``redis-server`` (failed under ``CI=true``).
"""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import ClientConnection, connect

from ..conftest import unit
from .redis_fixtures import require_redis
from .test_bench_peers import BenchServer, received, registered

ROOMS = [
    "fastws-rooms-broadcast",
    "fastws-rooms-workers-broadcast",
    "fastws-rooms-redis1-broadcast",
    "fastws-rooms-redis2-broadcast",
    "fastws-rooms-redis3-broadcast",
]
#: At most this many clients to get one on every serving process.
MAX_CLIENTS = 48


def serving(server: BenchServer) -> dict[int, set[int]]:
    """PID of each process of the server's tree that listens on its port ->
    the client ports of the connections it holds."""
    import psutil

    assert server.proc is not None
    root = psutil.Process(server.proc.pid)
    out: dict[int, set[int]] = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="tcp")
        except psutil.Error:
            continue
        mine = [c for c in conns if c.laddr and c.laddr.port == server.port]
        if any(c.status == psutil.CONN_LISTEN for c in mine):
            out[proc.pid] = {c.raddr.port for c in mine if c.raddr and c.status == psutil.CONN_ESTABLISHED}
    return out


async def spread_clients(server: BenchServer, processes: int) -> tuple[list[ClientConnection], dict[int, int]]:
    """At least 4 clients, and more until each of the ``processes`` serving
    processes holds one (the kernel picks by a hash of the addresses);
    also which process holds each client (by its local port)."""
    clients: list[ClientConnection] = []
    try:
        while len(clients) < MAX_CLIENTS:
            clients.append(await connect(server.url))
            if len(clients) < 4:
                continue
            # The server side of a connection is accepted by now (the handshake is done).
            where = {port: pid for pid, ports in serving(server).items() for port in ports}
            owner = {ws.local_address[1]: where.get(ws.local_address[1]) for ws in clients}
            if None not in owner.values() and len(set(owner.values())) == processes:
                return clients, owner  # type: ignore[return-value]
        raise AssertionError(f"{MAX_CLIENTS} clients did not reach all {processes} processes: {serving(server)}")
    except BaseException:
        for ws in clients:
            await ws.close()
        raise


@pytest.mark.parametrize("name", ROOMS)
async def test_rooms_broadcast_server(name: str) -> None:
    from bench.servers import workers

    if "redis" in name:
        require_redis()
    processes = workers(name)
    with BenchServer(name) as server:
        assert len(serving(server)) == processes, serving(server)
        clients, owner = await spread_clients(server, processes)
        try:
            sender = clients[0]
            assert len(clients) - 1 >= 3
            # Another process holds some of the listeners: deliveries cross the broker.
            assert processes == 1 or any(owner[ws.local_address[1]] != owner[sender.local_address[1]] for ws in clients)
            await registered(clients)
            messages: list[str | bytes] = ["m0", b"m1 \x00", "m2 é", b"m3" * 1000, "m4"]
            for message in messages:
                await sender.send(message)
            got = await asyncio.wait_for(asyncio.gather(*(received(ws, len(messages)) for ws in clients)), unit(20))
            for i, seen in enumerate(got):
                assert [type(m) for m in seen] == [type(m) for m in messages], (i, owner, seen)
                assert seen == messages, (i, owner, seen)
        finally:
            for ws in clients:
                await ws.close()
        assert {ws.close_code for ws in clients} == {1000}


def test_run_accepts_rooms_names() -> None:
    from bench.run import BROADCAST_ONLY, FASTWS_SERVERS, server_for
    from bench.servers import workers

    for name in ("fastws-rooms", "fastws-rooms-workers", "fastws-rooms-redis1", "fastws-rooms-redis2", "fastws-rooms-redis3"):
        assert name in BROADCAST_ONLY and name in FASTWS_SERVERS
        assert server_for("broadcast", name) == name + "-broadcast"
        assert server_for("pipelined", name) is None  # no echo variant: skipped with a note
    assert server_for("broadcast", "fastws-rooms@base") == "fastws-rooms-broadcast@base"
    assert "fastws-callback" not in BROADCAST_ONLY
    assert [workers(n) for n in ("fastws-rooms", "fastws-rooms-workers", "fastws-rooms-redis3-broadcast", "fastws-cli-w2")] == [1, 2, 3, 2]
