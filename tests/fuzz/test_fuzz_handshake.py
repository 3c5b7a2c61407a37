"""Fuzz the opening handshake.

Random bytes, and requests built from mutated parts of a valid upgrade,
go (1) to httptools and ``fastws.protocol.http.check_request`` exactly as the
protocol uses them: nothing may escape but httptools' ``HttpParserError``
and fastws' ``InvalidHandshake``; and (2) to a real ``Connection`` on a fake
transport, split at random points: it answers with a 101 or an HTTP error
status and closes, or waits for more; it never raises, never writes after
closing, never logs an error.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import httptools
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fastws.connection import Connection
from fastws.config import DEFAULTS
from fastws.demo import EchoHandler
from fastws.exceptions import InvalidHandshake
from fastws.protocol.http import Headers, Request, check_request
from fastws.server import ServerState
from tests.conftest import UPGRADE
from tests.fuzz.conftest import FUZZ

KEY = "dGhlIHNhbXBsZSBub25jZQ=="

METHODS = st.one_of(
    st.sampled_from(["GET", "GET", "GET", "POST", "HEAD", "PUT", "OPTIONS", "get", "CONNECT", "PRI"]),
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ-", min_size=1, max_size=8),
)
PATHS = st.one_of(
    st.sampled_from(["/", "/chat", "/index.html", "/healthz", "*", "http://h/x", "/a?b=c#d", "//", "/%00"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30).map(lambda s: "/" + s),
)
VERSIONS = st.sampled_from(["HTTP/1.1"] * 6 + ["HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "HTTP/1.1 ", "http/1.1"])
VALUE_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\r\n"), max_size=40)

HEADER_VALUES: dict[str, Any] = {
    "Host": st.one_of(st.just("127.0.0.1"), VALUE_TEXT),
    "Upgrade": st.one_of(st.sampled_from(["websocket", "WebSocket", "h2c, websocket", "websocket, h2c", "", "web socket"]), VALUE_TEXT),
    "Connection": st.one_of(st.sampled_from(["Upgrade", "keep-alive, Upgrade", "upgrade", "close", "", "Upgrade,,"]), VALUE_TEXT),
    "Sec-WebSocket-Key": st.one_of(
        st.just(KEY),
        st.binary(min_size=0, max_size=20).map(lambda b: base64.b64encode(b).decode()),
        st.sampled_from(["", " " + KEY + " ", KEY[:-2], KEY + "=", "!" * 24]),
        VALUE_TEXT,
    ),
    "Sec-WebSocket-Version": st.one_of(st.sampled_from(["13", " 13 ", "8", "13, 8", "", "0013", "14"]), VALUE_TEXT),
    "Sec-WebSocket-Protocol": st.one_of(st.sampled_from(["chat", "a, b", ""]), VALUE_TEXT),
    "Sec-WebSocket-Extensions": st.one_of(st.sampled_from(["permessage-deflate", "permessage-deflate; client_max_window_bits", "x"]), VALUE_TEXT),
    "Origin": st.one_of(st.just("http://127.0.0.1"), VALUE_TEXT),
    "Content-Length": st.sampled_from(["0", "5", "-1", "x", "99999999999999999999"]),
    "Transfer-Encoding": st.sampled_from(["chunked", "gzip", "chunked, chunked"]),
}
REQUIRED = ["Host", "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version"]
OPTIONAL = [k for k in HEADER_VALUES if k not in REQUIRED]


@st.composite
def requests(draw: Any) -> bytes:
    """An upgrade request with some parts dropped, repeated, or garbled."""
    names = [n for n in REQUIRED if draw(st.integers(0, 7))]  # each dropped 1 in 8
    names += draw(st.lists(st.sampled_from(OPTIONAL), max_size=3))
    names += draw(st.lists(st.sampled_from(REQUIRED), max_size=2))  # repeats
    names = draw(st.permutations(names))
    headers = []
    for name in names:
        shown = draw(st.sampled_from([name, name, name.lower(), name.upper()]))
        headers.append((shown, draw(HEADER_VALUES[name])))
    headers += draw(st.lists(st.tuples(st.text("abcXYZ-", min_size=1, max_size=10), VALUE_TEXT), max_size=3))
    eol = draw(st.sampled_from(["\r\n"] * 8 + ["\n"]))
    head = f"{draw(METHODS)} {draw(PATHS)} {draw(VERSIONS)}{eol}"
    head += "".join(f"{n}: {v}{eol}" for n, v in headers) + eol
    tail = draw(st.sampled_from([b"", b"", b"\x81\x80\0\0\0\0", b"\x88\x80\0\0\0\0", b"hello"]))
    return head.encode("latin-1") + tail


@st.composite
def flipped_upgrade(draw: Any) -> bytes:
    data = bytearray(UPGRADE)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "set", "delete", "insert"]))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[pos] = draw(st.sampled_from(b"\0\r\n :\x7f\xff,"))
        elif op == "delete":
            del data[pos]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=3))
    return bytes(data)


INPUTS = st.one_of(requests(), flipped_upgrade(), st.binary(max_size=300))


class _Collector:
    """httptools callbacks, as ``Connection`` implements them."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.done = True


@FUZZ
@given(data=INPUTS)
@example(data=UPGRADE)
def test_check_request(data: bytes) -> None:
    c = _Collector()
    parser = httptools.HttpRequestParser(c)
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError:
        return  # the protocol answers 400
    if not c.done:
        return  # the protocol waits for more
    request = Request(c.url.decode("latin-1"), Headers(c.headers), parser.get_method().decode("latin-1"), parser.get_http_version())
    try:
        accept, is_upgrade = check_request(request)
    except InvalidHandshake as exc:
        assert 400 <= exc.status < 500, exc.status
        return
    if is_upgrade:
        assert len(base64.b64decode(accept, validate=True)) == 20
    else:
        assert accept == b""
    if data == UPGRADE:
        assert accept == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


class FakeTransport(asyncio.Transport):
    """Records what the protocol writes; fails on a write after close."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False
        self.write_after_close = b""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: Any) -> None:
        if self.closed:
            self.write_after_close += bytes(data)
        self.out += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Records(logging.Handler):
    """Collects records (caplog is per test, not per example)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


STATUSES = {101, 200, 400, 403, 404, 405, 426, 431}


async def _drive(chunks: list[bytes]) -> tuple[Any, FakeTransport]:
    state = ServerState(EchoHandler, DEFAULTS.replace(access_log=False))
    conn = Connection(state)
    transport = FakeTransport()
    conn.connection_made(transport)
    for chunk in chunks:
        if transport.closed:
            break  # a real transport stops reading once closed
        conn.data_received(chunk)
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    conn.connection_lost(None)
    return conn, transport


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@FUZZ
@given(data=INPUTS, cuts=st.lists(st.integers(0, 10_000), max_size=5))
@example(data=UPGRADE, cuts=[])
@example(data=UPGRADE + b"\x81\x85\0\0\0\0hello", cuts=[3, 100])
def test_connection_handshake(loop: asyncio.AbstractEventLoop, data: bytes, cuts: list[int]) -> None:
    cuts = sorted(c % (len(data) + 1) for c in cuts)
    chunks = [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)])]
    records = _Records()
    root = logging.getLogger()
    root.addHandler(records)
    try:
        conn, transport = loop.run_until_complete(_drive(chunks))
    finally:
        root.removeHandler(records)
    errors = [r for r in records.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]
    assert not transport.write_after_close, bytes(transport.write_after_close[:100])
    out = bytes(transport.out)
    if not out:
        # Nothing answered: the request head is not complete yet.
        assert not transport.closed
        return
    assert out.startswith(b"HTTP/1.1 "), out[:100]
    status = int(out[9:12])
    assert status in STATUSES, out[:200]
    if status == 101:
        assert b"\r\nSec-WebSocket-Accept: " in out.split(b"\r\n\r\n")[0]
    else:
        assert transport.closed, out[:200]
        head, _, body = out.partition(b"\r\n\r\n")
        assert b"\r\nConnection: close\r\n" in head + b"\r\n"
        length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
        assert len(length) == 1, head
        if conn.request is not None and conn.request.method == "HEAD":
            assert body == b"", out[:300]  # the length is that of a GET's body
        else:
            assert length == [len(body)], head
