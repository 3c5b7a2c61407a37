"""Sans-I/O server protocol: the compiled build and its pure-Python twin, one suite.

``ServerProtocol`` takes bytes and gives back a handshake decision, events
and bytes to send; no event loop, no socket. Every test here is "feed bytes,
check events and bytes out", and takes the ``Protocol`` fixture, which runs
it once against ``fastws.protocol._server_py.ServerProtocol`` and once
against ``fastws.protocol._server_c.ServerProtocol`` (the same source
compiled). A missing compiled module is a failure, not a skip, unless
``FASTWS_NO_EXTENSIONS`` is set: then the compiled build is skipped, because
it cannot drive the pure codec the environment selected.

Client bytes are built with the pure codec's ``encode_frame`` (masked) or by
:func:`raw` for frames ``encode_frame`` refuses to build; expected server
bytes are written out literally where they are short. Streams are fed whole,
byte by byte and cut at a few points, and must give the same events and the
same bytes out however they are split. The last sections hold the two builds
against each other on table-driven and seeded random streams, and check that
the public classes exist once.
"""

from __future__ import annotations

import importlib
import random
import re
import zlib
from collections.abc import Callable, Iterable
from importlib.machinery import EXTENSION_SUFFIXES
from types import ModuleType
from typing import Any

import pytest

import fastws
import fastws.exceptions
import fastws.types
from fastws.codec._frame_py import FrameReader, encode_frame
from fastws.config import Config
from fastws.types import Close
from tests.conftest import NO_EXTENSIONS, import_module_or_fail

PY, C = "fastws.protocol._server_py", "fastws.protocol._server_c"
FRAME_PY, FRAME_C = "fastws.codec._frame_py", "fastws.codec._frame"

# Opcodes, states and frame bits, written out so the tests do not take them
# from the code under test.
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
FIN, RSV1, RSV2 = 0x80, 0x40, 0x20
CONNECTING, OPEN, CLOSING, CLOSED = 0, 1, 2, 3
CLOSE_EVENT = (CLOSE, b"")

MASK = b"abcd"
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
DEFLATE_OFFER = "Sec-WebSocket-Extensions: permessage-deflate"

OPEN_TIMEOUT = CLOSE_TIMEOUT = 10.0  # the defaults, set explicitly
CONFIG = Config(access_log=False, open_timeout=OPEN_TIMEOUT, close_timeout=CLOSE_TIMEOUT)
#: A small message limit, so that 1009 takes a few bytes to provoke.
SMALL = Config(access_log=False, max_message_size=100)

Events = list[tuple[int, bytes]]


# -- the two builds -----------------------------------------------------------


def load(name: str) -> ModuleType:
    """Import a build; the compiled one is skipped under FASTWS_NO_EXTENSIONS
    (it would be handed the pure codec) and fails the test if missing."""
    if name not in (C, FRAME_C):
        return import_module_or_fail(name)
    if NO_EXTENSIONS:
        pytest.skip(f"FASTWS_NO_EXTENSIONS is set: {name} is not used")
    module = import_module_or_fail(name)
    # _server_c.py is a link to the twin: without the extension it imports
    # fine as pure Python, which must not pass for the compiled build.
    if not str(module.__file__).endswith(tuple(EXTENSION_SUFFIXES)):
        pytest.fail(f"{name} is not compiled ({module.__file__}); build it or set FASTWS_NO_EXTENSIONS=1")
    return module


@pytest.fixture(scope="module", params=[PY, C], ids=["py", "c"])
def Protocol(request: pytest.FixtureRequest) -> type:
    """``ServerProtocol`` of each build."""
    return load(request.param).ServerProtocol  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def both() -> tuple[type, type]:
    """Both builds' ``ServerProtocol``: (pure, compiled)."""
    return load(PY).ServerProtocol, load(C).ServerProtocol


@pytest.fixture(scope="module", params=[FRAME_PY, FRAME_C], ids=["py", "c"])
def codec(request: pytest.FixtureRequest) -> ModuleType:
    """The frame codec of each build."""
    return load(request.param)


# -- building client bytes ----------------------------------------------------


def request(*headers: str, method: str = "GET", version: str = "13", key: str = RFC_KEY,
            http: str = "1.1", upgrade: bool = True) -> bytes:
    """An opening handshake request (RFC 6455 section 4.1) plus ``headers``.

    ``upgrade=False`` leaves out the four WebSocket headers: a plain request.
    """
    lines = [f"{method} /chat?x=1 HTTP/{http}", "Host: example.com"]
    if upgrade:
        lines += [
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            f"Sec-WebSocket-Version: {version}",
        ]
    lines += headers
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


REQUEST = request()


def frame(opcode: int, payload: bytes | str = b"", fin: bool = True, rsv1: bool = False) -> bytes:
    """One masked client frame."""
    return encode_frame(opcode, payload, fin, rsv1, mask=MASK)


def close_frame(code: int, reason: str | bytes = b"") -> bytes:
    """A masked client close frame with ``code`` and ``reason``."""
    data = reason.encode() if isinstance(reason, str) else reason
    return frame(CLOSE, code.to_bytes(2, "big") + data)


def raw(b0: int, payload: bytes = b"", masked: bool = True) -> bytes:
    """A frame from its first byte, for what ``encode_frame`` refuses to build
    (reserved opcodes and bits, fragmented control frames, long pings)."""
    n = len(payload)
    head = bytes((b0, (0x80 if masked else 0) | n)) if n < 126 else bytes(
        (b0, (0x80 if masked else 0) | 126)) + n.to_bytes(2, "big")
    if not masked:
        return head + payload
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def deflate(data: bytes, wbits: int = 15) -> bytes:
    """``data`` compressed as a permessage-deflate message (RFC 7692 section
    7.2.1): raw deflate, sync flush, the 4-byte ``00 00 ff ff`` tail removed."""
    c = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def splits(data: bytes) -> dict[str, list[bytes]]:
    """The ways a stream is fed: whole, byte by byte, and cut at a few points."""
    n = len(data)
    return {
        "whole": [data],
        "bytes": [data[i : i + 1] for i in range(n)],
        "halves": [data[: n // 2], data[n // 2 :]],
        "sevens": [data[i : i + 7] for i in range(0, n, 7)],
        "thirds": [data[: n // 3], data[n // 3 : 2 * n // 3], data[2 * n // 3 :]],
    }


# -- driving a protocol -------------------------------------------------------


def new(Protocol: type, config: Config = CONFIG, **kwargs: Any) -> Any:
    """A fresh protocol at time 0."""
    return Protocol(config, **kwargs)


def opened(Protocol: type, config: Config = CONFIG, req: bytes = REQUEST, **kwargs: Any) -> Any:
    """A protocol past a successful handshake, its ``out`` emptied."""
    p = Protocol(config, **kwargs)
    r = p.receive_request(req)
    assert r is not None
    assert p.accept(r) is None
    p.send_response(None)
    assert p.state == OPEN
    p.output_written()
    return p


def drain(p: Any) -> Events:
    """Every event available now (CLOSE_EVENT included, not acted on)."""
    events = []
    while (event := p.next_event()) is not None:
        assert type(event) is tuple and len(event) == 2
        assert type(event[0]) is int and type(event[1]) is bytes
        events.append(event)
    return events


def receive(p: Any, data: bytes) -> Events:
    """Feed frame bytes; events, completing the close at a CLOSE_EVENT as the
    connection layer does."""
    p.receive_data(data)
    events = []
    while (event := p.next_event()) is not None:
        events.append(event)
        if event == CLOSE_EVENT:
            p.complete_close(0.0)
    return events


def handshake_and_feed(Protocol: type, chunks: Iterable[bytes], config: Config = CONFIG,
                       **kwargs: Any) -> tuple[Any, Events, bytes]:
    """Feed a request and what follows it in ``chunks``, as the connection
    layer does; accept as soon as the request is complete. Returns the
    protocol, every event and every byte sent."""
    p = Protocol(config, **kwargs)
    events: Events = []
    sent = b""
    is_open = False
    for chunk in chunks:
        if p.state == CONNECTING and p.request is None:
            r = p.receive_request(chunk)
            if r is not None:
                p.send_response(p.accept(r))
                is_open = p.state == OPEN
        else:
            p.receive_data(chunk)
        if is_open:
            events += receive(p, b"")
        sent += p.data_to_send()
    return p, events, sent


def http_response(data: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """``(status, headers, body)`` of one HTTP/1.1 response."""
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, data
    lines = head.decode("latin-1").split("\r\n")
    m = re.fullmatch(r"HTTP/1\.1 (\d{3}) .+", lines[0])
    assert m, lines[0]
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(": ")
        assert colon, line
        headers.append((name, value))
    return int(m.group(1)), headers, body


def values(headers: list[tuple[str, str]], name: str) -> list[str]:
    """Every value of header ``name`` (case-insensitive)."""
    return [v for n, v in headers if n.lower() == name.lower()]


def server_frames(data: bytes) -> Events:
    """Parse what the server sent (unmasked, possibly compressed) into events."""
    reader = FrameReader(require_mask=False, rsv1_allowed=True, max_message_size=None)
    reader.feed_data(data)
    events = []
    while (event := reader.next_event()) is not None:
        events.append(event)
    return events


def close_code(data: bytes) -> int:
    """The code of the single close frame in ``data`` (its reason must be UTF-8)."""
    events = server_frames(data)
    assert len(events) == 1 and events[0][0] == CLOSE, data
    payload = events[0][1]
    assert len(payload) >= 2 and len(payload) <= 125
    payload[2:].decode("utf-8")
    return int.from_bytes(payload[:2], "big")


# -- 1. the opening handshake -------------------------------------------------

EXPECTED_101 = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: " + RFC_ACCEPT.encode() + b"\r\n"
    b"Server: fastws\r\n"
    b"\r\n"
)


class TestHandshake:
    @pytest.mark.parametrize("way", ["whole", "bytes", "halves", "sevens"])
    def test_accept(self, Protocol: type, way: str) -> None:
        p = new(Protocol)
        chunks = splits(REQUEST)[way]
        for chunk in chunks[:-1]:
            assert p.receive_request(chunk) is None
            assert p.out == [] and p.state == CONNECTING
        r = p.receive_request(chunks[-1])
        assert isinstance(r, fastws.Request)
        assert p.request is r
        assert (r.method, r.path, r.http_version) == ("GET", "/chat?x=1", "1.1")
        assert r.headers["sec-websocket-key"] == RFC_KEY
        assert r.headers["Host"] == "example.com"
        assert p.accept(r) is None
        # accept() decides; nothing is sent until send_response().
        assert p.out == [] and p.out_size == 0 and p.state == CONNECTING
        assert p.response.status_code == 101
        assert p.response.headers["Sec-WebSocket-Accept"] == RFC_ACCEPT
        p.send_response(None)
        assert p.out == [EXPECTED_101]
        assert p.out_size == len(EXPECTED_101)
        assert p.state == OPEN
        assert p.deadline == 0
        assert not p.should_close and not p.should_abort
        assert p.subprotocol is None and p.deflate is None
        assert p.reject_reason == ""
        assert drain(p) == []

    def test_send_response_twice_sends_once(self, Protocol: type) -> None:
        p = opened(Protocol)
        p.send_response(None)
        assert p.out == [] and p.state == OPEN

    @pytest.mark.parametrize("way", ["whole", "bytes", "halves", "sevens", "thirds"])
    def test_frames_behind_the_request(self, Protocol: type, way: str) -> None:
        # A client may send frames right behind its request: they wait for
        # the 101 and then come out as events, the pong after the 101.
        data = REQUEST + frame(TEXT, "héllo") + frame(PING, b"p1") + frame(BINARY, b"\x00\xff")
        p, events, sent = handshake_and_feed(Protocol, splits(data)[way])
        assert events == [(TEXT, "héllo".encode()), (PING, b"p1"), (BINARY, b"\x00\xff")]
        assert sent == EXPECTED_101 + b"\x8a\x02p1"
        assert p.state == OPEN

    def test_frames_behind_the_request_wait_for_the_decision(self, Protocol: type) -> None:
        p = new(Protocol)
        r = p.receive_request(REQUEST + frame(TEXT, b"early"))
        p.receive_data(frame(TEXT, b"later"))  # while the server decides
        assert p.out == [] and p.state == CONNECTING
        assert p.accept(r) is None
        p.send_response(None)
        assert p.data_to_send() == EXPECTED_101
        assert drain(p) == [(TEXT, b"early"), (TEXT, b"later")]

    def test_open_timeout(self, Protocol: type) -> None:
        p = new(Protocol, now=5.0)
        assert p.deadline == 5.0 + OPEN_TIMEOUT
        p.receive_request(REQUEST[:20])
        p.timeout(p.deadline)
        assert p.should_abort
        assert not p.should_close
        assert p.out == []
        assert p.deadline == 0

    def test_open_timeout_off(self, Protocol: type) -> None:
        p = new(Protocol, Config(access_log=False, open_timeout=None), now=5.0)
        assert p.deadline == 0

    def test_open_clears_the_deadline(self, Protocol: type) -> None:
        p = new(Protocol, now=5.0)
        p.send_response(p.accept(p.receive_request(REQUEST)))
        assert p.state == OPEN and p.deadline == 0

    def test_close_while_connecting(self, Protocol: type) -> None:
        p = new(Protocol)
        p.close(1001, "going")
        assert p.should_close and p.state == CONNECTING and p.out == []

    @pytest.mark.parametrize(("old", "replacement"), [
        (b"Connection: Upgrade", b"Connection: keep-alive, upgrade"),
        (b"Upgrade: websocket", b"Upgrade: WebSocket"),
        (b"Sec-WebSocket-Key: ", b"sec-websocket-key:   "),
    ])
    def test_header_tokens_are_case_insensitive(self, Protocol: type, old: bytes, replacement: bytes) -> None:
        # RFC 6455 section 4.2.1: Upgrade and Connection are token lists,
        # compared case-insensitively; header names are case-insensitive.
        data = REQUEST.replace(old, replacement)
        assert data != REQUEST
        _, _, sent = handshake_and_feed(Protocol, [data])
        assert sent == EXPECTED_101


# -- 2. refusals ----------------------------------------------------------------


def _raise(offered: Any) -> str:
    raise RuntimeError("user code failed")


# name, request bytes, constructor keywords, select_subprotocol,
# status, whether receive_request refuses (else accept does), headers that
# must be in the response.
REFUSALS: list[tuple[str, bytes, dict[str, Any], Any, int, bool, list[tuple[str, str]]]] = [
    ("malformed", b"\x00\x01 nonsense\r\n\r\n", {}, None, 400, True, []),
    ("malformed-header", b"GET / HTTP/1.1\r\nHost example.com\r\n\r\n", {}, None, 400, True, []),
    ("headers-too-large", request("X-Big: " + "a" * 17000), {}, None, 431, True, []),
    ("plain-get", request(upgrade=False), {}, None, 426, False,
     [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")]),
    ("version-8", request(version="8"), {}, None, 426, False, [("Sec-WebSocket-Version", "13")]),
    ("post", request(method="POST"), {}, None, 405, False, []),
    ("http-1.0", request(http="1.0"), {}, None, 400, False, []),
    ("bad-key", request(key="not-a-key"), {}, None, 400, False, []),
    ("no-connection-upgrade", REQUEST.replace(b"Connection: Upgrade", b"Connection: keep-alive"), {}, None,
     400, False, []),
    ("origin-not-allowed", request("Origin: https://evil.example"), {"origins": ["https://good.example"]},
     None, 403, False, []),
    ("origin-missing", REQUEST, {"origins": ["https://good.example"]}, None, 403, False, []),
    ("origin-pattern", request("Origin: https://evil.example"),
     {"origins": [re.compile(r"https://[a-z]+\.good\.example")]}, None, 403, False, []),
    ("subprotocol-missing", REQUEST, {"subprotocols": ["chat"]}, None, 400, False, []),
    ("subprotocol-unknown", request("Sec-WebSocket-Protocol: other"), {"subprotocols": ["chat"]}, None,
     400, False, []),
    ("select-not-offered", request("Sec-WebSocket-Protocol: a"), {}, lambda offered: "b", 400, False, []),
    ("select-raises", request("Sec-WebSocket-Protocol: a"), {}, _raise, 500, False, []),
]


class TestRefusals:
    @pytest.mark.parametrize(("data", "kwargs", "select", "status", "early", "must"),
                             [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
    def test_refusal(self, Protocol: type, data: bytes, kwargs: dict[str, Any], select: Any, status: int,
                     early: bool, must: list[tuple[str, str]]) -> None:
        p = new(Protocol, now=1.0, **kwargs)
        r = p.receive_request(data)
        if early:
            assert r is None
        else:
            assert r is not None
            refusal = p.accept(r, select)
            assert refusal is not None and refusal.status_code == status
            assert p.out == [] and p.state == CONNECTING  # not sent yet
            p.send_response(refusal)
        out = p.data_to_send()
        got, headers, body = http_response(out)
        assert got == status
        assert p.response.status_code == status
        assert values(headers, "Server") == ["fastws"]
        assert values(headers, "Connection") == ["close"]
        assert values(headers, "Content-Length") == [str(len(body))]
        assert body
        for name, value in must:
            assert values(headers, name) == [value]
        assert values(headers, "Sec-WebSocket-Accept") == []
        assert p.state == CLOSED
        assert p.should_close and not p.should_abort
        assert p.deadline == 0
        assert p.reject_reason
        # Nothing more happens: no 101, no events, no bytes.
        p.send_response(None)
        p.receive_data(frame(TEXT, b"hi") + frame(PING))
        assert p.out == [] and p.state == CLOSED

    @pytest.mark.parametrize(("data", "origins"), [
        (request("Origin: https://good.example"), ["https://other.example", "https://good.example"]),
        (request("Origin: https://app.good.example"), [re.compile(r"https://[a-z]+\.good\.example")]),
        (REQUEST, [None]),  # None allows a request without Origin
    ], ids=["listed", "pattern", "none"])
    def test_origin_allowed(self, Protocol: type, data: bytes, origins: list[Any]) -> None:
        p, _, sent = handshake_and_feed(Protocol, [data], origins=origins)
        assert sent == EXPECTED_101
        assert p.state == OPEN

    def test_headers_at_the_limit(self, Protocol: type) -> None:
        limit = len(REQUEST)
        for way, chunks in splits(REQUEST).items():
            _, _, sent = handshake_and_feed(Protocol, chunks, Config(access_log=False, max_header_size=limit))
            assert sent == EXPECTED_101, way
            p, events, sent = handshake_and_feed(
                Protocol, chunks, Config(access_log=False, max_header_size=limit - 1)
            )
            assert http_response(sent)[0] == 431, way
            assert p.state == CLOSED and events == []

    @pytest.mark.parametrize(("data", "status"), [
        (request(method="HEAD"), 405),
        (request(method="HEAD", upgrade=False), 426),
    ], ids=["head-upgrade", "head-plain"])
    def test_head_has_no_body(self, Protocol: type, data: bytes, status: int) -> None:
        # RFC 9110 section 9.3.2: the headers a GET would get, no content.
        p = new(Protocol)
        p.send_response(p.accept(p.receive_request(data)))
        out = p.data_to_send()
        assert out.endswith(b"\r\n\r\n")
        got, headers, body = http_response(out)
        assert (got, body) == (status, b"")
        assert int(values(headers, "Content-Length")[0]) > 0
        assert p.state == CLOSED and p.should_close

    def test_custom_refusal_response(self, Protocol: type) -> None:
        p = new(Protocol)
        p.receive_request(REQUEST)
        p.send_response(fastws.Response(404, headers=fastws.Headers({"Content-Length": "0"})), "no route")
        assert p.data_to_send() == (
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nServer: fastws\r\nConnection: close\r\n\r\n"
        )
        assert p.reject_reason == "no route"
        assert p.state == CLOSED and p.should_close

    @pytest.mark.parametrize(("options", "expected"), [
        ({}, ["fastws"]), ({"server_header": "custom/2.0"}, ["custom/2.0"]), ({"server_header": None}, []),
    ], ids=["default", "custom", "none"])
    @pytest.mark.parametrize("data", [REQUEST, request(version="7"), b"\x00\r\n\r\n"],
                             ids=["101", "426", "400-malformed"])
    def test_server_header(self, Protocol: type, data: bytes, options: dict[str, Any],
                           expected: list[str]) -> None:
        config = Config(access_log=False, **options)
        _, _, sent = handshake_and_feed(Protocol, [data], config)
        _, headers, _ = http_response(sent)
        assert values(headers, "Server") == expected


# -- 3. subprotocols ------------------------------------------------------------

# server preferences, the client's Sec-WebSocket-Protocol headers, the choice
SUBPROTOCOLS: list[tuple[list[str], list[str], str]] = [
    (["chat"], ["chat"], "chat"),
    (["a", "chat"], ["b, chat, a"], "a"),  # the server's preference wins
    (["chat", "superchat"], ["superchat", "chat"], "chat"),  # across two headers
    (["v2.proto", "v1.proto"], ["x,v1.proto"], "v1.proto"),
    (["Chat"], ["chat, Chat"], "Chat"),  # case-sensitive
]


class TestSubprotocols:
    @pytest.mark.parametrize(("server", "offers", "chosen"), SUBPROTOCOLS)
    def test_choice(self, Protocol: type, server: list[str], offers: list[str], chosen: str) -> None:
        data = request(*(f"Sec-WebSocket-Protocol: {o}" for o in offers))
        p, _, sent = handshake_and_feed(Protocol, [data], subprotocols=server)
        status, headers, body = http_response(sent)
        assert (status, body) == (101, b"")
        assert values(headers, "Sec-WebSocket-Protocol") == [chosen]
        assert p.subprotocol == chosen
        assert p.state == OPEN

    def test_none_configured_none_sent(self, Protocol: type) -> None:
        p, _, sent = handshake_and_feed(Protocol, [request("Sec-WebSocket-Protocol: chat")])
        assert sent == EXPECTED_101
        assert p.subprotocol is None

    def test_select_subprotocol(self, Protocol: type) -> None:
        seen = []

        def select(offered: list[str]) -> str:
            seen.append(list(offered))
            return offered[-1]

        p = new(Protocol, subprotocols=["ignored"])
        r = p.receive_request(request("Sec-WebSocket-Protocol: a, b", "Sec-WebSocket-Protocol: c"))
        assert p.accept(r, select) is None
        p.send_response(None)
        assert seen == [["a", "b", "c"]]
        assert values(http_response(p.data_to_send())[1], "Sec-WebSocket-Protocol") == ["c"]
        assert p.subprotocol == "c"

    def test_select_subprotocol_none(self, Protocol: type) -> None:
        p = new(Protocol)
        r = p.receive_request(request("Sec-WebSocket-Protocol: a"))
        assert p.accept(r, lambda offered: None) is None
        p.send_response(None)
        assert p.data_to_send() == EXPECTED_101


# -- 4. permessage-deflate ------------------------------------------------------


class TestDeflate:
    @pytest.mark.parametrize(("offer", "answer"), [
        ("permessage-deflate", "permessage-deflate; server_max_window_bits=12"),
        ("permessage-deflate; client_max_window_bits",
         "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"),
        ("x-unknown, permessage-deflate; server_no_context_takeover",
         "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"),
    ])
    def test_negotiated(self, Protocol: type, offer: str, answer: str) -> None:
        p, _, sent = handshake_and_feed(Protocol, [request(f"Sec-WebSocket-Extensions: {offer}")])
        status, headers, _ = http_response(sent)
        assert status == 101
        assert values(headers, "Sec-WebSocket-Extensions") == [answer]
        assert p.deflate is not None

    @pytest.mark.parametrize("way", ["whole", "bytes", "sevens"])
    def test_compressed_messages_inflated(self, Protocol: type, way: str) -> None:
        text = "héllo wörld, héllo wörld".encode()
        # One deflate stream for every message (context takeover): the last
        # one refers back to the first.
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        first, binary, last = (c.compress(m) + c.flush(zlib.Z_SYNC_FLUSH)
                               for m in (text, b"\x00\x01\x02" * 50, text))
        data = (
            request(DEFLATE_OFFER)
            + frame(TEXT, first[:-4], rsv1=True)
            + frame(BINARY, binary[:5], fin=False, rsv1=True)  # fragmented
            + frame(PING, b"!")
            + frame(CONT, binary[5:-4])
            + frame(TEXT, last[:-4], rsv1=True)
            + frame(TEXT, b"plain")  # uncompressed messages stay allowed
        )
        p, events, sent = handshake_and_feed(Protocol, splits(data)[way])
        assert events == [(TEXT, text), (PING, b"!"), (BINARY, b"\x00\x01\x02" * 50), (TEXT, text),
                          (TEXT, b"plain")]
        assert sent.endswith(b"\r\n\r\n\x8a\x01!")
        assert p.state == OPEN

    def test_declined_when_off(self, Protocol: type) -> None:
        config = Config(access_log=False, compression=None)
        data = request(DEFLATE_OFFER) + frame(TEXT, deflate(b"hello"), rsv1=True)
        p, events, sent = handshake_and_feed(Protocol, [data], config)
        assert sent.startswith(EXPECTED_101)
        assert p.deflate is None
        # Without the extension RSV1 is a protocol error.
        assert events == [CLOSE_EVENT]
        assert close_code(sent[len(EXPECTED_101):]) == 1002

    def test_not_offered_not_sent(self, Protocol: type) -> None:
        p = opened(Protocol)
        assert p.deflate is None
        p.send_message("x" * 100)
        assert p.data_to_send() == b"\x81\x64" + b"x" * 100

    def test_send_compressed(self, Protocol: type) -> None:
        p = opened(Protocol, req=request(DEFLATE_OFFER))
        p.send_message("x" * 100)
        p.send_message(b"short")  # under deflate_min_size: sent as is
        out = p.data_to_send()
        assert out[0] == FIN | RSV1 | TEXT and out[1] & 0x80 == 0
        events = server_frames(out)
        assert events[1] == (BINARY, b"short")
        assert events[0][0] == RSV1 | TEXT
        d = zlib.decompressobj(-15)
        assert d.decompress(events[0][1] + b"\x00\x00\xff\xff") == b"x" * 100

    @pytest.mark.parametrize(("data", "code"), [
        (frame(BINARY, b"\xff\xff\xff\xff", rsv1=True), 1002),  # not deflate
        (frame(TEXT, deflate(b"ok \xff"), rsv1=True), 1007),  # not UTF-8 once inflated
        (frame(BINARY, deflate(b"a" * 101), rsv1=True), 1009),  # inflates over the limit
        (frame(BINARY, b"a" * 101), 1009),  # uncompressed, over the limit
        (frame(BINARY, b"x", fin=False, rsv1=True) + raw(FIN | RSV1 | CONT, b"y"), 1002),
        (raw(FIN | RSV1 | PING), 1002),  # RSV1 on a control frame
    ], ids=["not-deflate", "bad-utf8", "inflates-too-big", "too-big", "rsv1-continuation", "rsv1-ping"])
    def test_errors(self, Protocol: type, data: bytes, code: int) -> None:
        p = opened(Protocol, SMALL, req=request(DEFLATE_OFFER))
        assert p.deflate is not None
        p.receive_data(data + frame(TEXT, b"after"))
        assert drain(p) == [CLOSE_EVENT]
        p.complete_close(1.0)
        assert close_code(p.data_to_send()) == code
        assert p.state == CLOSING and p.should_close
        # Later bytes produce nothing, also after the inflate errors, which
        # the frame reader does not see.
        p.receive_data(frame(TEXT, b"more") + frame(PING, b"p"))
        assert p.next_event() is None
        assert p.out == []

    def test_at_the_limit(self, Protocol: type) -> None:
        p = opened(Protocol, SMALL, req=request(DEFLATE_OFFER))
        events = receive(p, frame(BINARY, deflate(b"a" * 100), rsv1=True) + frame(BINARY, b"b" * 100))
        assert events == [(BINARY, b"a" * 100), (BINARY, b"b" * 100)]


# -- 5. frames --------------------------------------------------------------------

BIG = bytes(range(256)) * 2  # 512 bytes: a 16-bit length

# name, client bytes, events, bytes the server sends in reply
FRAMES: list[tuple[str, bytes, Events, bytes]] = [
    ("text", frame(TEXT, b"hello"), [(TEXT, b"hello")], b""),
    ("text-utf8", frame(TEXT, "κόσμε 𝄞"), [(TEXT, "κόσμε 𝄞".encode())], b""),
    ("text-empty", frame(TEXT), [(TEXT, b"")], b""),
    ("binary", frame(BINARY, b"\x00\x01\xfe\xff"), [(BINARY, b"\x00\x01\xfe\xff")], b""),
    ("binary-16bit-length", frame(BINARY, BIG), [(BINARY, BIG)], b""),
    ("fragmented-text", frame(TEXT, b"Hel", fin=False) + frame(CONT, b"lo ", fin=False)
     + frame(CONT, "wörld".encode()), [(TEXT, "Hello wörld".encode())], b""),
    ("fragmented-utf8-split-in-a-character", frame(TEXT, b"\xe2\x82", fin=False) + frame(CONT, b"\xac"),
     [(TEXT, "€".encode())], b""),
    ("fragmented-binary-with-ping", frame(BINARY, b"ab", fin=False) + frame(PING, b"mid")
     + frame(CONT, b"cd"), [(PING, b"mid"), (BINARY, b"abcd")], b"\x8a\x03mid"),
    ("ping", frame(PING, b"abc"), [(PING, b"abc")], b"\x8a\x03abc"),
    ("ping-empty", frame(PING), [(PING, b"")], b"\x8a\x00"),
    ("ping-125", frame(PING, BIG[:125]), [(PING, BIG[:125])], b"\x8a\x7d" + BIG[:125]),
    ("pong", frame(PONG, b"xy"), [(PONG, b"xy")], b""),
    ("mixed", frame(TEXT, b"a") + frame(PING, b"1") + frame(BINARY, b"b") + frame(PONG, b"2")
     + frame(PING, b"3"), [(TEXT, b"a"), (PING, b"1"), (BINARY, b"b"), (PONG, b"2"), (PING, b"3")],
     b"\x8a\x011\x8a\x013"),
]


class TestFrames:
    @pytest.mark.parametrize(("data", "events", "reply"), [f[1:] for f in FRAMES], ids=[f[0] for f in FRAMES])
    def test_events(self, Protocol: type, data: bytes, events: Events, reply: bytes) -> None:
        for way, chunks in splits(data).items():
            p = opened(Protocol)
            got: Events = []
            for chunk in chunks:
                got += receive(p, chunk)
            assert got == events, way
            assert p.data_to_send() == reply, way
            assert p.state == OPEN and not p.should_close

    def test_events_wait_for_next_event(self, Protocol: type) -> None:
        # Feeding queues nothing: the pong is queued when the ping is taken.
        p = opened(Protocol)
        p.receive_data(frame(PING, b"a") + frame(TEXT, b"t") + frame(PING, b"b"))
        assert p.out == []
        assert p.next_event() == (PING, b"a")
        assert p.out == [b"\x8a\x01a"]
        assert drain(p) == [(TEXT, b"t"), (PING, b"b")]
        assert p.out == [b"\x8a\x01a", b"\x8a\x01b"]

    # a call on the protocol, the frame it queues
    SENDS: list[tuple[str, Callable[[Any], Any], bytes]] = [
        ("message-str", lambda p: p.send_message("héllo"), b"\x81\x06h\xc3\xa9llo"),
        ("message-bytes", lambda p: p.send_message(b"\x00\x01"), b"\x82\x02\x00\x01"),
        ("message-bytearray", lambda p: p.send_message(bytearray(b"ab")), b"\x82\x02ab"),
        ("message-memoryview", lambda p: p.send_message(memoryview(b"abc")[1:]), b"\x82\x02bc"),
        ("message-empty", lambda p: p.send_message(""), b"\x81\x00"),
        ("message-str-as-binary", lambda p: p.send_message("abc", text=False), b"\x82\x03abc"),
        ("message-bytes-as-text", lambda p: p.send_message(b"abc", text=True), b"\x81\x03abc"),
        ("message-16bit", lambda p: p.send_message(BIG), b"\x82\x7e\x02\x00" + BIG),
        ("message-64bit", lambda p: p.send_message(b"z" * 65536),
         b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00" + b"z" * 65536),
        ("frame-first", lambda p: p.send_frame(TEXT, "ab", fin=False), b"\x01\x02ab"),
        ("frame-continuation", lambda p: p.send_frame(CONT, b"cd", fin=False), b"\x00\x02cd"),
        ("frame-last", lambda p: p.send_frame(CONT, b"ef"), b"\x80\x02ef"),
        ("ping", lambda p: p.send_ping(b"p"), b"\x89\x01p"),
        ("ping-empty", lambda p: p.send_ping(), b"\x89\x00"),
        ("ping-str", lambda p: p.send_ping("é"), b"\x89\x02\xc3\xa9"),
        ("pong", lambda p: p.send_pong(b"q"), b"\x8a\x01q"),
        ("pong-empty", lambda p: p.send_pong(), b"\x8a\x00"),
    ]

    @pytest.mark.parametrize(("call", "expected"), [s[1:] for s in SENDS], ids=[s[0] for s in SENDS])
    def test_send(self, Protocol: type, call: Callable[[Any], Any], expected: bytes) -> None:
        p = opened(Protocol)
        call(p)
        assert b"".join(p.out) == expected
        assert p.out_size == len(expected)
        assert p.state == OPEN

    def test_a_large_bytes_message_is_queued_without_a_copy(self, Protocol: type) -> None:
        p = opened(Protocol)
        payload = b"z" * 65536
        p.send_message(payload)
        assert len(p.out) == 2 and p.out[1] is payload  # header, then the object itself
        assert p.out[0] == b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"
        assert p.out_size == 10 + 65536

    @pytest.mark.parametrize("payload", [bytearray(b"z" * 65536), memoryview(b"z" * 70000), b"z" * 65535, "z" * 70000])
    def test_other_messages_are_one_frame(self, Protocol: type, payload: Any) -> None:
        # A bytearray or memoryview may change after send(): it is copied
        # into its frame; so are smaller messages and str.
        p = opened(Protocol)
        p.send_message(payload)
        assert len(p.out) == 1 and p.out_size == len(p.out[0])

    def test_header_is_the_frame_without_its_payload(self, codec: ModuleType) -> None:
        writer = codec.FrameWriter()
        for n in (0, 125, 126, 65535, 65536, 2**20):
            data = b"q" * n
            for op, fin in ((TEXT, True), (BINARY, False), (CONT, True)):
                assert writer.header(op, n, fin) + data == writer.frame(op, data, fin)
        with pytest.raises(ValueError):
            writer.header(PING, 1)
        with pytest.raises(ValueError):
            writer.header(TEXT, -1)

    def test_out_bookkeeping(self, Protocol: type) -> None:
        p = opened(Protocol)
        assert (p.out, p.out_size) == ([], 0)
        p.send_message("a")
        p.send_ping(b"b")
        p.send_frame(BINARY, b"c", fin=False)
        p.send_frame(CONT, b"d")
        assert p.send_encoded(b"\x82\x01e") is True
        expected = [b"\x81\x01a", b"\x89\x01b", b"\x02\x01c", b"\x80\x01d", b"\x82\x01e"]
        assert p.out == expected
        assert p.out_size == sum(map(len, expected)) == 15
        p.output_written()
        assert (p.out, p.out_size) == ([], 0)
        p.send_message(b"x")
        p.send_pong(b"y")
        assert p.data_to_send() == b"\x82\x01x\x8a\x01y"
        assert (p.out, p.out_size) == ([], 0)
        assert p.data_to_send() == b""


# -- 6. the closing handshake -------------------------------------------------


class TestClose:
    @pytest.mark.parametrize("way", ["whole", "bytes", "halves"])
    def test_client_closes(self, Protocol: type, way: str) -> None:
        p = opened(Protocol)
        for chunk in splits(close_frame(1000, "bye"))[way]:
            p.receive_data(chunk)
        assert p.next_event() == CLOSE_EVENT
        # The caller decides when to answer: nothing is queued yet.
        assert p.close_pending
        assert p.out == []
        assert p.state == OPEN and not p.should_close
        assert p.next_event() is None
        p.complete_close(1.0)
        assert not p.close_pending
        assert p.data_to_send() == b"\x88\x02\x03\xe8"  # 1000, no reason
        assert p.state == CLOSING
        assert p.should_close and not p.should_abort
        assert p.deadline == 0
        assert p.close_rcvd == Close(1000, "bye")
        assert p.close_sent == Close(1000, "")
        assert p.close_rcvd_then_sent is True

    @pytest.mark.parametrize(("data", "reply", "rcvd"), [
        (frame(CLOSE), b"\x88\x00", Close(1005, "")),
        (close_frame(1001, "tab closed"), b"\x88\x02\x03\xe9", Close(1001, "tab closed")),
        (close_frame(4000, "app"), b"\x88\x02\x0f\xa0", Close(4000, "app")),
        (close_frame(1000, "ünïcode"), b"\x88\x02\x03\xe8", Close(1000, "ünïcode")),
    ], ids=["empty", "1001", "4000", "utf8-reason"])
    def test_close_echoes_the_code(self, Protocol: type, data: bytes, reply: bytes, rcvd: Close) -> None:
        p = opened(Protocol)
        assert receive(p, data) == [CLOSE_EVENT]
        assert p.data_to_send() == reply
        assert p.close_rcvd == rcvd
        assert p.state == CLOSING and p.should_close

    def test_close_after_messages(self, Protocol: type) -> None:
        # Everything before the close is delivered; everything after it is not.
        p = opened(Protocol)
        events = receive(p, frame(TEXT, b"a") + frame(PING, b"p") + close_frame(1000)
                         + frame(TEXT, b"late") + frame(PING, b"late") + b"\xff\xff garbage")
        assert events == [(TEXT, b"a"), (PING, b"p"), CLOSE_EVENT]
        assert p.data_to_send() == b"\x8a\x01p\x88\x02\x03\xe8"
        assert receive(p, frame(TEXT, b"later")) == []
        assert p.out == []

    def test_server_closes_then_client_answers(self, Protocol: type) -> None:
        p = opened(Protocol)
        p.close(1001, "going", now=100.0)
        assert p.data_to_send() == b"\x88\x07\x03\xe9going"
        assert p.state == CLOSING
        assert p.deadline == 100.0 + CLOSE_TIMEOUT
        assert not p.should_close
        assert p.close_sent == Close(1001, "going")
        assert receive(p, close_frame(1001)) == [CLOSE_EVENT]
        assert p.out == []  # no second close frame
        assert p.should_close and not p.should_abort
        assert p.deadline == 0
        assert p.close_rcvd == Close(1001, "")
        assert p.close_rcvd_then_sent is False

    def test_server_close_times_out(self, Protocol: type) -> None:
        p = opened(Protocol)
        p.close(1000, now=100.0)
        assert p.data_to_send() == b"\x88\x02\x03\xe8"
        assert p.deadline == 110.0
        p.timeout(110.0)
        assert p.should_abort
        assert p.out == []
        assert p.deadline == 0
        assert p.close_rcvd is None

    def test_close_twice_sends_once(self, Protocol: type) -> None:
        p = opened(Protocol)
        p.close(1000, now=1.0)
        p.close(1001, "again", now=2.0)
        assert p.data_to_send() == b"\x88\x02\x03\xe8"
        assert p.deadline == 1.0 + CLOSE_TIMEOUT

    def test_close_timeout_off(self, Protocol: type) -> None:
        p = opened(Protocol, Config(access_log=False, close_timeout=None))
        p.close(1000, now=100.0)
        assert p.state == CLOSING and p.deadline == 0

    def test_close_1005_sends_an_empty_close(self, Protocol: type) -> None:
        p = opened(Protocol)
        p.close(1005, "dropped")
        assert p.data_to_send() == b"\x88\x00"

    def test_long_reason_is_cut_at_a_character(self, Protocol: type) -> None:
        p = opened(Protocol)
        p.close(1000, "é" * 100)  # 200 bytes of UTF-8
        out = p.data_to_send()
        assert out == b"\x88\x7c\x03\xe8" + "é".encode() * 61  # 2 + 122 bytes
        assert close_code(out) == 1000

    def test_close_with_a_code_that_may_not_be_sent(self, Protocol: type) -> None:
        p = opened(Protocol)
        with pytest.raises(ValueError):
            p.close(1006)
        assert p.out == [] and p.state == OPEN

    def test_data_after_our_close_is_delivered(self, Protocol: type) -> None:
        # RFC 6455 forbids sending data after a close frame, not receiving
        # it: messages the peer sent before it saw our close still arrive
        # (as in websockets), and the peer's close completes the handshake.
        for way, chunks in splits(frame(TEXT, b"late") + frame(BINARY, b"x", fin=False) + frame(CONT, b"y")
                                  + frame(PONG, b"po") + close_frame(1000, "ok")).items():
            p = opened(Protocol)
            p.close(1001, "going", now=50.0)
            p.output_written()
            events: Events = []
            for chunk in chunks:
                events += receive(p, chunk)
            assert events == [(TEXT, b"late"), (BINARY, b"xy"), (PONG, b"po"), CLOSE_EVENT], way
            assert p.out == [], way
            assert p.should_close and p.state == CLOSING
            assert p.close_rcvd == Close(1000, "ok")

    def test_hold_close(self, Protocol: type) -> None:
        p = opened(Protocol)
        p.receive_data(close_frame(1000, "bye"))
        assert drain(p) == [CLOSE_EVENT]
        p.hold_close(50.0)
        assert p.deadline == 50.0 + CLOSE_TIMEOUT
        assert p.close_pending and p.out == [] and not p.should_close
        p.timeout(60.0)
        assert not p.close_pending
        assert p.data_to_send() == b"\x88\x02\x03\xe8"
        assert p.should_close and not p.should_abort
        assert p.state == CLOSING and p.deadline == 0

    def test_hold_then_complete(self, Protocol: type) -> None:
        p = opened(Protocol)
        p.receive_data(frame(CLOSE))
        drain(p)
        p.hold_close(1.0)
        p.complete_close(2.0)
        assert p.data_to_send() == b"\x88\x00"
        assert p.deadline == 0 and p.should_close and not p.should_abort

    def test_hold_without_pending_close(self, Protocol: type) -> None:
        p = opened(Protocol)
        p.hold_close(1.0)
        assert p.deadline == 0 and not p.close_pending

    def test_close_while_the_peers_close_is_held(self, Protocol: type) -> None:
        p = opened(Protocol)
        p.receive_data(close_frame(1000))
        drain(p)
        p.hold_close(1.0)
        p.close(1001, "x", now=2.0)
        assert p.data_to_send() == b"\x88\x03\x03\xe9x"  # one close frame
        assert p.should_close and p.state == CLOSING and p.deadline == 0
        assert p.close_rcvd == Close(1000, "")

    def test_close_while_the_peers_close_is_held_records_who_was_first(self, Protocol: type) -> None:
        p = opened(Protocol)
        p.receive_data(close_frame(1000, "bye"))
        drain(p)
        p.hold_close(1.0)
        p.close(1001, "x", now=2.0)
        assert p.close_rcvd_then_sent is True
        assert p.close_sent == Close(1001, "x")
        assert isinstance(p.close_exc, fastws.ConnectionClosedOK)

    def test_close_while_an_error_is_held_sends_the_errors_code(self, Protocol: type) -> None:
        # RFC 6455 section 7.1.7: the connection is failed with the error's
        # code; an application close() that comes later does not mask it.
        p = opened(Protocol)
        p.receive_data(frame(TEXT, b"\xff"))
        assert drain(p) == [CLOSE_EVENT]
        p.hold_close(1.0)
        p.close(1000, "", now=2.0)
        assert close_code(p.data_to_send()) == 1007
        assert p.should_close and p.close_sent is not None and p.close_sent.code == 1007

    def test_ping_after_our_close_is_answered(self, Protocol: type) -> None:
        # RFC 6455 section 5.5.2: a pong is due unless a close was received.
        p = opened(Protocol)
        p.close(1001, "going", now=100.0)
        p.output_written()
        p.receive_data(frame(PING, b"pp"))
        assert drain(p) == [(PING, b"pp")]
        assert p.data_to_send() == b"\x8a\x02pp"

    def test_close_with_a_bad_code_records_nothing(self, Protocol: type) -> None:
        p = opened(Protocol)
        with pytest.raises(ValueError):
            p.close(1006)
        assert p.close_sent is None and p.close_rcvd_then_sent is None
        p.close(1000)
        assert p.close_sent == Close(1000, "")

    def test_abort_and_connection_lost(self, Protocol: type) -> None:
        p = opened(Protocol)
        p.abort()
        assert p.should_abort and p.state == CLOSING and p.out == []
        p.receive_data(frame(TEXT, b"x"))
        assert p.next_event() is None
        p.connection_lost()
        assert p.state == CLOSED and p.deadline == 0

    # how the connection ended, the exception sending raises, its rcvd and
    # the code it sent
    OK, ERROR = fastws.ConnectionClosedOK, fastws.ConnectionClosedError
    ENDINGS: list[tuple[str, Callable[[Any], Any], type, Close | None, int | None]] = [
        ("client-1000", lambda p: receive(p, close_frame(1000, "bye")), OK, Close(1000, "bye"), 1000),
        ("client-1001", lambda p: receive(p, close_frame(1001)), OK, Close(1001, ""), 1001),
        ("client-empty", lambda p: receive(p, frame(CLOSE)), OK, Close(1005, ""), 1005),
        ("client-4000", lambda p: receive(p, close_frame(4000)), ERROR, Close(4000, ""), 4000),
        ("client-1011", lambda p: receive(p, close_frame(1011)), ERROR, Close(1011, ""), 1011),
        ("server-then-client", lambda p: (p.close(1000), receive(p, close_frame(1000))), OK,
         Close(1000, ""), 1000),
        ("server-no-answer", lambda p: p.close(1000), ERROR, None, 1000),
        ("server-timed-out", lambda p: (p.close(1001), p.timeout(99.0)), ERROR, None, 1001),
        ("protocol-error", lambda p: receive(p, frame(TEXT, b"\xff")), ERROR, None, 1007),
        ("aborted", lambda p: p.abort(), ERROR, None, None),
    ]

    @pytest.mark.parametrize(("end", "exc", "rcvd", "sent"), [e[1:] for e in ENDINGS],
                             ids=[e[0] for e in ENDINGS])
    def test_send_after_close_raises(self, Protocol: type, end: Callable[[Any], Any], exc: type,
                                     rcvd: Close | None, sent: int | None) -> None:
        p = opened(Protocol)
        end(p)
        p.output_written()
        calls: list[Callable[[], Any]] = [
            lambda: p.send_message("x"),
            lambda: p.send_message(b"x"),
            lambda: p.send_frame(TEXT, b"x"),
            lambda: p.send_ping(),
            lambda: p.send_pong(),
        ]
        for call in calls:
            with pytest.raises(fastws.ConnectionClosed) as info:
                call()
            assert type(info.value) is exc
            assert info.value.rcvd == rcvd
            assert (None if info.value.sent is None else info.value.sent.code) == sent
        assert type(p.close_exc) is exc
        assert p.send_encoded(b"\x81\x01x") is False
        assert p.out == [] and p.out_size == 0

    def test_send_before_open_raises(self, Protocol: type) -> None:
        p = new(Protocol)
        with pytest.raises(fastws.ConnectionClosedError):
            p.send_message("x")
        assert p.send_encoded(b"\x81\x01x") is False
        assert p.out == []


# -- 7. protocol errors -------------------------------------------------------

# name, client bytes, events before the error, close code the server sends
ERRORS: list[tuple[str, bytes, Events, int]] = [
    ("unmasked", frame(PING, b"p") + encode_frame(TEXT, b"hi"), [(PING, b"p")], 1002),
    ("unmasked-close", encode_frame(CLOSE, b"\x03\xe8"), [], 1002),
    ("reserved-opcode-3", raw(FIN | 0x3, b"x"), [], 1002),
    ("reserved-opcode-0xb", frame(TEXT, b"ok") + raw(FIN | 0xB), [(TEXT, b"ok")], 1002),
    ("rsv1-without-deflate", frame(TEXT, b"x", rsv1=True), [], 1002),
    ("rsv2", raw(FIN | RSV2 | BINARY, b"x"), [], 1002),
    ("fragmented-ping", raw(PING, b"x"), [], 1002),
    ("ping-126", raw(FIN | PING, b"x" * 126), [], 1002),
    ("continuation-first", frame(CONT, b"x"), [], 1002),
    ("text-inside-fragments", frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"), [], 1002),
    ("invalid-utf8", frame(TEXT, b"ok \xff"), [], 1007),
    ("invalid-utf8-surrogate", frame(TEXT, b"\xed\xa0\x80"), [], 1007),
    ("invalid-utf8-across-fragments", frame(TEXT, b"\xce", fin=False) + frame(CONT, b"A"), [], 1007),
    ("truncated-utf8", frame(TEXT, b"\xe2\x82"), [], 1007),
    ("too-big", frame(BINARY, b"x" * 101), [], 1009),
    ("too-big-fragments", frame(TEXT, b"x" * 60, fin=False) + frame(CONT, b"x" * 41), [], 1009),
    ("close-code-999", close_frame(999), [], 1002),
    ("close-code-1005", close_frame(1005), [], 1002),
    ("close-code-1006", close_frame(1006), [], 1002),
    ("close-code-5000", close_frame(5000), [], 1002),
    ("close-1-byte", frame(CLOSE, b"\x03"), [], 1002),
    ("close-reason-not-utf8", close_frame(1000, b"\xff"), [], 1007),
]


class TestProtocolErrors:
    @pytest.mark.parametrize(("data", "before", "code"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
    def test_error(self, Protocol: type, data: bytes, before: Events, code: int) -> None:
        for way, chunks in splits(data + frame(TEXT, b"after") + frame(PING, b"after")).items():
            p = opened(Protocol, SMALL)
            events: Events = []
            for chunk in chunks:
                p.receive_data(chunk)
                events += drain(p)
            assert events == before + [CLOSE_EVENT], way
            # Nothing is sent until the caller acts on the close event ...
            pongs = b"".join(b"\x8a" + bytes((len(e[1]),)) + e[1] for e in before if e[0] == PING)
            assert p.data_to_send() == pongs, way
            assert p.close_pending and not p.should_close
            p.complete_close(1.0)
            # ... then exactly one close frame with the code, and TCP closes.
            assert close_code(p.data_to_send()) == code, way
            assert p.close_sent.code == code
            assert p.close_rcvd is None
            assert p.state == CLOSING
            assert p.should_close and not p.should_abort and p.deadline == 0
            # After the error: no event and no byte, whatever comes.
            assert p.next_event() is None
            p.receive_data(frame(TEXT, b"more") + frame(PING, b"more") + close_frame(1000))
            assert p.next_event() is None
            assert p.out == [] and p.out_size == 0
            assert type(p.close_exc) is fastws.ConnectionClosedError


# -- 8. the two builds agree --------------------------------------------------


def transcript(Protocol: type, chunks: Iterable[bytes], config: Config = SMALL,
               **kwargs: Any) -> list[tuple[Any, ...]]:
    """Everything observable after each chunk: events, bytes out, state,
    flags, deadline, close frames. Closes are completed as they come."""
    p = Protocol(config, now=1.0, **kwargs)
    records: list[tuple[Any, ...]] = []
    is_open = False
    for chunk in chunks:
        if p.state == CONNECTING and p.request is None:
            r = p.receive_request(chunk)
            if r is not None:
                p.send_response(p.accept(r))
                is_open = p.state == OPEN
        else:
            p.receive_data(chunk)
        events = receive(p, b"") if is_open else []
        records.append((events, p.data_to_send(), int(p.state), bool(p.should_close), bool(p.should_abort),
                        p.deadline, p.close_sent, p.close_rcvd, p.subprotocol, p.deflate is not None))
    return records


def flatten(records: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    """What a whole stream produced, whatever its split: events, bytes, end state."""
    events = [e for r in records for e in r[0]]
    sent = b"".join(r[1] for r in records)
    return (events, sent, *records[-1][2:])


# Streams the builds must agree on (request included).
STREAMS: list[tuple[str, bytes]] = [
    ("messages-and-close", REQUEST + frame(TEXT, "héllo") + frame(PING, b"1") + frame(BINARY, BIG)
     + frame(TEXT, b"a", fin=False) + frame(PONG) + frame(CONT, b"b") + close_frame(1000, "bye")),
    ("error-mid-stream", REQUEST + frame(TEXT, b"ok") + frame(PING, b"2") + frame(TEXT, b"\xc0\xaf")
     + frame(TEXT, b"never")),
    ("too-big", REQUEST + frame(BINARY, b"x" * 101)),
    ("bad-close", REQUEST + close_frame(1000, b"\xff")),
    ("deflate", request(DEFLATE_OFFER) + frame(TEXT, deflate("é".encode() * 40), rsv1=True)
     + frame(BINARY, deflate(b"\x00" * 300), rsv1=True) + frame(CLOSE)),
    ("deflate-bomb", request(DEFLATE_OFFER) + frame(BINARY, deflate(b"\x00" * 5000), rsv1=True)),
    ("refused", request(version="12") + frame(TEXT, b"x")),
    ("malformed", b"GET / HTTP/1.1\r\n\x01\r\n\r\n"),
    ("subprotocol", request("Sec-WebSocket-Protocol: b, a") + frame(TEXT, b"x")),
]


def random_stream(seed: int) -> tuple[bytes, list[bytes]]:
    """A request and a random run of frames (mostly valid, some not), and a
    random split of it."""
    rng = random.Random(seed)
    with_deflate = rng.random() < 0.4
    pool = [
        lambda: frame(TEXT, rng.choice(["", "a", "héllo", "κόσμε" * 5])),
        lambda: frame(BINARY, rng.randbytes(rng.choice([0, 1, 50, 100]))),
        lambda: frame(TEXT, b"ab", fin=False) + frame(PING, rng.randbytes(3)) + frame(CONT, "ü".encode()),
        lambda: frame(BINARY, b"x", fin=False) + frame(CONT, b"y", fin=False) + frame(CONT, b"z"),
        lambda: frame(PING, rng.randbytes(rng.randrange(126))),
        lambda: frame(PONG, rng.randbytes(4)),
        lambda: frame(TEXT, deflate("compressed é".encode() * rng.randrange(1, 8)), rsv1=True),
        lambda: frame(BINARY, deflate(b"\x00" * rng.choice([10, 100, 101, 3000])), rsv1=True),
        lambda: close_frame(rng.choice([1000, 1001, 1011, 3000, 4999])),
        lambda: frame(CLOSE),
        # errors, rarer
        lambda: rng.choice([
            encode_frame(TEXT, b"unmasked"), raw(FIN | 0x5), frame(TEXT, b"\xf5"), frame(BINARY, b"b" * 101),
            close_frame(1004), frame(CONT, b"c"), raw(FIN | RSV2 | TEXT, b"r"),
            frame(TEXT, b"\xff", rsv1=True),
        ]),
    ]
    weights = [6, 6, 3, 3, 4, 2, 3, 2, 1, 1, 1]
    head = request(DEFLATE_OFFER) if with_deflate else REQUEST
    body = b"".join(rng.choices(pool, weights)[0]() for _ in range(rng.randrange(1, 12)))
    data = head + body
    cuts = sorted(rng.sample(range(1, len(data)), min(rng.randrange(1, 6), len(data) - 1)))
    chunks = [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)])]
    return data, chunks


class TestBuildsAgree:
    @pytest.mark.parametrize("data", [s[1] for s in STREAMS], ids=[s[0] for s in STREAMS])
    def test_streams(self, both: tuple[type, type], data: bytes) -> None:
        py, c = both
        for way, chunks in splits(data).items():
            expected = transcript(py, chunks, subprotocols=["a"])
            assert transcript(c, chunks, subprotocols=["a"]) == expected, way

    @pytest.mark.parametrize("seed", range(60))
    def test_random_streams(self, both: tuple[type, type], seed: int) -> None:
        py, c = both
        data, chunks = random_stream(seed)
        for feed in (chunks, [data], splits(data)["sevens"]):
            assert transcript(py, feed) == transcript(c, feed)

    @pytest.mark.parametrize("seed", range(0, 60, 3))
    def test_random_streams_bytewise(self, both: tuple[type, type], seed: int) -> None:
        py, c = both
        data, _ = random_stream(seed)
        chunks = splits(data)["bytes"]
        assert transcript(py, chunks) == transcript(c, chunks)

    def test_server_side_calls(self, both: tuple[type, type]) -> None:
        # The same calls, in the same order, queue the same bytes.
        outs = []
        for Protocol in both:
            p = opened(Protocol, req=request(DEFLATE_OFFER))
            p.send_message("x" * 200)
            p.send_message(b"\x00" * 64, text=False)
            p.send_frame(TEXT, "a" * 40, fin=False)
            p.send_frame(CONT, "b" * 40)
            p.send_ping(b"p")
            p.close(1001, "bye" * 50, now=3.0)
            outs.append((p.data_to_send(), p.deadline, int(p.state)))
        assert outs[0] == outs[1]


class TestSplitInvariance:
    """However a stream is split, one build gives the same events and bytes."""

    @pytest.mark.parametrize("data", [s[1] for s in STREAMS], ids=[s[0] for s in STREAMS])
    def test_streams(self, Protocol: type, data: bytes) -> None:
        results = {way: flatten(transcript(Protocol, chunks, subprotocols=["a"]))
                   for way, chunks in splits(data).items()}
        assert len({repr(r) for r in results.values()}) == 1, results

    @pytest.mark.parametrize("seed", range(0, 60, 2))
    def test_random_streams(self, Protocol: type, seed: int) -> None:
        data, chunks = random_stream(seed)
        assert flatten(transcript(Protocol, chunks)) == flatten(transcript(Protocol, [data]))


# -- 9. the public classes are one ----------------------------------------------


class TestPublicClasses:
    def test_one_of_each(self) -> None:
        assert fastws.State is fastws.types.State
        assert fastws.CloseCode is fastws.types.CloseCode
        assert fastws.Close is fastws.types.Close
        assert fastws.ProtocolError is fastws.exceptions.ProtocolError
        assert fastws.ConnectionClosedOK is fastws.exceptions.ConnectionClosedOK

    def test_picked_build(self) -> None:
        import fastws.protocol

        expected = importlib.import_module(C if fastws.COMPILED else PY)
        assert fastws.protocol.ServerProtocol is expected.ServerProtocol
        if NO_EXTENSIONS:
            assert fastws.protocol.ServerProtocol is importlib.import_module(PY).ServerProtocol

    def test_state_values(self, Protocol: type) -> None:
        p = new(Protocol)
        assert p.state == fastws.State.CONNECTING
        assert fastws.State(p.state) is fastws.State.CONNECTING
        p.send_response(p.accept(p.receive_request(REQUEST)))
        assert p.state == fastws.State.OPEN and fastws.State(p.state) is fastws.State.OPEN
        receive(p, close_frame(1000))
        assert p.state == fastws.State.CLOSING
        p.connection_lost()
        assert p.state == fastws.State.CLOSED
        assert [int(s) for s in fastws.State] == [CONNECTING, OPEN, CLOSING, CLOSED]

    def test_refused_state_is_closed(self, Protocol: type) -> None:
        p = new(Protocol)
        p.receive_request(b"\x00\r\n\r\n")
        assert fastws.State(p.state) is fastws.State.CLOSED

    def test_modules_share_the_classes(self, Protocol: type) -> None:
        mod = importlib.import_module(Protocol.__module__)
        assert mod.ProtocolError is fastws.ProtocolError
        assert mod.ConnectionClosedOK is fastws.ConnectionClosedOK
        assert mod.ConnectionClosedError is fastws.ConnectionClosedError
        assert mod.CloseCode is fastws.CloseCode
        assert mod.Close is fastws.Close

    def test_codec_raises_the_public_protocol_error(self, codec: ModuleType) -> None:
        assert codec.ProtocolError is fastws.ProtocolError
        reader = codec.FrameReader()
        reader.feed_data(encode_frame(TEXT, b"unmasked"))
        with pytest.raises(fastws.ProtocolError) as info:
            reader.next_event()
        assert type(info.value) is fastws.ProtocolError
        assert info.value.code == 1002
        with pytest.raises(fastws.ProtocolError) as info:
            codec.parse_close(b"\x03\xe8\xff")
        assert type(info.value) is fastws.ProtocolError
        assert info.value.code == 1007
