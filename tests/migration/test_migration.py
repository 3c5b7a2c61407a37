"""Each program in ``examples/`` runs twice: as written (on ``websockets``) and
migrated (its imports pointed at ``fastws``). The same ``websockets`` client
code drives both and the same results are asserted for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import random
import subprocess
import sys
import socket
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus

from fastws.codec._frame_py import OP_CLOSE, OP_PING, parse_close

from ..conftest import UPGRADE, unit
from .harness import LIBS, eventually, load, migrate, running


@pytest.fixture(params=LIBS)
def lib(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_migration_is_the_import_line() -> None:
    """The migrated source differs from the original in import lines only."""
    from .harness import EXAMPLES

    names = sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py"))
    assert len(names) >= 8
    for name in names:
        with open(os.path.join(EXAMPLES, name), encoding="utf-8") as f:
            source = f.read()
        assert 'if __name__ == "__main__":' in source, name
        before = source.splitlines()
        after = migrate(source).splitlines()
        assert len(before) == len(after)
        changed = [(a, b) for a, b in zip(before, after) if a != b]
        assert changed, name
        for old, new in changed:
            assert old.startswith("from websockets.") and new.startswith("from fastws import "), (old, new)


# -- (a) echo ------------------------------------------------------------------


async def test_echo(lib: str) -> None:
    async with asyncio.timeout(unit(20)):
        async with running(load("echo", lib)) as url:
            async with connect(url) as ws:
                for message in ["hello", "", "é" * 1000, b"\x00\xff", b"", bytes(range(256)) * 400]:
                    await ws.send(message)
                    echoed = await ws.recv()
                    assert echoed == message and type(echoed) is type(message)
                for i in range(100):  # pipelined
                    await ws.send(f"m{i}")
                assert [await ws.recv() for _ in range(100)] == [f"m{i}" for i in range(100)]
            assert (ws.close_code, ws.close_reason) == (1000, "")


async def test_echo_message_over_max_size_closes_1009(lib: str) -> None:
    async with asyncio.timeout(unit(20)):
        async with running(load("echo", lib)) as url:
            async with connect(url, max_size=None) as ws:
                await ws.send(b"x" * (2**20 + 1))
                with pytest.raises(ConnectionClosedError) as info:
                    await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
            assert ws.close_code == 1009


async def test_echo_plain_http_request_gets_426(lib: str) -> None:
    async with asyncio.timeout(unit(20)):
        async with running(load("echo", lib)) as url:
            port = int(url.rsplit(":", 1)[1])
            status, _, _ = await asyncio.to_thread(http_get, port, "/")
            assert status == 426


def http_get(port: int, path: str) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=unit(5))
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        conn.close()


# -- (b) chat room with broadcast -----------------------------------------------


async def test_chat_broadcast(lib: str) -> None:
    module = load("chat", lib)
    async with asyncio.timeout(unit(20)), contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(running(module))
        clients = []
        for n in range(1, 4):
            clients.append(await stack.enter_async_context(connect(url)))
            # Everyone connected so far hears that the room grew.
            for c in clients:
                assert await c.recv() == f"users: {n}"
        await clients[0].send("hello from 0")
        assert [await c.recv() for c in clients] == ["hello from 0"] * 3
        await clients[2].send(b"\x01\x02")
        assert [await c.recv() for c in clients] == [b"\x01\x02"] * 3
        for i in range(60):
            await clients[i % 3].send(f"burst {i % 3} {i}")
        for c in clients:
            got = [str(await c.recv()) for _ in range(60)]
            # Each sender's messages arrive complete and in order.
            for sender in range(3):
                assert [m for m in got if m.startswith(f"burst {sender} ")] == [
                    f"burst {sender} {i}" for i in range(sender, 60, 3)
                ]
        await clients[2].close()
        assert [await c.recv() for c in clients[:2]] == ["users: 2"] * 2
        for c in clients[:2]:
            await c.close()
        await eventually(lambda: not module.CONNECTIONS, what="every connection unregistered")


# -- (c) authentication in process_request, health check ------------------------


async def test_auth_token_accepted(lib: str) -> None:
    async with asyncio.timeout(unit(20)):
        async with running(load("auth", lib)) as url:
            async with connect(url + "/?token=s3cr3t") as ws:
                assert await ws.recv() == "Hello alice!"
                await ws.send("hi")
                assert await ws.recv() == "alice: hi"
            async with connect(url + "/room?x=1&token=hunter2") as ws:
                assert await ws.recv() == "Hello bob!"


@pytest.mark.parametrize("path", ["/", "/?token=wrong", "/?tok=s3cr3t"])
async def test_auth_rejected_with_401(lib: str, path: str) -> None:
    async with asyncio.timeout(unit(20)):
        async with running(load("auth", lib)) as url:
            with pytest.raises(InvalidStatus) as info:
                async with connect(url + path):
                    pass
            response = info.value.response
            assert response.status_code == 401
            assert response.body == b"Missing or invalid token.\n"
            assert response.headers["Content-Type"].startswith("text/plain")


async def test_auth_healthz(lib: str) -> None:
    async with asyncio.timeout(unit(20)):
        async with running(load("auth", lib)) as url:
            port = int(url.rsplit(":", 1)[1])
            status, body, _ = await asyncio.to_thread(http_get, port, "/healthz")
            assert (status, body) == (200, b"OK\n")
            # A WebSocket client sent there gets the same answer, not a 101.
            with pytest.raises(InvalidStatus) as info:
                async with connect(url + "/healthz"):
                    pass
            assert info.value.response.status_code == 200
            assert info.value.response.body == b"OK\n"


# -- (d) subprotocols -------------------------------------------------------------


@pytest.mark.parametrize(
    "offered, chosen",
    [(["chat.v1"], "chat.v1"), (["chat.v2"], "chat.v2"), (["chat.v1", "chat.v2"], "chat.v2"), (["x", "chat.v1"], "chat.v1")],
)
async def test_subprotocol_server_preference(lib: str, offered: list[str], chosen: str) -> None:
    async with asyncio.timeout(unit(20)):
        async with running(load("subprotocol", lib)) as url:
            async with connect(url, subprotocols=offered) as ws:  # type: ignore[arg-type]
                assert ws.subprotocol == chosen
                assert await ws.recv() == f"subprotocol: {chosen}"


@pytest.mark.parametrize("offered", [None, ["chat.v3"], ["CHAT.V1"]])
async def test_subprotocol_refused_with_400(lib: str, offered: list[str] | None) -> None:
    async with asyncio.timeout(unit(20)):
        async with running(load("subprotocol", lib)) as url:
            with pytest.raises(InvalidStatus) as info:
                async with connect(url, subprotocols=offered):  # type: ignore[arg-type]
                    pass
            assert info.value.response.status_code == 400


# -- (e) producer and consumer in one handler ------------------------------------


async def test_producer_consumer(lib: str) -> None:
    async with asyncio.timeout(unit(20)):
        async with running(load("producer_consumer", lib)) as url:
            async with connect(url) as ws:
                ticks: list[str] = []
                echoes: list[str] = []
                sent = 0
                while len(echoes) < 5 or len(ticks) < 20:
                    if sent < 5 and len(ticks) >= 3 * sent:
                        await ws.send(f"word {sent}")
                        sent += 1
                    message = await ws.recv()
                    assert isinstance(message, str)
                    (ticks if message.startswith("tick ") else echoes).append(message)
            assert echoes == [f"WORD {i}" for i in range(5)]
            assert ticks == [f"tick {i}" for i in range(1, len(ticks) + 1)]
            assert ws.close_code == 1000


# -- (f) keepalive drops a silent client -----------------------------------------


def silent_client(port: int, silence: float) -> tuple[bytes, bool, float]:
    """Handshake, then neither read nor answer anything for ``silence``
    seconds; then read what the server sent. Returns (bytes after the 101,
    whether the server had closed TCP, seconds from the 101 to EOF)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=unit(5))
    try:
        sock.sendall(UPGRADE)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)  # byte by byte: read nothing after the head
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        opened = time.monotonic()
        time.sleep(silence)
        # If the server closed the connection, everything up to EOF is in
        # our receive buffer already: reading it must not wait.
        sock.settimeout(0.2)
        data = b""
        eof = False
        eof_at = 0.0
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    eof = True
                    eof_at = time.monotonic() - opened
                    break
                data += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        return data, eof, eof_at
    finally:
        sock.close()


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each complete unmasked frame in ``data``."""
    frames = []
    while len(data) >= 2:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        assert not data[1] & 0x80, "a server frame is masked"
        start = 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            length, start = int.from_bytes(data[2:10], "big"), 10
        if len(data) < start + length:
            break
        frames.append((opcode, data[start : start + length]))
        data = data[start + length :]
    return frames


async def test_keepalive_drops_silent_client(lib: str) -> None:
    module = load("keepalive", lib)
    async with asyncio.timeout(unit(20)):
        async with running(module) as url:
            port = int(url.rsplit(":", 1)[1])
            data, eof, _ = await asyncio.to_thread(silent_client, port, unit(1.0))
            assert eof, "the server had not closed the TCP connection 1 s after the handshake"
            events = server_frames(data)
            opcodes = [e[0] for e in events]
            assert opcodes[0] == OP_PING and opcodes[-1] == OP_CLOSE, opcodes
            assert set(opcodes[:-1]) == {OP_PING}
            assert parse_close(events[-1][1]) == (1011, "keepalive ping timeout")
            await eventually(lambda: module.ENDED, what="the handler saw the end")
            assert module.ENDED == [(1006, "ConnectionClosedError")]


async def test_keepalive_keeps_a_live_client(lib: str) -> None:
    module = load("keepalive", lib)
    async with asyncio.timeout(unit(20)):
        async with running(module) as url:
            async with connect(url, ping_interval=None) as ws:  # the client answers pings
                await asyncio.sleep(unit(1.0))
                await ws.send("still here")
                assert await ws.recv() == "still here"
            await eventually(lambda: module.ENDED, what="the handler saw the end")
            assert module.ENDED == [(1000, None)]


# -- (g) recv() under wait_for, close(4000, "bye") ------------------------------


async def test_idle_timeout_closes_4000(lib: str) -> None:
    module = load("idle_timeout", lib)
    async with asyncio.timeout(unit(20)):
        async with running(module) as url:
            async with connect(url) as ws:
                for i in range(6):  # each message comes before the idle timeout
                    await ws.send(f"m{i}")
                    assert await ws.recv() == f"got m{i}"
                    await asyncio.sleep(module.IDLE / 3)
                quiet = time.monotonic()
                with pytest.raises(ConnectionClosedError) as info:
                    await ws.recv()
                waited = time.monotonic() - quiet
            assert info.value.rcvd is not None
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (4000, "bye")
            assert (ws.close_code, ws.close_reason) == (4000, "bye")
            assert module.IDLE / 3 < waited < module.IDLE + unit(2)


async def test_idle_timeout_cancelled_recv_loses_nothing(lib: str) -> None:
    """Messages that arrive around the moment ``wait_for`` cancels ``recv()``
    are neither lost nor reordered: the replies are a gapless prefix of what
    was sent (``recv`` is cancellation-safe in both libraries)."""
    module = load("idle_timeout", lib)
    module.IDLE = 0.02
    rng = random.Random(5)
    async with asyncio.timeout(unit(20)):
        async with running(module) as url:
            async with connect(url) as ws:
                replies: list[str] = []

                async def read() -> None:
                    with contextlib.suppress(ConnectionClosedError):
                        async for reply in ws:
                            replies.append(str(reply))

                reader = asyncio.create_task(read())
                sent = 0
                with contextlib.suppress(ConnectionClosedError):
                    for sent in range(1, 60):
                        await ws.send(f"m{sent - 1}")
                        await asyncio.sleep(rng.uniform(0.015, 0.025))
                await reader
            assert replies == [f"got m{i}" for i in range(len(replies))]
            assert len(replies) <= sent


# -- (h) fragmented sends -------------------------------------------------------


async def test_fragments(lib: str) -> None:
    async with asyncio.timeout(unit(20)):
        async with running(load("fragments", lib)) as url:
            async with connect(url, max_size=None) as ws:
                await ws.send("list")
                # websockets ends with an empty final frame, fastws marks the
                # last chunk final: the same message, so empty frames are
                # not compared.
                assert [f async for f in ws.recv_streaming() if f] == ["frag", "ment", "ed"]
                await ws.send("agen")
                assert [f async for f in ws.recv_streaming() if f] == [b"\x00" * 4, b"\x01" * 4, b"\x02" * 4]
                await ws.send("list")
                assert await ws.recv() == "fragmented"
                await ws.send("big 2048")
                big = await ws.recv()
                assert isinstance(big, bytes) and len(big) == 2 * 2**20
                assert big == b"".join(bytes([i % 256]) * 1024 for i in range(2048))
                await ws.send("plain")
                assert await ws.recv() == "plain"
            assert ws.close_code == 1000


@pytest.mark.parametrize("lib", LIBS)
def test_examples_run_as_scripts(lib: str, tmp_path: "os.PathLike[str]") -> None:
    """``python examples/echo.py`` serves on port 8765 (if it is free), as
    written and migrated."""
    from ..conftest import ROOT
    from .harness import EXAMPLES

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does
        try:
            probe.bind(("127.0.0.1", 8765))
        except OSError:
            pytest.skip("port 8765 is busy")
    script = os.path.join(EXAMPLES, "echo.py")
    if lib == "fastws":
        with open(script, encoding="utf-8") as f:
            migrated = migrate(f.read())
        script = os.path.join(str(tmp_path), "echo.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(migrated)
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, script], env=env, cwd=str(tmp_path))
    try:

        async def talk() -> str:
            deadline = time.monotonic() + unit(10)
            while True:
                try:
                    async with connect("ws://127.0.0.1:8765") as ws:
                        await ws.send("ping?")
                        return str(await ws.recv())
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    await asyncio.sleep(0.05)

        assert asyncio.run(talk()) == "ping?"
    finally:
        proc.terminate()
        proc.wait(timeout=unit(10))
