"""The opening handshake and plain HTTP, byte by byte over raw sockets.

The server runs in-process; the blocking socket code runs in a thread
(``asyncio.to_thread``) so the server's loop keeps serving.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from fastws import Handler
from fastws.codec._frame_py import OP_CLOSE, OP_TEXT
from fastws.demo import EchoHandler

from ..conftest import UPGRADE, raw_connect, serving, unit
from .conftest import FrameStream, HttpReply, client_frame, eventually, http_exchange, port_of, upgrade_request

pytestmark = pytest.mark.timeout(30)

RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


async def exchange(url: str, request: bytes) -> HttpReply:
    return await asyncio.to_thread(http_exchange, port_of(url), request)


def assert_rejected(reply: HttpReply, status: int, *words: str) -> None:
    """An HTTP error answer: status, plain-text reason naming ``words``."""
    assert reply.version == "HTTP/1.1", reply
    assert reply.status == status, reply
    assert reply.header("Content-Type", ) is not None and reply.header("Content-Type").startswith("text/plain"), reply
    assert reply.header("Content-Length") == str(len(reply.body)), reply
    assert reply.header("Connection") == "close", reply
    assert "sec-websocket-accept" not in reply.headers, reply
    text = reply.body.decode()
    assert text.strip(), reply
    for word in words:
        assert word.lower() in text.lower(), (word, text)


# -- success ---------------------------------------------------------------


async def test_101_and_accept_key_for_rfc_sample() -> None:
    async with serving(EchoHandler) as (_, url):
        reply = await exchange(url, UPGRADE)
    assert reply.status_line.startswith("HTTP/1.1 101 "), reply
    assert reply.header("Sec-WebSocket-Accept") == RFC_ACCEPT
    assert reply.header("Upgrade").lower() == "websocket"
    assert "upgrade" in reply.header("Connection").lower()
    assert reply.body == b""
    # No subprotocol or extension was asked for, so none is answered.
    assert "sec-websocket-protocol" not in reply.headers
    assert "sec-websocket-extensions" not in reply.headers


@pytest.mark.parametrize(
    "request_bytes",
    [
        upgrade_request(replace={"Connection": "keep-alive, Upgrade"}),
        upgrade_request(replace={"Connection": "UPGRADE"}),
        upgrade_request(replace={"Upgrade": "WebSocket"}),
        upgrade_request(replace={"Upgrade": "WEBSOCKET"}),
        upgrade_request(drop=("Connection",), extra=[("Connection", "keep-alive"), ("Connection", "Upgrade")]),
        upgrade_request(replace={"Sec-WebSocket-Key": " dGhlIHNhbXBsZSBub25jZQ== "}),
        b"GET /chat HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
        b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    ],
    ids=["keep-alive-upgrade", "CONNECTION-UPPER", "WebSocket", "WEBSOCKET", "connection-two-lines", "key-spaces", "lowercase-names"],
)
async def test_accepted_variants(request_bytes: bytes) -> None:
    async with serving(EchoHandler) as (_, url):
        reply = await exchange(url, request_bytes)
    assert reply.status == 101, reply
    assert reply.header("Sec-WebSocket-Accept") == RFC_ACCEPT


# -- rejections --------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes,words",
    [
        (upgrade_request(drop=("Host",)), ["Host"]),
        (upgrade_request(extra=[("Host", "other")]), ["Host"]),
        (upgrade_request(drop=("Sec-WebSocket-Key",)), ["Sec-WebSocket-Key"]),
        (upgrade_request(replace={"Sec-WebSocket-Key": "not base64 at all!!"}), ["Sec-WebSocket-Key"]),
        (upgrade_request(replace={"Sec-WebSocket-Key": "c2hvcnQ="}), ["Sec-WebSocket-Key"]),
        (upgrade_request(replace={"Sec-WebSocket-Key": ""}), ["Sec-WebSocket-Key"]),
        (upgrade_request(extra=[("Sec-WebSocket-Key", "AQIDBAUGBwgJCgsMDQ4PEA==")]), ["Sec-WebSocket-Key"]),
        (upgrade_request(replace={"Connection": "keep-alive"}), ["Connection", "upgrade"]),
        (upgrade_request(drop=("Connection",)), ["Connection"]),
        (upgrade_request(drop=("Sec-WebSocket-Version",)), ["Sec-WebSocket-Version"]),
        (upgrade_request(version="HTTP/1.0"), ["HTTP/1.1"]),
        (b"HELLO\x01 WORLD \x00\r\n\r\n", []),
        (b"GET / HTTP/1.1\r\nHost x no colon\r\n\r\n", []),
    ],
    ids=[
        "missing-host",
        "repeated-host",
        "missing-key",
        "garbled-key",
        "short-key",
        "empty-key",
        "repeated-key",
        "connection-without-upgrade",
        "missing-connection",
        "missing-version",
        "http-1.0",
        "garbage-request-line",
        "garbage-header",
    ],
)
async def test_400_with_plain_text_reason(request_bytes: bytes, words: list[str]) -> None:
    async with serving(EchoHandler) as (server, url):
        reply = await exchange(url, request_bytes)
        assert_rejected(reply, 400, *words)
        await eventually(lambda: not server._context.connections, what="rejected connection to go")


async def test_405_for_post_upgrade() -> None:
    async with serving(EchoHandler) as (_, url):
        reply = await exchange(url, upgrade_request(method="POST"))
    assert_rejected(reply, 405, "GET")


@pytest.mark.parametrize("version", ["8", "14", "13, 8"])
async def test_426_for_other_versions(version: str) -> None:
    async with serving(EchoHandler) as (_, url):
        reply = await exchange(url, upgrade_request(replace={"Sec-WebSocket-Version": version}))
    assert_rejected(reply, 426, "version")
    assert reply.header("Sec-WebSocket-Version") == "13"


async def test_431_for_large_header_block() -> None:
    big = upgrade_request(extra=[("X-Big", "a" * 17000)])
    fits = upgrade_request(extra=[("X-Big", "a" * 15000)])
    async with serving(EchoHandler) as (_, url):
        assert_rejected(await exchange(url, big), 431, "16384")
        assert (await exchange(url, fits)).status == 101
        # Many small headers add up too.
        many = upgrade_request(extra=[(f"X-H{i}", "v" * 40) for i in range(400)])
        assert_rejected(await exchange(url, many), 431)


async def test_431_follows_max_header_size() -> None:
    async with serving(EchoHandler, max_header_size=1024) as (_, url):
        assert_rejected(await exchange(url, upgrade_request(extra=[("X-Big", "a" * 1000)])), 431, "1024")
        assert (await exchange(url, upgrade_request(extra=[("X-Big", "a" * 700)]))).status == 101
    async with serving(EchoHandler, max_header_size=64 * 1024) as (_, url):
        assert (await exchange(url, upgrade_request(extra=[("X-Big", "a" * 40000)]))).status == 101


async def test_431_when_header_block_arrives_in_pieces() -> None:
    def trickle(port: int) -> HttpReply:
        sock = raw_connect(port)
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            data = b""
            for _ in range(40):
                try:
                    sock.sendall(b"X-Pad: " + b"p" * 1000 + b"\r\n")
                except OSError:
                    break
                time.sleep(0.002)
            sock.settimeout(unit(5))
            try:
                while chunk := sock.recv(65536):
                    data += chunk
            except ConnectionResetError:
                pass
            return HttpReply(data)
        finally:
            sock.close()

    async with serving(EchoHandler) as (_, url):
        reply = await asyncio.to_thread(trickle, port_of(url))
    assert reply.status == 431, reply


# -- plain HTTP ----------------------------------------------------------------


async def test_plain_get_gets_426_by_default() -> None:
    async with serving(Handler) as (_, url):
        reply = await exchange(url, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_rejected(reply, 426, "WebSocket")
    assert reply.header("Upgrade") == "websocket"
    assert reply.header("Sec-WebSocket-Version") == "13"


async def test_demo_serves_page_health_and_404() -> None:
    async with serving(EchoHandler) as (_, url):
        page = await exchange(url, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert page.status == 200, page
        assert page.header("Content-Type").startswith("text/html")
        assert page.header("Content-Length") == str(len(page.body))
        assert b"WebSocket" in page.body and b"<html" in page.body.lower()
        query = await exchange(url, b"GET /?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert query.status == 200 and query.body == page.body
        health = await exchange(url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert health.status == 200, health
        assert health.header("Content-Type").startswith("text/plain")
        other = await exchange(url, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
        assert_rejected(other, 404)
        # Upgrades still work on every path, "/" included.
        up = await exchange(url, upgrade_request(path="/"))
        assert up.status == 101


async def test_head_gets_headers_without_body() -> None:
    async with serving(EchoHandler) as (_, url):
        get = await exchange(url, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await exchange(url, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.status == 200, head
    assert head.header("Content-Type") == get.header("Content-Type")
    assert head.header("Content-Length") == str(len(get.body))
    # RFC 9112 section 6.3: a response to HEAD ends after its header block.
    assert head.body == b"", head


async def test_plain_http_1_0_gets_an_answer() -> None:
    async with serving(EchoHandler) as (_, url):
        reply = await exchange(url, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert reply.status == 200, reply


# -- timing and pipelining -----------------------------------------------------


async def test_stalled_handshake_is_dropped_after_open_timeout() -> None:
    def stall(port: int) -> tuple[bytes, float]:
        sock = raw_connect(port)
        try:
            sock.sendall(UPGRADE[:40])
            start = time.monotonic()
            data = recv_all(sock, 10)
            return data, time.monotonic() - start
        finally:
            sock.close()

    async with serving(EchoHandler, open_timeout=0.5) as (server, url):
        data, elapsed = await asyncio.to_thread(stall, port_of(url))
        assert data == b""  # dropped, no HTTP answer to half a request
        assert 0.3 <= elapsed < unit(5), elapsed
        await eventually(lambda: not server._context.connections, what="stalled connection to go")


async def test_completed_handshake_is_not_subject_to_open_timeout() -> None:
    async with serving(EchoHandler, open_timeout=0.3) as (_, url):
        async with connect(url) as ws:
            await asyncio.sleep(0.6)
            await ws.send("still open")
            assert await asyncio.wait_for(ws.recv(), unit(5)) == "still open"


def recv_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(unit(timeout))
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


async def test_frames_pipelined_with_the_handshake_are_answered() -> None:
    def pipelined(port: int) -> tuple[bytes, list, tuple[int, str]]:
        sock = raw_connect(port)
        try:
            sock.sendall(
                UPGRADE
                + client_frame(OP_TEXT, "first")
                + client_frame(OP_TEXT, "second")
                + client_frame(OP_CLOSE, b"\x03\xe8")
            )
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(1)
            stream = FrameStream(sock)
            events = [stream.next(), stream.next()]
            close = stream.expect_close()
            assert stream.at_eof()
            return head, events, close
        finally:
            sock.close()

    async with serving(EchoHandler) as (_, url):
        head, events, close = await asyncio.to_thread(pipelined, port_of(url))
    assert head.startswith(b"HTTP/1.1 101"), head
    assert events == [(OP_TEXT, b"first"), (OP_TEXT, b"second")]
    assert close == (1000, "")


async def test_handshake_split_byte_by_byte() -> None:
    def split(port: int) -> bytes:
        sock = raw_connect(port)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for i in range(len(UPGRADE)):
                sock.sendall(UPGRADE[i : i + 1])
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(4096)
            return head
        finally:
            sock.close()

    async with serving(EchoHandler) as (_, url):
        head = await asyncio.to_thread(split, port_of(url))
    assert head.startswith(b"HTTP/1.1 101") and RFC_ACCEPT.encode() in head


# -- hooks -------------------------------------------------------------------


async def test_process_request_can_refuse() -> None:
    seen = []

    def process_request(ws, request):
        seen.append((request.path, request.headers.get("X-Token")))
        if request.headers.get("X-Token") != "secret":
            return ws.respond(403, "no")
        return None

    async with serving(EchoHandler, process_request=process_request) as (_, url):
        reply = await exchange(url, UPGRADE)
        assert reply.status == 403, reply
        assert reply.body == b"no"
        ok = await exchange(url, upgrade_request(extra=[("X-Token", "secret")]))
        assert ok.status == 101
        # A real client sees the refusal as an HTTP status.
        with pytest.raises(InvalidStatus) as info:
            await connect(url + "/x", open_timeout=unit(5))
        assert info.value.response.status_code == 403
    assert seen[:2] == [("/chat", None), ("/chat", "secret")]


async def test_async_process_request() -> None:
    async def process_request(ws, request):
        await asyncio.sleep(0.05)
        if request.path.startswith("/private"):
            return ws.respond(403, "private")
        return None

    async with serving(EchoHandler, process_request=process_request) as (_, url):
        reply = await exchange(url, upgrade_request(path="/private/x"))
        assert reply.status == 403 and reply.body == b"private", reply
        async with connect(url + "/public") as ws:
            await ws.send("hello")
            assert await asyncio.wait_for(ws.recv(), unit(5)) == "hello"

        # Frames that arrive while the hook is still deciding are kept and
        # answered once the connection opens.
        def pipelined(port: int) -> tuple[bytes, tuple | None]:
            sock = raw_connect(port)
            try:
                sock.sendall(UPGRADE + client_frame(OP_TEXT, "early"))
                head = b""
                while b"\r\n\r\n" not in head:
                    head += sock.recv(1)
                return head, FrameStream(sock).next()
            finally:
                sock.close()

        head, event = await asyncio.to_thread(pipelined, port_of(url))
        assert head.startswith(b"HTTP/1.1 101"), head
        assert event == (OP_TEXT, b"early")


async def test_process_request_error_is_500() -> None:
    def process_request(ws, request):
        raise ValueError("hook bug")

    async with serving(EchoHandler, process_request=process_request) as (_, url):
        reply = await exchange(url, UPGRADE)
    assert reply.status == 500, reply


async def test_subprotocol_negotiation() -> None:
    async with serving(EchoHandler, subprotocols=["chat", "superchat"]) as (_, url):
        reply = await exchange(url, upgrade_request(extra=[("Sec-WebSocket-Protocol", "superchat, chat")]))
        assert reply.status == 101, reply
        assert reply.header("Sec-WebSocket-Protocol") == "chat"
        # Offered over two header lines.
        reply = await exchange(
            url,
            upgrade_request(extra=[("Sec-WebSocket-Protocol", "other"), ("Sec-WebSocket-Protocol", "superchat")]),
        )
        assert reply.header("Sec-WebSocket-Protocol") == "superchat"
        none_common = await exchange(url, upgrade_request(extra=[("Sec-WebSocket-Protocol", "mqtt, soap")]))
        assert_rejected(none_common, 400, "subprotocol")
        # Subprotocol names are case-sensitive.
        wrong_case = await exchange(url, upgrade_request(extra=[("Sec-WebSocket-Protocol", "CHAT")]))
        assert_rejected(wrong_case, 400)
        missing = await exchange(url, UPGRADE)
        assert_rejected(missing, 400, "subprotocol")
        async with connect(url, subprotocols=["superchat", "chat"]) as ws:
            assert ws.subprotocol == "chat"


async def test_origin_check() -> None:
    async with serving(EchoHandler, origins=["https://ok"]) as (_, url):
        good = await exchange(url, upgrade_request(extra=[("Origin", "https://ok")]))
        assert good.status == 101, good
        bad = await exchange(url, upgrade_request(extra=[("Origin", "https://evil")]))
        assert_rejected(bad, 403, "origin")
        missing = await exchange(url, UPGRADE)
        assert_rejected(missing, 403)
        async with connect(url, origin="https://ok") as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
