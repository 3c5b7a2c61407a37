"""Real clients (websockets, aiohttp) against fastws servers.

In-process servers run callback-level handlers (the demo's EchoHandler and
recording subclasses); the subprocess ``echo_server`` runs ``fastws serve``
with each codec.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK

import fastws
from fastws.demo import EchoHandler

from ..conftest import serving, unit
from .conftest import eventually, recording

pytestmark = pytest.mark.timeout(30)

SIZES = [0, 125, 126, 65535, 65536, 4 * 2**20]
BIG = 8 * 2**20


def text_of(size: int) -> str:
    # ASCII so that the size in bytes is exact; varied so echo corruption shows.
    rng = random.Random(size)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(min(size, 4096))) * (
        size // 4096 + 1
    )


def payload(size: int, text: bool) -> str | bytes:
    if text:
        return text_of(size)[:size]
    return os.urandom(size)


def size_id(size: int) -> str:
    return f"{size // 2**20}MiB" if size >= 2**20 else str(size)


# -- echo ------------------------------------------------------------------


@pytest.mark.parametrize("text", [True, False], ids=["text", "binary"])
@pytest.mark.parametrize("size", SIZES, ids=size_id)
async def test_websockets_echo(size: int, text: bool) -> None:
    async with serving(EchoHandler, max_message_size=BIG) as (_, url):
        async with connect(url, max_size=None, open_timeout=unit(5)) as ws:
            message = payload(size, text)
            await ws.send(message)
            echo = await asyncio.wait_for(ws.recv(), unit(10))
            assert type(echo) is type(message)
            assert echo == message


@pytest.mark.parametrize("text", [True, False], ids=["text", "binary"])
@pytest.mark.parametrize("size", SIZES, ids=size_id)
async def test_aiohttp_echo(size: int, text: bool) -> None:
    async with serving(EchoHandler, max_message_size=BIG) as (_, url):
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=unit(5))) as ws:
                message = payload(size, text)
                if text:
                    await ws.send_str(message)  # type: ignore[arg-type]
                else:
                    await ws.send_bytes(message)  # type: ignore[arg-type]
                msg = await ws.receive(timeout=unit(10))
                assert msg.type is (aiohttp.WSMsgType.TEXT if text else aiohttp.WSMsgType.BINARY)
                assert msg.data == message


async def test_many_messages_in_order_both_clients() -> None:
    async with serving(EchoHandler) as (_, url):
        async with connect(url) as ws1, aiohttp.ClientSession() as session:
            async with session.ws_connect(url) as ws2:
                for i in range(200):
                    await ws1.send(f"w{i}")
                    await ws2.send_bytes(b"a%d" % i)
                for i in range(200):
                    assert await asyncio.wait_for(ws1.recv(), unit(5)) == f"w{i}"
                    msg = await ws2.receive(timeout=unit(5))
                    assert msg.data == b"a%d" % i


async def test_message_over_limit_closes_1009() -> None:
    async with serving(EchoHandler, max_message_size=1000) as (_, url):
        async with connect(url) as ws:
            await ws.send("x" * 1000)
            assert await asyncio.wait_for(ws.recv(), unit(5)) == "x" * 1000
            await ws.send("x" * 1001)
            with pytest.raises(ConnectionClosedError) as info:
                await asyncio.wait_for(ws.recv(), unit(5))
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009


# -- fragmentation ---------------------------------------------------------


async def test_fragmented_messages_are_reassembled() -> None:
    handler, log = recording()
    async with serving(handler) as (_, url):
        async with connect(url) as ws:
            await ws.send(["a", "b", "c"])
            assert await asyncio.wait_for(ws.recv(), unit(5)) == "abc"
            await ws.send([b"\x00\x01", b"", b"\x02" * 70000, b"\xff"])
            assert await asyncio.wait_for(ws.recv(), unit(5)) == b"\x00\x01" + b"\x02" * 70000 + b"\xff"
            # A multi-byte character split across fragments is still valid text.
            await ws.send(["h\u00e9", "llo \u20ac"])
            assert await asyncio.wait_for(ws.recv(), unit(5)) == "h\u00e9llo \u20ac"

            async def chunks():
                for part in ("x", "y", "z"):
                    yield part

            await ws.send(chunks())
            assert await asyncio.wait_for(ws.recv(), unit(5)) == "xyz"
    # One on_message call per message, not per fragment.
    assert [e[1:] for e in log.of("message")] == [
        (b"abc", True),
        (b"\x00\x01" + b"\x02" * 70000 + b"\xff", False),
        ("h\u00e9llo \u20ac".encode(), True),
        (b"xyz", True),
    ]


async def test_control_frames_between_fragments() -> None:
    # aiohttp cannot fragment; websockets can, and sends a ping mid-message
    # here by interleaving: ping is written while the fragment iterator runs.
    handler, log = recording()
    async with serving(handler) as (_, url):
        async with connect(url) as ws:
            pong_waiters = []

            async def chunks():
                yield "one "
                pong_waiters.append(await ws.ping(b"mid"))
                yield "two"

            await ws.send(chunks())
            assert await asyncio.wait_for(ws.recv(), unit(5)) == "one two"
            await asyncio.wait_for(pong_waiters[0], unit(5))
    assert ("ping", b"mid") in log.events


# -- ping / pong -------------------------------------------------------------


async def test_client_ping_gets_pong_and_reaches_on_ping() -> None:
    handler, log = recording()
    async with serving(handler) as (_, url):
        async with connect(url, ping_interval=None) as ws:
            waiter = await ws.ping(b"hello")
            latency = await asyncio.wait_for(waiter, unit(5))
            assert latency >= 0
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, autoping=False) as ws2:
                await ws2.ping(b"from-aiohttp")
                msg = await ws2.receive(timeout=unit(5))
                assert msg.type is aiohttp.WSMsgType.PONG
                assert msg.data == b"from-aiohttp"
    assert log.of("ping") == [("ping", b"hello"), ("ping", b"from-aiohttp")]


def _ping_on_request(self, ws, data, is_text):
    if data == b"ping me":
        ws.ping(b"x")
    else:
        ws.send(data, is_text)


async def test_server_ping_reaches_client_and_pong_reaches_on_pong() -> None:
    handler, log = recording(on_message=_ping_on_request)
    async with serving(handler) as (_, url):
        # websockets answers pings on its own: the pong must reach on_pong.
        async with connect(url, ping_interval=None) as ws:
            await ws.send("ping me")
            await eventually(lambda: log.of("pong"), what="on_pong")
            assert log.of("pong") == [("pong", b"x")]
        # aiohttp with autoping off shows the ping itself.
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, autoping=False) as ws2:
                await ws2.send_str("ping me")
                msg = await ws2.receive(timeout=unit(5))
                assert msg.type is aiohttp.WSMsgType.PING
                assert msg.data == b"x"
                await ws2.pong(b"x")
                await eventually(lambda: len(log.of("pong")) == 2, what="second on_pong")
    assert log.of("pong") == [("pong", b"x"), ("pong", b"x")]


# -- closing -----------------------------------------------------------------


@pytest.mark.parametrize(
    "code,reason",
    [(1000, "bye"), (1001, "going away"), (3000, "app code"), (4999, "\u00e9t\u00e9"), (1000, "")],
)
async def test_client_close_code_reaches_on_close_and_is_echoed(code: int, reason: str) -> None:
    handler, log = recording()
    async with serving(handler) as (_, url):
        async with connect(url) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            await asyncio.wait_for(ws.close(code, reason), unit(5))
            assert ws.protocol.close_rcvd is not None
            assert ws.protocol.close_rcvd.code == code
        await eventually(lambda: log.closes(), what="on_close")
    assert log.closes() == [(code, reason)]


async def test_aiohttp_close_code_reaches_on_close() -> None:
    handler, log = recording()
    async with serving(handler) as (_, url):
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url) as ws:
                await ws.send_str("x")
                await ws.receive(timeout=unit(5))
                await ws.close(code=3333, message=b"aio")
                assert ws.close_code == 3333
        await eventually(lambda: log.closes(), what="on_close")
    assert log.closes() == [(3333, "aio")]


def _close_on_connect(self, ws):
    ws.close(4000, "bye")


async def test_server_close_reaches_client() -> None:
    handler, log = recording(on_connect=_close_on_connect)
    async with serving(handler) as (_, url):
        async with connect(url) as ws:
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), unit(5))
            assert info.value.rcvd is not None
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (4000, "bye")
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url) as ws2:
                msg = await ws2.receive(timeout=unit(5))
                assert msg.type is aiohttp.WSMsgType.CLOSE
                assert (msg.data, msg.extra) == (4000, "bye")
        await eventually(lambda: len(log.closes()) == 2, what="both on_close")
    # on_close reports what each client answered: websockets echoes the
    # code; aiohttp answers 1000 whatever it received.
    assert [c for c, _ in log.closes()][0] == 4000
    assert [c for c, _ in log.closes()][1] in (4000, 1000)


@pytest.mark.parametrize("size", [10, 20000], ids=["small", "over-write-limit"])
async def test_sends_before_close_arrive_before_close(size: int) -> None:
    def burst(self, ws):
        for i in range(100):
            ws.send(f"{i:05d}".ljust(size, "."))
        ws.close(1000, "done")

    handler, log = recording(on_connect=burst)
    async with serving(handler) as (_, url):
        async with connect(url, max_size=None) as ws:
            got = []
            with pytest.raises(ConnectionClosedOK) as info:
                while True:
                    got.append(await asyncio.wait_for(ws.recv(), unit(5)))
            assert [m[:5] for m in got] == [f"{i:05d}" for i in range(100)]
            assert all(len(m) == size for m in got)
            assert info.value.rcvd is not None
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (1000, "done")


async def test_long_close_reason_is_cut_at_a_character_boundary() -> None:
    reason = "\u00e9" * 100  # 200 bytes of UTF-8; a close frame holds 123

    def close_long(self, ws):
        ws.close(4001, reason)

    handler, _ = recording(on_connect=close_long)
    async with serving(handler) as (_, url):
        async with connect(url) as ws:
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), unit(5))
    rcvd = info.value.rcvd
    assert rcvd is not None and rcvd.code == 4001
    assert reason.startswith(rcvd.reason)
    assert 120 <= len(rcvd.reason.encode()) <= 123


async def test_send_after_close_raises_connection_closed() -> None:
    outcome = []

    def close_then_send(self, ws, data, is_text):
        ws.close(1000, "")
        try:
            ws.send("late")
        except fastws.ConnectionClosed as exc:
            outcome.append(type(exc))

    handler, _ = recording(on_message=close_then_send)
    async with serving(handler) as (_, url):
        async with connect(url) as ws:
            await ws.send("x")
            with pytest.raises(ConnectionClosedOK):
                await asyncio.wait_for(ws.recv(), unit(5))
    assert len(outcome) == 1 and issubclass(outcome[0], fastws.ConnectionClosed)


async def test_many_concurrent_clients() -> None:
    handler, log = recording()
    async with serving(handler) as (server, url):

        async def client(n: int) -> None:
            async with connect(f"{url}/c{n}") as ws:
                for i in range(20):
                    await ws.send(f"{n}:{i}")
                for i in range(20):
                    assert await asyncio.wait_for(ws.recv(), unit(10)) == f"{n}:{i}"

        await asyncio.gather(*(client(n) for n in range(100)))
        await eventually(lambda: len(log.closes()) == 100, what="100 on_close")
        await eventually(lambda: not server._context.connections, what="no connection left")
    assert len(log.of("message")) == 2000
    assert set(log.closes()) == {(1000, "")}


async def test_server_close_via_server_close_sends_1001() -> None:
    handler, log = recording()
    async with serving(handler) as (server, url):
        async with connect(url) as ws:
            await ws.send("x")
            await ws.recv()
            server.close()
            with pytest.raises(ConnectionClosedOK) as info:
                await asyncio.wait_for(ws.recv(), unit(5))
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        await asyncio.wait_for(server.wait_closed(), unit(5))
    assert [c for c, _ in log.closes()] == [1001]


# -- errors in handlers ------------------------------------------------------


def _boom(self, ws, data, is_text):
    if data == b"boom":
        raise RuntimeError("handler exploded")
    ws.send(data, is_text)


async def test_exception_in_on_message_closes_1011_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fastws")
    handler, log = recording(on_message=_boom)
    async with serving(handler) as (_, url):
        async with connect(url) as bystander, connect(url) as victim:
            await victim.send("before")
            assert await victim.recv() == "before"
            await victim.send("boom")
            with pytest.raises(ConnectionClosedError) as info:
                await asyncio.wait_for(victim.recv(), unit(5))
            assert info.value.rcvd is not None and info.value.rcvd.code == 1011
            # The other connection is unaffected, and new ones still work.
            await bystander.send("still here")
            assert await asyncio.wait_for(bystander.recv(), unit(5)) == "still here"
            async with connect(url) as newcomer:
                await newcomer.send(b"\x01")
                assert await asyncio.wait_for(newcomer.recv(), unit(5)) == b"\x01"
        await eventually(lambda: len(log.closes()) == 3, what="three on_close")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert errors[0].exc_info is not None and "handler exploded" in str(errors[0].exc_info[1])
    assert "on_message" in errors[0].getMessage()
    assert caplog.text.count("Traceback") == 1
    assert sorted(c for c, _ in log.closes()) == [1000, 1000, 1011]


async def test_on_close_after_handler_error_is_not_1006() -> None:
    handler, log = recording(on_message=_boom)
    async with serving(handler) as (_, url):
        async with connect(url) as ws:
            await ws.send("boom")
            with pytest.raises(ConnectionClosedError):
                await asyncio.wait_for(ws.recv(), unit(5))
        await eventually(lambda: log.closes(), what="on_close")
    # The client echoed 1011 and did not vanish; Handler.on_close documents
    # 1006 for "the peer vanished" only.
    assert log.closes()[0][0] == 1011


# -- what handlers can see ---------------------------------------------------


async def test_request_and_addresses_visible_in_handler() -> None:
    seen = {}

    def look(self, ws):
        seen["path"] = ws.request.path
        seen["headers"] = ws.request.headers
        seen["remote"] = ws.remote_address
        seen["local"] = ws.local_address

    handler, log = recording(on_connect=look)
    async with serving(handler) as (server, url):
        async with connect(
            url + "/room/42?user=ann&x=%20y",
            additional_headers=[("X-Multi", "one"), ("x-multi", "two"), ("X-Single", "Value")],
            user_agent_header="fastws-tests",
        ) as ws:
            await ws.send("x")
            await ws.recv()
            client_addr = ws.local_address
            server_addr = ws.remote_address
    assert seen["path"] == "/room/42?user=ann&x=%20y"
    headers = seen["headers"]
    assert headers["x-single"] == "Value"
    assert headers["X-SINGLE"] == "Value"
    assert headers.get("x-Single") == "Value"
    assert "X-single" in headers
    assert headers.get_all("X-MULTI") == ["one", "two"]
    # As in websockets: MultipleValuesError, a LookupError but not a KeyError
    # (so headers.get() does not hide a repeated header).
    with pytest.raises(fastws.MultipleValuesError):
        headers["x-multi"]
    with pytest.raises(fastws.MultipleValuesError):
        headers.get("x-multi")
    assert headers.get_all("user-agent") == ["fastws-tests"]
    assert headers.get("nope") is None
    assert tuple(seen["remote"][:2]) == tuple(client_addr[:2])
    assert tuple(seen["local"][:2]) == tuple(server_addr[:2])


async def test_server_connections_tracks_open_connections() -> None:
    async with serving(EchoHandler) as (server, url):
        async with connect(url) as a, connect(url) as b:
            await a.send("x")
            await b.send("y")
            await a.recv()
            await b.recv()
            assert len(server.connections) == 2
        await eventually(lambda: not server.connections, what="connections to empty")


async def test_vanishing_client_gives_1006_without_traceback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fastws")
    handler, log = recording()
    async with serving(handler) as (server, url):
        ws = await connect(url)
        await ws.send("x")
        assert await ws.recv() == "x"
        ws.transport.abort()
        await eventually(lambda: log.closes(), what="on_close")
        assert log.closes() == [(1006, "")]
        # A second client that sets SO_LINGER 0 (RST instead of FIN).
        ws2 = await connect(url)
        await ws2.send("y")
        assert await ws2.recv() == "y"
        sock = ws2.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        ws2.transport.abort()
        await eventually(lambda: len(log.closes()) == 2, what="second on_close")
        assert log.closes()[1] == (1006, "")
        await eventually(lambda: not server.connections and not server._context.connections, what="cleanup")
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]


# -- the demo in a subprocess, both codecs -----------------------------------


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536], ids=size_id)
async def test_subprocess_echo_websockets(echo_server, size: int) -> None:
    async with connect(echo_server.url, open_timeout=unit(5)) as ws:
        for text in (True, False):
            message = payload(size, text)
            await ws.send(message)
            assert await asyncio.wait_for(ws.recv(), unit(10)) == message
        await ws.send(["frag", "mented"])
        assert await asyncio.wait_for(ws.recv(), unit(5)) == "fragmented"
        await asyncio.wait_for(await ws.ping(b"p"), unit(5))
        await ws.close(3001, "done")
        assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 3001


@pytest.mark.parametrize("size", [0, 126, 65536], ids=size_id)
async def test_subprocess_echo_aiohttp(echo_server, size: int) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(echo_server.url + "/any/path?q=1") as ws:
            await ws.send_str(payload(size, True))  # type: ignore[arg-type]
            msg = await ws.receive(timeout=unit(10))
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, payload(size, True))
            data = os.urandom(size)
            await ws.send_bytes(data)
            msg = await ws.receive(timeout=unit(10))
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, data)
            await ws.close(code=1000, message=b"ok")
            assert ws.close_code == 1000


async def test_subprocess_message_over_default_limit(echo_server) -> None:
    async with connect(echo_server.url, max_size=None) as ws:
        await ws.send(b"\x00" * (2**20))
        assert await asyncio.wait_for(ws.recv(), unit(10)) == b"\x00" * (2**20)
        await ws.send(b"\x00" * (2**20 + 1))
        with pytest.raises(ConnectionClosedError) as info:
            await asyncio.wait_for(ws.recv(), unit(10))
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
