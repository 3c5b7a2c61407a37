"""``--workers N --broker workers``: the workers of one server share rooms
through the supervisor's relay, with real processes, clients and signals."""

from __future__ import annotations

import signal
import time
from typing import Any

import psutil
import pytest
from websockets.sync.client import ClientConnection

from ..conftest import unit
from .conftest import CliProcess, free_port
from .test_cli import ws_connect
from .test_production import served_by, workers_of

pytestmark = pytest.mark.timeout(90)


def spread_clients(port: int, pids: set[int], each: int = 3, limit: int = 60) -> dict[int, list[ClientConnection]]:
    """Clients until every worker serves at least ``each`` (SO_REUSEPORT spreads by hash)."""
    by_pid: dict[int, list[ClientConnection]] = {}
    for _ in range(limit):
        ws = ws_connect(f"ws://127.0.0.1:{port}/", retry_for=5)
        by_pid.setdefault(served_by(ws), []).append(ws)
        if set(by_pid) == pids and all(len(v) >= each for v in by_pid.values()):
            return by_pid
    raise AssertionError(f"clients did not reach every worker: {({k: len(v) for k, v in by_pid.items()}, pids)}")


def receive(ws: ClientConnection, n: int) -> list[str]:
    out = []
    for _ in range(n):
        message = ws.recv(timeout=unit(10))
        assert isinstance(message, str), message
        out.append(message)
    return out


def check_delivery(clients: list[ClientConnection], publishers: list[ClientConnection], per_publisher: int) -> None:
    """Each publisher sends numbered messages; every member gets each
    exactly once, and each publisher's in order."""
    for p, ws in enumerate(publishers):
        for i in range(per_publisher):
            ws.send(f"{p}:{i}")
    total = len(publishers) * per_publisher
    for ws in clients:
        got = receive(ws, total)
        for p in range(len(publishers)):
            mine = [m for m in got if m.startswith(f"{p}:")]
            assert mine == [f"{p}:{i}" for i in range(per_publisher)], (p, mine[:10])


def test_workers_share_a_room_and_a_restarted_worker_rejoins(cli_process: Any) -> None:
    port = free_port()
    proc: CliProcess = cli_process(
        "tests.integration.apps:RoomByWorker", "--workers", "2", "--broker", "workers", "--port", str(port), "--log-level", "debug"
    )
    proc.wait_for(r"worker \d \(pid \d+\) is listening", timeout=20, count=2)
    pids = workers_of(proc)
    by_pid = spread_clients(port, pids)
    clients = [ws for group in by_pid.values() for ws in group]
    # One publisher on each worker: messages cross the relay both ways.
    publishers = [group[0] for group in by_pid.values()]
    time.sleep(0.2)  # the workers' subscriptions reach the relay
    check_delivery(clients, publishers, 500)

    # A worker dies: its clients are gone; the new worker joins the relay
    # again and its clients get the survivor's messages (and vice versa).
    victim, survivor = sorted(pids)
    psutil.Process(victim).send_signal(signal.SIGKILL)
    proc.wait_for(rf"worker \d \(pid {victim}\) died", timeout=10)
    proc.wait_for(r"worker \d \(pid \d+\) is listening", timeout=20, count=3)
    for ws in by_pid[victim]:
        ws.close_socket()
    after = workers_of(proc)
    assert len(after) == 2 and survivor in after, (pids, after)
    (newcomer,) = after - {survivor}
    fresh = spread_clients(port, after, each=2)
    members = by_pid[survivor] + [ws for group in fresh.values() for ws in group]
    time.sleep(0.2)
    check_delivery(members, [fresh[newcomer][0], by_pid[survivor][0]], 200)

    for ws in members:
        ws.close()
    assert proc.stop(signal.SIGTERM) == 0, proc.output
    assert "Traceback" not in proc.output, proc.output


def test_one_worker_with_broker_workers_is_the_memory_broker(cli_process: Any) -> None:
    port = free_port()
    proc: CliProcess = cli_process("tests.integration.apps:RoomByWorker", "--broker", "workers", "--port", str(port))
    proc.wait_for("serving", timeout=20)
    a = ws_connect(f"ws://127.0.0.1:{port}/", retry_for=5)
    b = ws_connect(f"ws://127.0.0.1:{port}/", retry_for=5)
    served_by(a), served_by(b)
    check_delivery([a, b], [a], 50)
    a.close()
    b.close()
    assert proc.stop(signal.SIGTERM) == 0, proc.output


def test_the_relay_forwards_to_the_others_and_drops_a_peer_that_sends_garbage(tmp_path: Any) -> None:
    """The relay's socket, spoken raw: a publish reaches the other peer in the
    room and not the publisher; a frame with an impossible length closes that
    peer's connection and the relay keeps serving the others."""
    import socket
    import struct

    from fastws.rooms.workers import Relay, relay_path

    relay = Relay(relay_path(str(tmp_path)))
    relay.start()
    try:
        def peer() -> socket.socket:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(unit(5))
            s.connect(relay.path)
            return s

        def frame(kind: bytes, body: bytes) -> bytes:
            return struct.pack("!IB", len(body) + 1, kind[0]) + body

        a, b, bad = peer(), peer(), peer()
        a.sendall(frame(b"S", b"r"))
        b.sendall(frame(b"S", b"r"))
        time.sleep(0.1)
        body = struct.pack("!H", 1) + b"r" + b"message"
        a.sendall(frame(b"P", body))
        assert b.recv(100) == frame(b"M", body)
        bad.sendall(struct.pack("!IB", 2**31, ord("P")))
        assert bad.recv(100) == b""  # dropped
        b.sendall(frame(b"P", body))
        assert a.recv(100) == frame(b"M", body)
        for s in (a, b, bad):
            s.close()
    finally:
        relay.stop()
