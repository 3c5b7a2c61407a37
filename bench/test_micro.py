"""Micro-benchmarks of the codec against its twin and the peers' own code.

Run by hand, never by the test suite (``testpaths`` is ``tests``, and this
file lives in ``bench/``)::

    python -m pytest bench/test_micro.py --benchmark-only
    python -m pytest bench/test_micro.py --benchmark-only -k parse --benchmark-columns=median,ops

Groups (one table each):

- ``parse N x S masked``: a server parsing what clients send. fastws'
  ``FrameReader`` (compiled and pure-Python twin) against picows' parser
  (its protocol object fed through ``get_buffer``/``buffer_updated``, with a
  no-op ``on_ws_frame``: picows has no stand-alone parser), aiohttp's
  compiled ``WebSocketReader`` and websockets' ``Frame.parse`` (which uses
  its C ``speedups.apply_mask``). Each call parses a batch of N frames of S
  bytes, so the per-call timer overhead does not swamp 64-byte frames.
- ``parse 1 MiB masked in 64 KiB reads``: the same frame cut the way a
  socket delivers it, which is where buffering strategies differ.
- ``unmask S``: the XOR step alone (websockets' C and Python
  ``apply_mask``, aiohttp's in-place mask) beside fastws' masked
  ``encode_frame``, which also builds the header and copies.
- ``encode S``: a server's unmasked frame (fastws vs websockets).
- ``utf8 ...``: ``validate_utf8`` against ``bytes.decode`` (what the peers
  use to validate text).
- ``accept_key``: against ``base64(sha1(key + GUID))`` and websockets'.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pytest_benchmark")

import fastws  # noqa: E402

# The codec modules themselves, compiled and twin, are what is measured here:
# in the codec layer (fastws/codec/) of the layered package, at the top of the
# older flat one. The layout is read from the imported package's directory,
# not tried by name: an editable install's import hook would serve a missing
# name from the installed checkout instead.
_PACKAGE_DIR = Path(str(fastws.__file__)).parent
_CODEC_PACKAGE = "fastws.codec" if (_PACKAGE_DIR / "codec").is_dir() else "fastws"


def _codec_module(name: str) -> Any:
    """The codec module ``name`` of the imported fastws, None if it has none
    (an extension not built)."""
    try:
        module = importlib.import_module(f"{_CODEC_PACKAGE}.{name}")
    except ImportError:  # pragma: no cover - extension not built
        return None
    return module if _PACKAGE_DIR in Path(str(module.__file__)).parents else None


_frame_py = _codec_module("_frame_py")
_handshake_py = _codec_module("_handshake_py")
assert _frame_py is not None and _handshake_py is not None, f"no codec twins in {_PACKAGE_DIR}"
_frame_c = _codec_module("_frame")
_handshake_c = _codec_module("_handshake")
if _frame_c is None or _handshake_c is None:
    _frame_c = _handshake_c = None

KEY = b"\x37\xfa\x21\x3d"
SIZES = {"64 B": (64, 100), "4 KiB": (4096, 10), "1 MiB": (2**20, 1)}
OP_BINARY = 2

CODECS = [
    pytest.param(_frame_c, id="fastws-compiled", marks=pytest.mark.skipif(_frame_c is None, reason="not built")),
    pytest.param(_frame_py, id="fastws-twin"),
]
HANDSHAKES = [
    pytest.param(_handshake_c, id="fastws-compiled", marks=pytest.mark.skipif(_handshake_c is None, reason="not built")),
    pytest.param(_handshake_py, id="fastws-twin"),
]


def _payload(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + bytes(range(size % 256))


def _masked_batch(size: int, count: int) -> bytes:
    frame: bytes = _frame_py.encode_frame(OP_BINARY, _payload(size), mask=KEY)
    return frame * count


# -- parse -----------------------------------------------------------------


def _fastws_parser(codec: Any, count: int) -> Callable[[list[bytes]], Any]:
    reader = codec.FrameReader(max_message_size=None)

    def parse(reads: list[bytes]) -> Any:
        n = 0
        event = None
        for data in reads:
            reader.feed_data(data)
            while (e := reader.next_event()) is not None:
                event = e
                n += 1
        assert n == count
        return event

    return parse


def _websockets_parser(count: int) -> Callable[[list[bytes]], Any]:
    from websockets.frames import Frame
    from websockets.streams import StreamReader

    def parse(reads: list[bytes]) -> Any:
        reader = StreamReader()
        frame = None
        gen = None
        n = 0
        for data in reads:
            reader.feed_data(data)
            while True:
                if gen is None:
                    gen = Frame.parse(reader.read_exact, mask=True, max_size=None)
                try:
                    next(gen)
                except StopIteration as done:
                    frame = done.value
                    n += 1
                    gen = None
                    continue
                break  # the generator waits for more data
        assert n == count
        return frame

    return parse


def _aiohttp_parser(count: int) -> Callable[[list[bytes]], Any]:
    from aiohttp._websocket.reader_c import WebSocketDataQueue, WebSocketReader

    class _Protocol:
        _reading_paused = False

        def pause_reading(self) -> None:  # pragma: no cover - limit is huge
            pass

    loop = asyncio.new_event_loop()
    state: dict[str, Any] = {}

    def fresh() -> None:
        # The queue counts what it was fed and stalls the reader past its
        # limit; we drop messages behind its back, so start over now and then.
        queue = WebSocketDataQueue(_Protocol(), 2**30, loop=loop)
        state["reader"] = WebSocketReader(queue, 2**30, compress=False, decode_text=False)
        state["buffer"] = queue._buffer
        state["fed"] = 0

    fresh()

    def parse(reads: list[bytes]) -> Any:
        if state["fed"] > 2**28:
            fresh()
        reader = state["reader"]
        buffer = state["buffer"]
        for data in reads:
            reader.feed_data(data)
            state["fed"] += len(data)
        assert len(buffer) == count
        msg = buffer.pop()
        buffer.clear()
        return msg

    parse.close = loop.close  # type: ignore[attr-defined]
    return parse


class _NullTransport(asyncio.Transport):
    """Just enough transport for picows' protocol object, off the network."""

    def __init__(self) -> None:
        super().__init__()
        self.sock = socket.socket()
        self.written: list[bytes] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"socket": self.sock, "peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        self.sock.close()

    def abort(self) -> None:
        self.sock.close()

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _picows_parser(count: int) -> Callable[[list[bytes]], Any]:
    picows: Any = pytest.importorskip("picows")
    from picows.picows import WSProtocol  # type: ignore[attr-defined]

    frames = []

    class Listener(picows.WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            frames.append(frame.payload_size)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    # WSProtocol asks for the running loop in __init__: build it inside one.
    async def make() -> Any:
        return WSProtocol(
            None, None, False, lambda request: Listener(), logging.getLogger("bench.picows"), True,
            None, False, 20, 20, picows.WSAutoPingStrategy.PING_WHEN_IDLE, True, 2**30, None, 16 * 1024,
        )  # fmt: skip

    try:
        proto = loop.run_until_complete(make())
    except TypeError as exc:  # another picows version: constructor changed
        loop.close()
        pytest.skip(f"picows' WSProtocol constructor differs: {exc}")
    transport = _NullTransport()
    proto.connection_made(transport)

    def feed(data: bytes) -> None:
        view = memoryview(data)
        while view:
            buf = proto.get_buffer(-1)
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            proto.buffer_updated(n)
            view = view[n:]

    feed(
        b"GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    if not transport.written or not transport.written[0].startswith(b"HTTP/1.1 101"):
        pytest.skip("picows harness: no 101 response")

    def parse(reads: list[bytes]) -> Any:
        frames.clear()
        for data in reads:
            feed(data)
        assert len(frames) == count
        return frames[-1]

    def close() -> None:
        transport.close()
        loop.close()
        asyncio.set_event_loop(None)

    parse.close = close  # type: ignore[attr-defined]
    return parse


PARSERS = [
    *CODECS,
    pytest.param("picows", id="picows"),
    pytest.param("aiohttp", id="aiohttp-c"),
    pytest.param("websockets", id="websockets"),
]


def _make_parser(impl: Any, count: int) -> Callable[[list[bytes]], Any]:
    if impl == "picows":
        return _picows_parser(count)
    if impl == "aiohttp":
        pytest.importorskip("aiohttp")
        return _aiohttp_parser(count)
    if impl == "websockets":
        pytest.importorskip("websockets")
        return _websockets_parser(count)
    return _fastws_parser(impl, count)


def _bench_parse(benchmark: Any, impl: Any, reads: list[bytes], count: int, group: str) -> None:
    parse = _make_parser(impl, count)
    benchmark.group = group
    try:
        result = benchmark(parse, reads)
    finally:
        getattr(parse, "close", lambda: None)()
    assert result is not None


@pytest.mark.parametrize("size_name", list(SIZES))
@pytest.mark.parametrize("impl", PARSERS)
def test_parse_masked(benchmark: Any, impl: Any, size_name: str) -> None:
    size, count = SIZES[size_name]
    data = _masked_batch(size, count)
    _bench_parse(benchmark, impl, [data], count, f"parse {count} x {size_name} masked")


@pytest.mark.parametrize("impl", PARSERS)
def test_parse_masked_in_reads(benchmark: Any, impl: Any) -> None:
    """A 1 MiB frame as the socket delivers it: in 64 KiB reads."""
    data = _masked_batch(2**20, 1)
    reads = [data[i : i + 2**16] for i in range(0, len(data), 2**16)]
    _bench_parse(benchmark, impl, reads, 1, "parse 1 MiB masked in 64 KiB reads")


# -- unmask ----------------------------------------------------------------


MASKERS = [
    pytest.param("fastws-compiled-encode", id="fastws-compiled-encode_frame(mask=)",
                 marks=pytest.mark.skipif(_frame_c is None, reason="not built")),
    pytest.param("websockets-speedups", id="websockets-speedups.apply_mask"),
    pytest.param("websockets-utils", id="websockets-utils.apply_mask(py)"),
    pytest.param("aiohttp", id="aiohttp-mask(in-place)"),
]  # fmt: skip


@pytest.mark.parametrize("size_name", ["4 KiB", "1 MiB"])
@pytest.mark.parametrize("impl", MASKERS)
def test_unmask(benchmark: Any, impl: str, size_name: str) -> None:
    size = SIZES[size_name][0]
    data = _payload(size)
    benchmark.group = f"unmask {size_name}"
    if impl == "fastws-compiled-encode":
        assert _frame_c is not None
        benchmark(_frame_c.encode_frame, OP_BINARY, data, True, False, KEY)
    elif impl == "websockets-speedups":
        speedups = pytest.importorskip("websockets.speedups")
        benchmark(speedups.apply_mask, data, KEY)
    elif impl == "websockets-utils":
        utils = pytest.importorskip("websockets.utils")
        benchmark(utils.apply_mask, data, KEY)
    else:
        mask = pytest.importorskip("aiohttp._websocket.mask")
        buf = bytearray(data)
        # In place: XOR twice gives the data back, so reusing buf is fair.
        benchmark(mask._websocket_mask_cython, KEY, buf)


# -- encode ----------------------------------------------------------------


@pytest.mark.parametrize("size_name", list(SIZES))
@pytest.mark.parametrize("impl", [*CODECS, pytest.param("websockets", id="websockets")])
def test_encode(benchmark: Any, impl: Any, size_name: str) -> None:
    data = _payload(SIZES[size_name][0])
    benchmark.group = f"encode {size_name} (server, unmasked)"
    if impl == "websockets":
        frames: Any = pytest.importorskip("websockets.frames")

        def encode() -> Any:
            return frames.Frame(frames.Opcode.BINARY, data).serialize(mask=False)

        out = benchmark(encode)
    else:
        out = benchmark(impl.encode_frame, OP_BINARY, data)
    assert len(out) > len(data)


# -- UTF-8 -----------------------------------------------------------------

TEXTS = {
    "64 KiB ascii": ("hello, world! " * 5000)[: 2**16].encode(),
    "64 KiB multibyte": ("naïve café — Ωμέγα 日本語テキスト 🎉 " * 3000).encode()[: 2**16 - 3],
}
# Cut on a character boundary so that every validator says True.
TEXTS["64 KiB multibyte"] = TEXTS["64 KiB multibyte"].decode("utf-8", "ignore").encode()


def _decode(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("text_name", list(TEXTS))
@pytest.mark.parametrize("impl", [*CODECS, pytest.param("decode", id="bytes.decode")])
def test_validate_utf8(benchmark: Any, impl: Any, text_name: str) -> None:
    data = TEXTS[text_name]
    benchmark.group = f"utf8 {text_name}"
    func = _decode if impl == "decode" else impl.validate_utf8
    assert benchmark(func, data) is True


# -- accept key ------------------------------------------------------------

WS_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _hashlib_accept(key: bytes) -> Any:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


@pytest.mark.parametrize(
    "impl",
    [*HANDSHAKES, pytest.param("hashlib", id="hashlib+base64"), pytest.param("websockets", id="websockets.utils")],
)
def test_accept_key(benchmark: Any, impl: Any) -> None:
    benchmark.group = "accept_key"
    if impl == "hashlib":
        out = benchmark(_hashlib_accept, WS_KEY)
    elif impl == "websockets":
        utils = pytest.importorskip("websockets.utils")
        out = benchmark(utils.accept_key, WS_KEY.decode()).encode()
    else:
        out = benchmark(impl.accept_key, WS_KEY)
    assert out == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


# -- the per-message cost of metrics (issue 11) ------------------------------------
#
# group "protocol echo 16 x 64 B": the compiled sans-I/O ServerProtocol of an
# open connection parses one read of 16 masked 64-byte frames and frames the
# 16 echoes, with the server's counters off (stats=None, the default) and on
# (a Stats object): what metrics add per message, without sockets, the event
# loop or the load generator in the measurement.

UPGRADE_REQUEST = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _open_protocol(stats: Any) -> Any:
    from fastws.protocol import ServerProtocol

    proto = ServerProtocol(fastws.Config(compression=None), stats=stats)
    request = proto.receive_request(UPGRADE_REQUEST)
    assert proto.accept(request) is None
    proto.send_response(None)
    proto.output_written()
    return proto


@pytest.mark.skipif(not fastws.COMPILED, reason="compiled build not present")
@pytest.mark.parametrize("metrics", ["off", "on"])
def test_protocol_echo(benchmark: Any, metrics: str) -> None:
    from fastws.protocol import Stats

    stats = Stats() if metrics == "on" else None
    proto = _open_protocol(stats)
    chunk = _frame_py.encode_frame(OP_BINARY, b"x" * 64, mask=KEY) * 16

    def echo() -> None:
        proto.receive_data(chunk)
        while True:
            event = proto.next_event()
            if event is None:
                break
            proto.send_message(event[1])
        proto.output_written()

    benchmark.group = "protocol echo 16 x 64 B"
    benchmark(echo)
    if stats is not None:
        assert stats.binary_in == stats.binary_out > 0
