"""Clients that vanish at every byte offset of a handshake and of a frame.

In-process server (the codec ``fastws._select`` picked: compiled unless
FASTWS_NO_EXTENSIONS=1), so that its connection registry can be inspected:
after each batch it must be empty again, and the log must hold no traceback
and no ERROR record (asyncio's "exception in callback" included).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import subprocess
import sys
import time

import pytest

from fastws.demo import EchoHandler
from tests.conformance.wire import binary, close, ping, text
from fastws._select import NO_EXTENSIONS
from tests.conftest import ROOT, UPGRADE, serving, unit

# Handshake, then a 16-bit-length text frame (header 8 bytes), a ping and a
# close: every prefix of this is a place a client may vanish.
FRAMES = text("x" * 200) + ping(b"p") + binary(b"\x00" * 3) + close(1000, "bye")
WIRE = UPGRADE + FRAMES


class Counting(EchoHandler):
    """The echo demo, counting opened and closed connections."""

    opened = 0
    closed = 0

    def on_connect(self, ws):
        type(self).opened += 1

    def on_close(self, ws, code, reason):
        type(self).closed += 1


async def _vanish(port: int, data: bytes, how: str, after_101: bool = False) -> None:
    """Connect, send ``data``, disappear: ``fin`` (close), ``rst`` (abort)
    or ``half`` (shut down our sending side, then close). With
    ``after_101`` the handshake is completed first (``data`` is then sent
    in a separate write, after the 101 was read)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        if after_101:
            await loop.sock_sendall(sock, UPGRADE)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), unit(5))
                assert chunk, head
                head += chunk
            assert head.startswith(b"HTTP/1.1 101"), head
        if data:
            await loop.sock_sendall(sock, data)
        if how == "rst":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif how == "half":
            sock.shutdown(socket.SHUT_WR)
            await asyncio.sleep(0)
    finally:
        sock.close()


async def _wait_no_connections(server, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while server._context.connections and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return len(server._context.connections)


@pytest.mark.parametrize("how", ["fin", "rst", "half"])
@pytest.mark.parametrize("after_101", [False, True], ids=["one-write", "after-101"])
async def test_disconnect_at_every_offset(how, after_101, caplog):
    """One connection per prefix of WIRE (or, ``after-101``, of FRAMES sent
    once the handshake is done), each dropped right after its bytes."""
    caplog.set_level(logging.INFO)
    errors: list[dict] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    wire = FRAMES if after_101 else WIRE
    offsets = range(len(wire) + 1)
    Counting.opened = Counting.closed = 0
    async with serving(Counting, open_timeout=unit(5), close_timeout=unit(5)) as (server, _url):
        port = server.sockets[0].getsockname()[1]
        batch = 64
        for start in range(0, len(offsets), batch):
            await asyncio.gather(*(_vanish(port, wire[:k], how, after_101) for k in offsets[start : start + batch]))
        left = await _wait_no_connections(server, unit(5))
        assert left == 0, f"{left} connections still registered after {how} disconnects"
        # The server still works.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(UPGRADE + text("alive") + close(1000))
        data = await asyncio.wait_for(reader.read(), unit(5))
        writer.close()
        assert data.endswith(b"\x81\x05alive\x88\x02\x03\xe8"), data[-40:]
    assert not errors, errors
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]
    assert "Traceback" not in caplog.text
    # Every connection that opened was closed, on_close included; every
    # prefix holding the whole handshake opened (an RST may beat the data).
    assert Counting.closed == Counting.opened
    full = len(FRAMES) + 1 + 1  # + the "alive" check
    if how == "rst" and not after_101:
        assert 1 <= Counting.opened <= full
    else:
        assert Counting.opened == full, Counting.opened


@pytest.mark.skipif(NO_EXTENSIONS, reason="this run already uses the pure-Python codec")
def test_disconnects_with_the_pure_codec():
    """The same tests with the pure-Python twins: the codec is picked once
    per process (fastws._select), so they run in a child pytest."""
    env = dict(os.environ, FASTWS_NO_EXTENSIONS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{__file__}::test_disconnect_at_every_offset"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=unit(120),
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "6 passed" in proc.stdout, proc.stdout[-2000:]
