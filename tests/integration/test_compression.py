"""permessage-deflate end to end: real clients, raw sockets, both API levels.

The ``deflate_server`` fixture runs ``python -m fastws serve`` (the demo
echo, callback level, or ``coro_echo`` below, coroutine level) once per codec
and level; raw-socket tests speak compressed frames to it directly. Tests of
API details (fragmented sends, broadcast, hooks) use in-process servers.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import zlib
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory, PerMessageDeflate

import fastws
from fastws.codec._frame_py import OP_BINARY, OP_CLOSE, OP_CONT, OP_TEXT, FLAG_RSV1, FrameReader, encode_frame, parse_close
from fastws.demo import EchoHandler

from ..conftest import CODECS, ServerProcess, compiled_available, raw_connect, serving, unit
from .conftest import MASK, FrameStream, http_exchange, port_of, upgrade_request

pytestmark = pytest.mark.timeout(60)

TAIL = b"\x00\x00\xff\xff"
OFFER = "permessage-deflate; client_max_window_bits"


async def coro_echo(ws: Any) -> None:
    """Coroutine-level echo, served by the subprocess as this module's attribute."""
    async for message in ws:
        await ws.send(message)


LEVELS = {"callback": "fastws.demo:EchoHandler", "coroutine": "tests.integration.test_compression:coro_echo"}


@pytest.fixture(scope="module", params=[(c, lvl) for c in CODECS for lvl in LEVELS], ids=lambda p: f"{p[0]}-{p[1]}")
def deflate_server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """``fastws serve`` with default options (compression on, 1 MiB limit)."""
    codec, level = request.param
    if codec == "compiled" and not compiled_available():
        if os.environ.get("FASTWS_NO_EXTENSIONS"):
            pytest.skip("FASTWS_NO_EXTENSIONS=1: compiled codec not built")
        pytest.fail("compiled codec is not built (pip install -e . builds it)")
    with ServerProcess(LEVELS[level], "--no-access-log", codec=codec) as proc:
        yield proc


# -- payloads ----------------------------------------------------------------------

SIZES = [0, 1, 31, 32, 125, 126, 4096, 65535, 65536, 2**20]


def text_of(size: int) -> str:
    """Compressible ASCII text of exactly ``size`` bytes, varied so that a
    corrupted echo shows."""
    rng = random.Random(size)
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(300)
    ]
    out = " ".join(rng.choice(words) for _ in range(size // 3 + 1))
    return out[:size]


def messages() -> list[str | bytes]:
    out: list[str | bytes] = []
    for size in SIZES:
        out.append(text_of(size))
        out.append(os.urandom(size))  # does not compress: deflate expands it a little
    out.append(bytes(2**20))  # compresses a thousandfold
    out.append("\u00e9t\u00e9 \u2603 " * 1000)  # non-ASCII text
    return out


# -- real clients ----------------------------------------------------------------


async def echo_all(ws: Any) -> None:
    for message in messages():
        await ws.send(message)
        echo = await asyncio.wait_for(ws.recv(), unit(20))
        assert type(echo) is type(message) and echo == message, (len(message), type(message))


async def test_websockets_client_round_trips(deflate_server: ServerProcess) -> None:
    async with connect(deflate_server.url, max_size=2**21, open_timeout=unit(5)) as ws:
        # websockets offers permessage-deflate by default.
        [extension] = ws.protocol.extensions
        assert isinstance(extension, PerMessageDeflate)
        assert ws.response.headers["Sec-WebSocket-Extensions"] == (
            "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
        )
        await echo_all(ws)


async def test_websockets_client_no_context_takeover(deflate_server: ServerProcess) -> None:
    factory = ClientPerMessageDeflateFactory(
        server_no_context_takeover=True,
        client_no_context_takeover=True,
        server_max_window_bits=9,
        client_max_window_bits=10,
    )
    async with connect(deflate_server.url, max_size=2**21, extensions=[factory], compression=None) as ws:
        assert ws.response.headers["Sec-WebSocket-Extensions"] == (
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
            "server_max_window_bits=9; client_max_window_bits=10"
        )
        [extension] = ws.protocol.extensions
        assert isinstance(extension, PerMessageDeflate)
        await echo_all(ws)


@pytest.mark.parametrize("compress", [15, 9])
async def test_aiohttp_client_round_trips(deflate_server: ServerProcess, compress: int) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(
            deflate_server.url, compress=compress, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=unit(5))
        ) as ws:
            assert ws.compress  # aiohttp's view: the window it compresses with
            assert ws._response.headers["Sec-WebSocket-Extensions"] == (
                f"permessage-deflate; server_max_window_bits={min(compress, 12)}; client_max_window_bits=12"
            )
            for message in messages():
                if isinstance(message, str):
                    await ws.send_str(message)
                else:
                    await ws.send_bytes(message)
                msg = await ws.receive(timeout=unit(20))
                assert msg.type is (aiohttp.WSMsgType.TEXT if isinstance(message, str) else aiohttp.WSMsgType.BINARY)
                assert msg.data == message


# -- raw sockets ---------------------------------------------------------------------


class DeflateClient(FrameStream):
    """A blocking client that negotiates permessage-deflate and speaks it."""

    def __init__(self, port: int, offer: str | None = OFFER) -> None:
        self.sock = raw_connect(port)
        extra = [("Sec-WebSocket-Extensions", offer)] if offer is not None else []
        self.sock.sendall(upgrade_request(extra=extra))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            assert chunk, head
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        self.extensions = [
            line.split(":", 1)[1].strip()
            for line in head.decode("latin-1").split("\r\n")
            if line.lower().startswith("sec-websocket-extensions:")
        ]
        self.reader = FrameReader(require_mask=False, rsv1_allowed=True, max_message_size=None)
        self.reader.feed_data(rest)
        self.compressor = zlib.compressobj(wbits=-12)
        self.decompressor = zlib.decompressobj(wbits=-12)
        self.eof = False

    def compress(self, data: bytes | str) -> bytes:
        if isinstance(data, str):
            data = data.encode()
        out = self.compressor.compress(data) + self.compressor.flush(zlib.Z_SYNC_FLUSH)
        return out[:-4]

    def frame(self, opcode: int, payload: bytes | str, *, fin: bool = True, rsv1: bool = False) -> bytes:
        return encode_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=MASK)

    def compressed(self, opcode: int, message: bytes | str) -> bytes:
        return self.frame(opcode, self.compress(message), rsv1=True)

    def next(self, timeout: float = 10.0) -> tuple[int, bytes] | None:
        """The next event as ``(opcode | FLAG_RSV1 if compressed, payload)``."""
        return super().next(timeout)

    def message(self) -> tuple[int, bytes, bool]:
        """The next data message: (opcode, inflated payload, was compressed)."""
        event = self.next()
        assert event is not None, "connection closed"
        opcode, payload = event
        assert opcode & 0x0F in (OP_TEXT, OP_BINARY), event[:1]
        if opcode & FLAG_RSV1:
            return opcode & 0x0F, self.decompressor.decompress(payload + TAIL), True
        return opcode, payload, False

    def expect_close(self) -> tuple[int, str]:
        while True:
            event = self.next()
            assert event is not None, "connection closed without a close frame"
            if event[0] == OP_CLOSE:
                return parse_close(event[1])

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def client_of() -> Iterator[Any]:
    clients: list[DeflateClient] = []

    def make(port: int, offer: str | None = OFFER) -> DeflateClient:
        clients.append(DeflateClient(port, offer))
        return clients[-1]

    yield make
    for c in clients:
        c.close()


def test_raw_compressed_messages_both_ways(deflate_server: ServerProcess, client_of: Any) -> None:
    c = client_of(deflate_server.port)
    assert c.extensions == ["permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"]
    long_text = text_of(3000)  # fits the 4 KiB window
    c.sock.sendall(c.compressed(OP_TEXT, long_text))
    assert c.message() == (OP_TEXT, long_text.encode(), True)
    # The same text again costs the client a few bytes (context takeover)...
    again = c.compress(long_text)
    assert len(again) < 200
    c.sock.sendall(c.frame(OP_TEXT, again, rsv1=True))
    assert c.message() == (OP_TEXT, long_text.encode(), True)
    # ...an uncompressed message is fine on a compressed connection...
    c.sock.sendall(c.frame(OP_BINARY, b"\x01" * 100))
    assert c.message() == (OP_BINARY, b"\x01" * 100, True)
    # ...and a short echo goes out uncompressed (under deflate_min_size).
    c.sock.sendall(c.compressed(OP_TEXT, "hi"))
    assert c.message() == (OP_TEXT, b"hi", False)
    c.sock.sendall(c.frame(OP_BINARY, b"x" * 31))
    assert c.message() == (OP_BINARY, b"x" * 31, False)
    # A compressed message in fragments: RSV1 on the first frame only.
    data = c.compress("fragmented " * 100)
    c.sock.sendall(
        c.frame(OP_TEXT, data[:10], fin=False, rsv1=True)
        + c.frame(OP_CONT, data[10:20], fin=False)
        + c.frame(OP_CONT, data[20:], fin=True)
    )
    assert c.message() == (OP_TEXT, ("fragmented " * 100).encode(), True)


def test_raw_deflate_bomb_gets_1009(deflate_server: ServerProcess, client_of: Any) -> None:
    c = client_of(deflate_server.port)
    bomb = c.compressed(OP_BINARY, bytes(10 * 2**20))
    assert len(bomb) < 20000  # 10 MiB of zeros in ~10 KB: way under the 1 MiB wire limit
    c.sock.sendall(bomb)
    code, reason = c.expect_close()
    assert code == 1009, reason
    assert c.next() is None  # the server closed TCP


def test_raw_limits_are_inclusive(deflate_server: ServerProcess, client_of: Any) -> None:
    c = client_of(deflate_server.port)
    # Exactly max_message_size, incompressible: bigger than the limit on
    # the wire, accepted once inflated.
    message = os.urandom(2**20)
    frame = c.compressed(OP_BINARY, message)
    assert len(frame) > 2**20 + 14
    c.sock.sendall(frame)
    assert c.message()[1] == message
    # One byte more, uncompressed on a compressed connection: 1009.
    c.sock.sendall(c.frame(OP_BINARY, bytes(2**20 + 1)))
    assert c.expect_close()[0] == 1009


def test_raw_compressed_one_byte_over_gets_1009(deflate_server: ServerProcess, client_of: Any) -> None:
    c = client_of(deflate_server.port)
    c.sock.sendall(c.compressed(OP_TEXT, "a" * (2**20 + 1)))
    assert c.expect_close()[0] == 1009


def test_raw_invalid_utf8_after_inflating_gets_1007(deflate_server: ServerProcess, client_of: Any) -> None:
    c = client_of(deflate_server.port)
    c.sock.sendall(c.compressed(OP_TEXT, b"valid so far " * 10 + b"\xc3\x28" + b" and more" * 10))
    code, reason = c.expect_close()
    assert code == 1007, reason


def test_raw_corrupt_deflate_data_gets_1002(deflate_server: ServerProcess, client_of: Any) -> None:
    c = client_of(deflate_server.port)
    c.sock.sendall(c.frame(OP_BINARY, b"\xff" * 64, rsv1=True))
    assert c.expect_close()[0] == 1002


def test_raw_rsv1_on_continuation_gets_1002(deflate_server: ServerProcess, client_of: Any) -> None:
    c = client_of(deflate_server.port)
    data = c.compress("x" * 1000)
    # encode_frame refuses RSV1 on a continuation: set the bit by hand.
    cont = bytearray(c.frame(OP_CONT, data[4:]))
    cont[0] |= 0x40
    c.sock.sendall(c.frame(OP_TEXT, data[:4], fin=False, rsv1=True) + bytes(cont))
    code, reason = c.expect_close()
    assert code == 1002 and "continuation" in reason


def test_raw_rsv1_without_negotiation_gets_1002(deflate_server: ServerProcess, client_of: Any) -> None:
    c = client_of(deflate_server.port, offer=None)
    assert c.extensions == []
    c.sock.sendall(c.compressed(OP_TEXT, "hello " * 20))
    assert c.expect_close()[0] == 1002


def test_raw_declined_offer_means_no_compression(deflate_server: ServerProcess, client_of: Any) -> None:
    c = client_of(deflate_server.port, offer="permessage-deflate; server_max_window_bits=7")
    assert c.extensions == []
    c.sock.sendall(c.frame(OP_TEXT, "plain " * 20))
    assert c.message() == (OP_TEXT, ("plain " * 20).encode(), False)
    c.sock.sendall(c.compressed(OP_TEXT, "hello " * 20))
    assert c.expect_close()[0] == 1002


def test_raw_failure_waits_for_the_message_before_it(deflate_server: ServerProcess, client_of: Any) -> None:
    """A bomb right behind a good message, and a message behind the bomb, in
    one write: the good one is echoed (at the coroutine level the close is
    held back until the handler has taken it), the one after is not."""
    c = client_of(deflate_server.port)
    good = text_of(3000)
    first = c.compressed(OP_TEXT, good)
    bomb = c.frame(OP_BINARY, c.compress(bytes(4 * 2**20)), rsv1=True)
    after = c.frame(OP_TEXT, "after the bomb")
    c.sock.sendall(first + bomb + after)
    assert c.message() == (OP_TEXT, good.encode(), True)
    event = c.next()
    assert event is not None and event[0] == OP_CLOSE, event
    assert parse_close(event[1])[0] == 1009
    assert c.next() is None


async def test_held_back_failure_reads_nothing_more() -> None:
    """Coroutine level: a bad compressed message behind a queued one fails
    the connection only once the handler has taken the queued one; frames
    that arrive meanwhile are not read, let alone delivered."""
    gate = asyncio.Event()
    got: list[Any] = []
    closed: list[int | None] = []

    async def handler(ws: Any) -> None:
        await gate.wait()
        try:
            async for message in ws:
                got.append(message)
        finally:
            closed.append(ws.close_code)

    def client(port: int) -> tuple[int, str]:
        c = DeflateClient(port)
        try:
            c.sock.sendall(c.compressed(OP_TEXT, "queued " * 100) + c.compressed(OP_TEXT, b"\xff" * 100))
            time.sleep(unit(0.3))
            c.sock.sendall(c.frame(OP_TEXT, "sent while the failure is held back"))
            time.sleep(unit(0.3))
            loop.call_soon_threadsafe(gate.set)
            return c.expect_close()
        finally:
            c.close()

    loop = asyncio.get_running_loop()
    async with serving(handler) as (_, url):
        code, reason = await asyncio.to_thread(client, port_of(url))
        await asyncio.sleep(unit(0.1))
    assert code == 1007, reason
    assert got == ["queued " * 100]
    # The client dropped TCP without a close frame of its own.
    assert closed == [1006]


@pytest.mark.parametrize(
    "value",
    ["permessage-deflate; a=", "permessage-deflate;", 'permessage-deflate; client_max_window_bits="1 0"', ", ,", "@"],
)
def test_malformed_extensions_header_gets_400(deflate_server: ServerProcess, value: str) -> None:
    reply = http_exchange(deflate_server.port, upgrade_request(extra=[("Sec-WebSocket-Extensions", value)]))
    assert reply.status == 400, reply


def test_window_bits_8_with_a_raw_client(deflate_server: ServerProcess, client_of: Any) -> None:
    c = client_of(deflate_server.port, offer="permessage-deflate; server_max_window_bits=8")
    assert c.extensions == ["permessage-deflate; server_max_window_bits=8"]
    c.compressor = zlib.compressobj(wbits=-15)  # the client did not limit its own window
    c.decompressor = zlib.decompressobj(wbits=-8)  # a strict 256-byte window
    block = os.urandom(300)
    for _ in range(3):
        c.sock.sendall(c.compressed(OP_BINARY, block))
        assert c.message() == (OP_BINARY, block, True)


# -- turning it off ------------------------------------------------------------------


@pytest.mark.parametrize("codec_name", CODECS)
async def test_cli_flag_off_declines(codec_name: str) -> None:
    if codec_name == "compiled" and not compiled_available():
        pytest.skip("compiled codec not built")
    with ServerProcess("--no-access-log", "--ws-per-message-deflate", "false", codec=codec_name) as proc:
        async with connect(proc.url) as ws:
            assert ws.protocol.extensions == []
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            await ws.send("z" * 1000)
            assert await asyncio.wait_for(ws.recv(), unit(5)) == "z" * 1000
        c = DeflateClient(proc.port)
        try:
            assert c.extensions == []
            c.sock.sendall(c.compressed(OP_TEXT, "hello " * 20))
            assert c.expect_close()[0] == 1002
        finally:
            c.close()


@pytest.mark.parametrize("handler", [EchoHandler, coro_echo], ids=["callback", "coroutine"])
async def test_serve_compression_none_declines(handler: Any) -> None:
    async with serving(handler, compression=None) as (_, url):
        async with connect(url) as ws:
            assert ws.protocol.extensions == []
            await ws.send("z" * 1000)
            assert await asyncio.wait_for(ws.recv(), unit(5)) == "z" * 1000


async def test_serve_deflate_options() -> None:
    async with serving(
        EchoHandler,
        deflate_server_no_context_takeover=True,
        deflate_client_no_context_takeover=True,
        deflate_server_max_window_bits=10,
        deflate_client_max_window_bits=None,
    ) as (_, url):
        async with connect(url) as ws:
            assert ws.response.headers["Sec-WebSocket-Extensions"] == (
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10"
            )
            for i in range(5):
                await ws.send(text_of(5000 + i))
                assert await asyncio.wait_for(ws.recv(), unit(5)) == text_of(5000 + i)


# -- API details (in-process) ----------------------------------------------------


def _read_frames(port: int, send: bytes, count: int) -> tuple[list[tuple[int, bool, bool, bytes]], list[str]]:
    """Connect with the default offer, send ``send``, read ``count`` raw
    frames: (opcode, fin, rsv1, payload)."""
    c = DeflateClient(port)
    try:
        c.sock.sendall(send)
        c.sock.settimeout(unit(10))
        data = b""
        frames: list[tuple[int, bool, bool, bytes]] = []
        while len(frames) < count:
            chunk = c.sock.recv(65536)
            assert chunk, frames
            data += chunk
            frames = []
            pos = 0
            while pos + 2 <= len(data):
                b0, n = data[pos], data[pos + 1] & 0x7F
                head = 2
                if n == 126:
                    n, head = int.from_bytes(data[pos + 2 : pos + 4], "big"), 4
                elif n == 127:
                    n, head = int.from_bytes(data[pos + 2 : pos + 10], "big"), 10
                if pos + head + n > len(data):
                    break
                frames.append((b0 & 0x0F, bool(b0 & 0x80), bool(b0 & 0x40), data[pos + head : pos + head + n]))
                pos += head + n
        return frames[:count], c.extensions
    finally:
        c.close()


async def test_coroutine_fragmented_send_is_one_deflate_stream() -> None:
    parts = [text_of(1000), text_of(2000), "", text_of(500)]

    async def handler(ws: Any) -> None:
        await ws.recv()
        await ws.send(iter(parts))
        await ws.send(parts[0])
        await ws.recv()

    async with serving(handler) as (_, url):
        frames, _ = await asyncio.to_thread(_read_frames, port_of(url), encode_frame(OP_TEXT, "go", mask=MASK), 5)
    assert [(f[0], f[1], f[2]) for f in frames] == [
        (OP_TEXT, False, True),
        (OP_CONT, False, False),
        (OP_CONT, False, False),
        (OP_CONT, True, False),
        (OP_TEXT, True, True),
    ]
    d = zlib.decompressobj(wbits=-12)
    message = b"".join(d.decompress(f[3]) for f in frames[:4]) + d.decompress(TAIL)
    assert message.decode() == "".join(parts)
    # The whole message after it shares the window (context takeover).
    assert d.decompress(frames[4][3] + TAIL).decode() == parts[0]
    assert len(frames[4][3]) < 100


async def test_broadcast_sends_uncompressed_frames() -> None:
    text = text_of(5000)
    joined = asyncio.Event()

    async def handler(ws: Any) -> None:
        await ws.recv()
        joined.set()
        await ws.wait_closed()

    async with serving(handler) as (server, url):

        async def trigger() -> None:
            await joined.wait()
            fastws.broadcast(server.connections, text)

        task = asyncio.ensure_future(trigger())
        frames, extensions = await asyncio.to_thread(_read_frames, port_of(url), encode_frame(OP_TEXT, "join", mask=MASK), 1)
        await task
    assert extensions and extensions[0].startswith("permessage-deflate")
    assert frames == [(OP_TEXT, True, False, text.encode())]


async def test_websockets_client_gets_broadcast_and_compressed_sends() -> None:
    async def handler(ws: Any) -> None:
        async for message in ws:
            fastws.broadcast([ws], message)
            await ws.send(message)

    async with serving(handler) as (_, url):
        async with connect(url) as ws:
            assert ws.protocol.extensions
            for message in (text_of(3000), os.urandom(3000), "tiny"):
                await ws.send(message)
                assert await asyncio.wait_for(ws.recv(), unit(5)) == message
                assert await asyncio.wait_for(ws.recv(), unit(5)) == message


async def test_callback_send_frame_fragments_compressed() -> None:
    class Fragmenter(fastws.Handler):
        def on_message(self, ws: Any, data: bytes, is_text: bool) -> None:
            half = len(data) // 2
            ws.send_frame(OP_TEXT if is_text else OP_BINARY, data[:half], fin=False)
            ws.ping(b"between")
            ws.send_frame(OP_CONT, data[half:], fin=True)

    async with serving(Fragmenter) as (_, url):
        async with connect(url) as ws:
            for message in (text_of(4000), os.urandom(100), "ab"):
                await ws.send(message)
                assert await asyncio.wait_for(ws.recv(), unit(5)) == message


async def test_process_response_dropping_the_header_turns_compression_off() -> None:
    def process_response(connection: Any, request: Any, response: Any) -> Any:
        del response.headers["Sec-WebSocket-Extensions"]
        return response

    async with serving(EchoHandler, process_response=process_response) as (_, url):
        frames, extensions = await asyncio.to_thread(
            _read_frames, port_of(url), encode_frame(OP_TEXT, text_of(2000), mask=MASK), 1
        )
        assert extensions == []
        assert frames == [(OP_TEXT, True, False, text_of(2000).encode())]
        async with connect(url) as ws:
            assert ws.protocol.extensions == []
            await ws.send(text_of(2000))
            assert await asyncio.wait_for(ws.recv(), unit(5)) == text_of(2000)


async def test_on_message_gets_inflated_data() -> None:
    seen: list[tuple[bytes, bool]] = []

    class Recorder(fastws.Handler):
        def on_message(self, ws: Any, data: bytes, is_text: bool) -> None:
            seen.append((data, is_text))
            ws.send(b"ok")

    async with serving(Recorder) as (_, url):
        async with connect(url) as ws:
            await ws.send(text_of(3000))
            await ws.send(b"\x00" * 5000)
            for _ in range(2):
                assert await asyncio.wait_for(ws.recv(), unit(5)) == b"ok"
    assert seen == [(text_of(3000).encode(), True), (b"\x00" * 5000, False)]
