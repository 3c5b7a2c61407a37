"""The limits of docs/limits.md that the attacks elsewhere do not reach:
the write-buffer cap, the closing-handshake timeout and the keepalive
timeout. In-process servers with small limits, raw-socket clients.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import fastws
from tests.conformance.wire import PING, T, close, open_ws, parse_frames, pong, read_until_closed, text
from tests.conftest import serving, unit


class Firehose(fastws.Handler):
    """On any message, sends 64 messages of 256 KiB at once."""

    closed: list[int] = []

    def on_message(self, ws, data, is_text):
        for _ in range(64):
            ws.send(b"\0" * 262144)

    def on_close(self, ws, code, reason):
        type(self).closed.append(code)


async def _in_thread(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def test_max_write_buffer_drops_a_peer_that_does_not_read(caplog):
    """16 MiB sent to a client that reads nothing: over max_write_buffer
    (4 MiB here) the server drops it; on_close says 1006."""
    caplog.set_level(logging.WARNING, logger="fastws")
    Firehose.closed = []
    async with serving(Firehose, max_write_buffer=4 * 2**20) as (server, _url):
        port = server.sockets[0].getsockname()[1]

        def client() -> str:
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            sock.sendall(text("go"))
            time.sleep(1.0)  # do not read while the server writes
            sock.settimeout(unit(5))
            got = 0
            try:
                while True:
                    chunk = sock.recv(1 << 20)
                    if not chunk:
                        return f"eof after {got}"
                    got += len(chunk)
            except ConnectionResetError:
                return f"reset after {got}"
            finally:
                sock.close()

        how = await _in_thread(client)
        deadline = time.monotonic() + unit(5)
        while not Firehose.closed and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    assert Firehose.closed == [1006], (Firehose.closed, how)
    # Far less than the 16 MiB sent reached the client: it was dropped.
    received = int(how.split()[-1])
    assert received < 16 * 2**20, how
    assert "peer is not reading" in caplog.text


class Closer(fastws.Handler):
    def on_message(self, ws, data, is_text):
        ws.close(1000, "bye")


async def test_close_timeout_drops_a_peer_that_never_answers_close():
    """The server sends its close; the client never answers. After
    close_timeout (0.5 s here) the server drops the TCP connection."""
    async with serving(Closer, close_timeout=0.5) as (server, _url):
        port = server.sockets[0].getsockname()[1]

        def client() -> tuple[list[tuple[object, ...]], str, float]:
            sock, rest = open_ws(port)
            try:
                sock.sendall(text("close please"))
                t0 = time.monotonic()
                reply = read_until_closed(sock, unit(5), rest)
                return [f.brief() for f in reply.frames], reply.ending, time.monotonic() - t0
            finally:
                sock.close()

        frames, ending, elapsed = await _in_thread(client)
    assert frames == [("close", 1000)]
    assert ending in ("eof", "reset")
    assert elapsed >= 0.4, elapsed


async def test_keepalive_timeout_closes_with_1011():
    """Coroutine level: the server pings every 0.2 s; a client that never
    answers is closed with 1011 after ping_timeout (0.3 s here). A client
    that answers stays open."""

    async def handler(ws):
        async for message in ws:
            await ws.send(message)

    async with serving(handler, ping_interval=0.2, ping_timeout=0.3) as (server, _url):
        port = server.sockets[0].getsockname()[1]

        def silent() -> list[tuple[object, ...]]:
            sock, rest = open_ws(port)
            try:
                reply = read_until_closed(sock, unit(5), rest)
            finally:
                sock.close()
            return [f.brief() for f in reply.frames]

        def answering() -> list[tuple[object, ...]]:
            sock, rest = open_ws(port)
            buf = bytearray(rest)
            pings = 0
            sock.settimeout(unit(2))
            try:
                t0 = time.monotonic()
                while time.monotonic() - t0 < 1.2:
                    buf += sock.recv(4096)
                    for f in parse_frames(buf):
                        assert f.opcode == PING, f
                        pings += 1
                        sock.sendall(pong(f.payload))
                sock.sendall(text("alive") + close(1000))
                reply = read_until_closed(sock, unit(5), bytes(buf))
            finally:
                sock.close()
            assert pings >= 3, pings
            return [f.brief() for f in reply.frames if f.opcode != PING]

        frames = await _in_thread(silent)
        assert frames[0][0] == PING and frames[1:] == [("close", 1011)], frames
        assert await _in_thread(answering) == [T("alive"), ("close", 1000)]
