"""Bad and broken clients over raw sockets, after a good handshake.

The server must answer each protocol violation with the right close code,
then close TCP, log no traceback, and keep serving everyone else.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
import time

import pytest

from fastws.codec._frame_py import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_TEXT

from ..conftest import UPGRADE, raw_connect, serving, unit
from .conftest import MASK, FrameStream, client_frame, eventually, open_ws, port_of, recording

pytestmark = pytest.mark.timeout(30)


def masked_header(opcode: int, length: int, fin: bool = True) -> bytes:
    """A masked frame header announcing ``length`` payload bytes (no payload)."""
    b0 = (0x80 if fin else 0) | opcode
    if length < 126:
        return bytes([b0, 0x80 | length]) + MASK
    if length < 2**16:
        return bytes([b0, 0x80 | 126]) + struct.pack("!H", length) + MASK
    return bytes([b0, 0x80 | 127]) + struct.pack("!Q", length) + MASK


def violate(port: int, data: bytes, then: bytes | None = None) -> tuple[tuple[int, str], bool]:
    """Handshake, send ``data``; return the close (code, reason) the server
    sends and whether it then closed TCP. ``then`` is sent after the close
    frame arrived (it must not be needed to trigger it)."""
    sock = open_ws(port)
    try:
        sock.sendall(data)
        stream = FrameStream(sock)
        close = stream.expect_close()
        if then is not None:
            try:
                sock.sendall(then)
            except OSError:
                pass
        return close, stream.at_eof()
    finally:
        sock.close()


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], caplog.text


CASES = {
    "unmasked": (client_frame(OP_TEXT, "hi", mask=None), 1002),
    "unmasked-binary-64k": (client_frame(OP_BINARY, b"x" * 70000, mask=None), 1002),
    "invalid-utf8": (client_frame(OP_TEXT, b"\xff\xfe"), 1007),
    "surrogate-utf8": (client_frame(OP_TEXT, b"\xed\xa0\x80"), 1007),
    "truncated-utf8": (client_frame(OP_TEXT, b"caf\xc3"), 1007),
    "reserved-opcode-3": (masked_header(0x3, 1) + bytes([ord("x") ^ MASK[0]]), 1002),
    "reserved-opcode-B": (masked_header(0xB, 0), 1002),
    "rsv1-without-extension": (bytes([0xC1, 0x82]) + MASK + bytes(a ^ b for a, b in zip(b"hi", MASK)), 1002),
    "rsv2": (bytes([0xA1, 0x80]) + MASK, 1002),
    "continuation-first": (client_frame(OP_CONT, b"x"), 1002),
    "text-inside-fragmented": (client_frame(OP_TEXT, "a", fin=False) + client_frame(OP_TEXT, "b"), 1002),
    "ping-over-125": (masked_header(OP_PING, 126) + b"p" * 126, 1002),
    "fragmented-ping": (masked_header(OP_PING, 1, fin=False) + b"p", 1002),
    "close-1-byte": (client_frame(OP_CLOSE, b"\x03"), 1002),
    "close-code-1005": (client_frame(OP_CLOSE, struct.pack("!H", 1005)), 1002),
    "close-code-999": (client_frame(OP_CLOSE, struct.pack("!H", 999)), 1002),
    "close-reason-invalid-utf8": (client_frame(OP_CLOSE, struct.pack("!H", 1000) + b"\xff"), 1007),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_protocol_violation_gets_close_code_then_tcp_close(name: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fastws")
    data, code = CASES[name]
    handler, log = recording()
    async with serving(handler) as (server, url):
        (got, reason), eof = await asyncio.to_thread(violate, port_of(url), data)
        assert got == code, reason
        assert eof, "server did not close TCP after failing the connection"
        await eventually(lambda: not server._context.connections, what="connection to go")
        # The server still serves.
        close, _ = await asyncio.to_thread(violate, port_of(url), client_frame(OP_CLOSE, struct.pack("!H", 1000)))
        assert close[0] == 1000
    no_tracebacks(caplog)
    assert len(log.closes()) == 2


async def test_invalid_first_fragment_fails_before_the_last_fragment() -> None:
    async with serving(recording()[0]) as (_, url):
        # Invalid at once.
        close, eof = await asyncio.to_thread(
            violate,
            port_of(url),
            client_frame(OP_TEXT, b"ok\xff", fin=False),
            then=client_frame(OP_CONT, b"end"),
        )
        assert close[0] == 1007 and eof
        # Valid so far, invalid with the second fragment, before the third.
        close, eof = await asyncio.to_thread(
            violate,
            port_of(url),
            client_frame(OP_TEXT, b"\xe2\x82", fin=False) + client_frame(OP_CONT, b"(", fin=False),
            then=client_frame(OP_CONT, b"end"),
        )
        assert close[0] == 1007 and eof


async def test_invalid_utf8_in_a_large_frame_fails_before_its_end() -> None:
    # Only the first 64 KiB of a 1 MB text frame arrive; the bad byte is in them.
    async with serving(recording()[0], max_message_size=2**21) as (_, url):
        payload = b"\xff" + b"a" * 65535
        masked = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
        close, eof = await asyncio.to_thread(violate, port_of(url), masked_header(OP_TEXT, 10**6) + masked)
        assert close[0] == 1007 and eof


async def test_huge_declared_length_gets_1009_without_the_payload() -> None:
    handler, log = recording()
    async with serving(handler) as (_, url):
        start = time.monotonic()
        close, eof = await asyncio.to_thread(violate, port_of(url), masked_header(OP_BINARY, 100 * 10**6))
        assert close[0] == 1009 and eof
        assert time.monotonic() - start < unit(5)
        # Just over the limit, also announced in the header (16-bit length).
        async with serving(handler, max_message_size=1000) as (_, url2):
            close, eof = await asyncio.to_thread(violate, port_of(url2), masked_header(OP_TEXT, 1001))
            assert close[0] == 1009 and eof
            # A fragmented message that grows over the limit.
            close, eof = await asyncio.to_thread(
                violate,
                port_of(url2),
                client_frame(OP_BINARY, b"x" * 600, fin=False) + client_frame(OP_CONT, b"y" * 600),
            )
            assert close[0] == 1009 and eof


async def test_vanishing_mid_frame_leaves_server_serving() -> None:
    handler, log = recording()

    def half_frame(port: int) -> None:
        sock = open_ws(port)
        frame = client_frame(OP_BINARY, b"z" * 1000)
        sock.sendall(frame[:500])
        time.sleep(0.05)
        sock.close()

    def echo(port: int) -> tuple[int, bytes] | None:
        sock = open_ws(port)
        try:
            sock.sendall(client_frame(OP_TEXT, "still serving"))
            return FrameStream(sock).next()
        finally:
            sock.close()

    async with serving(handler) as (server, url):
        await asyncio.to_thread(half_frame, port_of(url))
        await eventually(lambda: log.closes(), what="on_close")
        assert log.closes() == [(1006, "")]
        assert await asyncio.to_thread(echo, port_of(url)) == (OP_TEXT, b"still serving")
        # The half frame never became a message.
        assert log.of("message") == [("message", b"still serving", True)]


def vanish(port: int, rng: random.Random) -> None:
    """Connect, send a random prefix of handshake + frames, then vanish
    with a FIN or an RST."""
    stream = UPGRADE + client_frame(OP_TEXT, "x" * 300) + client_frame(OP_BINARY, b"y" * 70000)
    cut = rng.choice([rng.randrange(0, len(UPGRADE) + 1), rng.randrange(len(UPGRADE), len(stream) + 1)])
    sock = raw_connect(port)
    try:
        if rng.random() < 0.5:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(stream[:cut])
        if cut > len(UPGRADE) and rng.random() < 0.5:
            sock.recv(100)  # sometimes read the 101 first
        time.sleep(rng.random() * 0.05)
    except OSError:
        pass
    finally:
        sock.close()


async def test_fifty_clients_vanishing_leave_no_connection(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fastws")
    handler, log = recording()
    async with serving(handler) as (server, url):
        port = port_of(url)
        rngs = [random.Random(seed) for seed in range(50)]
        await asyncio.gather(*(asyncio.to_thread(vanish, port, rng) for rng in rngs))
        await eventually(
            lambda: len(server.connections) == 0 and len(server._context.connections) == 0,
            timeout=5,
            what=f"connections to drain: {server._context.connections}",
        )
        # Every connection that opened was reported closed, exactly once.
        await eventually(lambda: len(log.of("connect")) == len(log.of("close")), what="on_close for each")
        assert log.of("connect"), "no client got past the handshake: the test lost its point"
        assert all(code == 1006 for code, _ in log.closes())
        # And the server still works.

        def echo() -> tuple[int, bytes] | None:
            sock = open_ws(port)
            try:
                sock.sendall(client_frame(OP_TEXT, "alive"))
                return FrameStream(sock).next()
            finally:
                sock.close()

        assert await asyncio.to_thread(echo) == (OP_TEXT, b"alive")
    no_tracebacks(caplog)
