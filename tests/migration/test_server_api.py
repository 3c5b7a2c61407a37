"""The server API a migrated program touches, run on both libraries.

Every test takes ``api``: the names a program imports, from ``websockets``
or from ``fastws`` (see ``harness.server_api``), and asserts the same result
for both. Where fastws differs on purpose, the test says so in its docstring
and asserts each library's own behaviour (docs/migration.md lists these).
``bug()`` marks the fastws case of a test as a known bug until it is fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import tempfile
import time
import types
from typing import Any

import pytest
from websockets.asyncio.client import connect, unix_connect
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus

from ..conftest import unit
from .harness import LIBS, echo, eventually, server_api, serving


def bug(reason: str) -> Any:
    """Marks the fastws case of a parametrized test as a known bug."""
    return pytest.param("fastws", marks=pytest.mark.xfail(strict=True, reason=f"bug: {reason}"))


@pytest.fixture(params=LIBS)
def api(request: pytest.FixtureRequest) -> types.SimpleNamespace:
    return server_api(str(request.param))


def refused(url: str) -> bool:
    host, port = url.removeprefix("ws://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=unit(2)).close()
    except OSError:
        return True
    return False


# -- how handlers end -------------------------------------------------------


async def test_handler_returns_closes_1000(api: types.SimpleNamespace) -> None:
    async def handler(ws: Any) -> None:
        await ws.send("bye")

    async with serving(api, handler) as (_, url):
        async with connect(url) as ws:
            assert await ws.recv() == "bye"
            with pytest.raises(ConnectionClosedOK):
                await ws.recv()
        assert (ws.close_code, ws.close_reason) == (1000, "")


async def test_handler_raises_closes_1011_logs_once_and_serves_on(
    api: types.SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(ws: Any) -> None:
        message = await ws.recv()
        if message == "boom":
            raise RuntimeError("boom in handler")
        await ws.send(f"ok {message}")

    caplog.set_level(logging.INFO)
    async with serving(api, handler) as (_, url):
        async with connect(url) as ws:
            await ws.send("boom")
            with pytest.raises(ConnectionClosedError) as info:
                await ws.recv()
        assert ws.close_code == 1011
        assert info.value.rcvd is not None and info.value.rcvd.code == 1011
        async with connect(url) as ws:  # the next client is served
            await ws.send("next")
            assert await ws.recv() == "ok next"
    tracebacks = [
        r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], RuntimeError) and "boom" in str(r.exc_info[1])
    ]
    assert len(tracebacks) == 1, [r.getMessage() for r in caplog.records]
    assert tracebacks[0].levelno == logging.ERROR
    assert tracebacks[0].name.startswith(api.logger_name)


async def test_handler_sees_the_client_close(api: types.SimpleNamespace) -> None:
    seen: list[Any] = []

    async def handler(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)
        await ws.wait_closed()
        seen.append((ws.close_code, ws.close_reason, ws.state.name))

    async with serving(api, handler) as (_, url):
        async with connect(url) as ws:
            await ws.send("x")
            await ws.recv()
        await eventually(lambda: seen)
    assert seen == [(1000, "", "CLOSED")]


async def test_handler_catches_connection_closed_error(api: types.SimpleNamespace) -> None:
    """``except ConnectionClosedError`` with the library's own class."""
    seen: list[Any] = []

    async def handler(ws: Any) -> None:
        try:
            await ws.recv()
        except api.ConnectionClosedError as exc:
            await ws.wait_closed()
            seen.append((type(exc).__name__, ws.close_code, ws.close_reason))

    async with serving(api, handler) as (_, url):
        async with connect(url) as ws:
            await ws.close(4001, "client says so")
        await eventually(lambda: seen)
    assert seen == [("ConnectionClosedError", 4001, "client says so")]


@pytest.mark.parametrize("lib", LIBS)
async def test_connection_closed_rcvd_and_sent(lib: str) -> None:
    """websockets documents ``exc.rcvd.code``/``exc.sent.reason`` (and
    deprecates ``exc.code``); a program reading them must work on fastws."""
    api = server_api(lib)
    seen: list[Any] = []

    async def handler(ws: Any) -> None:
        try:
            await ws.recv()
        except api.ConnectionClosed as exc:
            seen.append((exc.rcvd.code, exc.rcvd.reason, exc.sent.code, exc.rcvd_then_sent))

    async with serving(api, handler) as (_, url):
        async with connect(url) as ws:
            await ws.close(1000, "done")
        await eventually(lambda: seen)
    assert seen == [(1000, "done", 1000, True)]


@pytest.mark.parametrize("lib, echoed", [("websockets", "done"), ("fastws", "")])
async def test_close_reason_echo(lib: str, echoed: str) -> None:
    """Deliberate difference: answering a client's close, websockets echoes
    code and reason, fastws echoes the code only (RFC 6455 section 5.5.1
    asks for the code). The client's ``close_reason`` shows it."""
    api = server_api(lib)
    async with serving(api, echo) as (_, url):
        async with connect(url) as ws:
            await ws.close(1000, "done")
        assert (ws.close_code, ws.close_reason) == (1000, echoed)


# -- the Server object ---------------------------------------------------------


async def test_server_connections(api: types.SimpleNamespace) -> None:
    handlers: list[Any] = []

    async def handler(ws: Any) -> None:
        handlers.append(ws)
        await echo(ws)

    async with serving(api, handler) as (server, url):
        assert server.connections == set()
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(connect(url)) for _ in range(3)]
            for c in clients:  # each handler is running
                await c.send("x")
                await c.recv()
            assert server.connections == set(handlers) and len(handlers) == 3
            assert all(isinstance(ws, api.ServerConnection) for ws in server.connections)
            await clients[0].close()
            await eventually(lambda: len(server.connections) == 2)
            assert server.connections == set(handlers[1:])


async def test_server_close_sends_1001(api: types.SimpleNamespace) -> None:
    async with api.serve(echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}"
        async with connect(url) as ws1, connect(url) as ws2:
            await ws1.send("x")
            assert await ws1.recv() == "x"
            server.close()
            await asyncio.wait_for(server.wait_closed(), unit(10))
            for ws in (ws1, ws2):
                with pytest.raises(ConnectionClosedOK):
                    await asyncio.wait_for(ws.recv(), unit(5))
                assert ws.close_code == 1001
        assert not server.is_serving()
        assert refused(url)


@pytest.mark.parametrize("lib", LIBS)
async def test_server_close_reason(lib: str) -> None:
    api = server_api(lib)
    async with serving(api, echo) as (server, url):
        async with connect(url) as ws:
            server.close()
            with pytest.raises(ConnectionClosedOK):
                await ws.recv()
            assert (ws.close_code, ws.close_reason) == (1001, "")


async def test_server_close_custom_code(api: types.SimpleNamespace) -> None:
    async with serving(api, echo) as (server, url):
        async with connect(url) as ws:
            server.close(code=1012, reason="restarting")
            with pytest.raises(ConnectionClosedError):
                await ws.recv()
            assert (ws.close_code, ws.close_reason) == (1012, "restarting")


@pytest.mark.parametrize("lib", LIBS)
async def test_server_close_waits_for_handlers(lib: str) -> None:
    """A handler's cleanup after the connection ended (``finally: await
    ...``) completes before ``wait_closed()`` returns."""
    api = server_api(lib)
    cleaned: list[str] = []

    async def handler(ws: Any) -> None:
        try:
            await echo(ws)
        finally:
            await asyncio.sleep(0.2)  # e.g. tell a database the user left
            cleaned.append("done")

    async with api.serve(handler, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with connect(url) as ws:
            await ws.send("x")
            await ws.recv()
            server.close()
            await asyncio.wait_for(server.wait_closed(), unit(10))
    assert cleaned == ["done"]


@pytest.mark.parametrize("lib", LIBS)
async def test_server_close_keeps_connections(lib: str) -> None:
    api = server_api(lib)
    async with serving(api, echo, close_timeout=0.2) as (server, url):
        async with connect(url) as ws:
            server.close(close_connections=False)
            await asyncio.sleep(0.5)
            assert refused(url)  # no longer accepting
            await ws.send("still open")  # but the connection lives on
            assert await ws.recv() == "still open"
            closed = asyncio.ensure_future(server.wait_closed())
            await asyncio.sleep(0.1)
            assert not closed.done()
        await asyncio.wait_for(closed, unit(5))


async def test_serve_forever_cancelled(api: types.SimpleNamespace) -> None:
    server = await api.serve(echo, "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    task = asyncio.create_task(server.serve_forever())
    async with connect(url) as ws:
        await ws.send("x")
        assert await ws.recv() == "x"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, unit(10))
        with pytest.raises(ConnectionClosedOK):
            await asyncio.wait_for(ws.recv(), unit(5))
        assert ws.close_code == 1001
    await asyncio.wait_for(server.wait_closed(), unit(10))
    assert not server.is_serving()
    assert refused(url)


async def test_async_with_serve(api: types.SimpleNamespace) -> None:
    async with api.serve(echo, "127.0.0.1", 0) as server:
        assert isinstance(server, api.Server) and server.is_serving()
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        ws = await connect(url)
        await ws.send("x")
        assert await ws.recv() == "x"
    # Leaving the block closed the connection (1001) and the listener.
    with pytest.raises(ConnectionClosedOK):
        await asyncio.wait_for(ws.recv(), unit(5))
    assert ws.close_code == 1001
    assert refused(url)


@pytest.mark.parametrize("lib", LIBS)
async def test_start_serving_false_then_serve_forever(lib: str) -> None:
    api = server_api(lib)
    server = await api.serve(echo, "127.0.0.1", 0, start_serving=False)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    assert not server.is_serving()
    task = asyncio.create_task(server.serve_forever())
    await asyncio.sleep(0.05)  # let serve_forever() start
    try:
        async with connect(url, open_timeout=unit(2)) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, unit(10))
        server.close()
        await asyncio.wait_for(server.wait_closed(), unit(10))


async def test_start_serving_false_then_start_serving(api: types.SimpleNamespace) -> None:
    server = await api.serve(echo, "127.0.0.1", 0, start_serving=False)
    try:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        await server.start_serving()
        assert server.is_serving()
        async with connect(url) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), unit(10))


async def test_unix_serve(api: types.SimpleNamespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ws.sock")
        async with api.unix_serve(echo, path):
            async with unix_connect(path, "ws://localhost/") as ws:
                await ws.send("over unix")
                assert await ws.recv() == "over unix"


# -- the connection object -------------------------------------------------------


async def test_connection_attributes(api: types.SimpleNamespace) -> None:
    seen: dict[str, Any] = {}

    async def handler(ws: Any) -> None:
        seen["path"] = ws.request.path
        seen["ua"] = ws.request.headers["User-Agent"]
        seen["x"] = ws.request.headers.get_all("X-Multi")
        seen["missing"] = ws.request.headers.get("X-Missing")
        seen["remote"] = ws.remote_address
        seen["local"] = ws.local_address
        seen["id"] = ws.id
        seen["state"] = ws.state.name
        seen["code"] = ws.close_code
        seen["subprotocol"] = ws.subprotocol
        seen["latency"] = await (await ws.ping())
        seen["latency2"] = ws.latency
        seen["decode"] = await ws.recv(decode=False)
        await ws.send(b"caf\xc3\xa9", text=True)
        await ws.pong(b"unsolicited")
        await echo(ws)

    async with serving(api, handler) as (_, url):
        async with connect(
            url + "/room/1?x=y", user_agent_header="migration-test", additional_headers=[("X-Multi", "a"), ("X-Multi", "b")]
        ) as ws:
            await ws.send("text")
            assert await ws.recv() == "café"
            await ws.send("y")
            assert await ws.recv() == "y"
            local = ws.local_address
    assert seen["path"] == "/room/1?x=y"
    assert seen["ua"] == "migration-test"
    assert seen["x"] == ["a", "b"]
    assert seen["missing"] is None
    assert seen["remote"][:2] == local[:2]
    assert seen["local"][0] == "127.0.0.1"
    assert str(seen["id"]) and seen["id"] is not None
    assert seen["state"] == "OPEN" and seen["code"] is None and seen["subprotocol"] is None
    assert 0 <= seen["latency"] < unit(1) and seen["latency2"] >= 0
    assert seen["decode"] == b"text"


@pytest.mark.parametrize("lib", LIBS)
async def test_recv_streaming(lib: str) -> None:
    api = server_api(lib)
    got: list[Any] = []

    async def handler(ws: Any) -> None:
        async for fragment in ws.recv_streaming():
            got.append(fragment)

    async with serving(api, handler) as (_, url):
        async with connect(url) as ws:
            await ws.send(["a", "b", "c"])
        await eventually(lambda: "c" in got or got == ["abc"])
    assert "".join(got) == "abc"


@pytest.mark.parametrize("lib", LIBS)
async def test_connection_logger(lib: str, caplog: pytest.LogCaptureFixture) -> None:
    api = server_api(lib)

    async def handler(ws: Any) -> None:
        ws.logger.info("hello from %s", "handler")

    caplog.set_level(logging.INFO)
    async with serving(api, handler) as (_, url):
        async with connect(url) as ws:
            with contextlib.suppress(ConnectionClosedOK, ConnectionClosedError):
                await ws.recv()
    assert any(r.getMessage() == "hello from handler" for r in caplog.records)


async def test_concurrent_recv_raises(api: types.SimpleNamespace) -> None:
    seen: list[str] = []

    async def handler(ws: Any) -> None:
        first = asyncio.ensure_future(ws.recv())
        await asyncio.sleep(0)
        try:
            await ws.recv()
        except RuntimeError as exc:  # ConcurrencyError is a RuntimeError in both
            seen.append(type(exc).__name__)
        await ws.send(await first)

    async with serving(api, handler) as (_, url):
        async with connect(url) as ws:
            await ws.send("one")
            assert await ws.recv() == "one"
    assert seen == ["ConcurrencyError"]


async def test_send_after_close_raises_connection_closed_ok(api: types.SimpleNamespace) -> None:
    seen: list[str] = []

    async def handler(ws: Any) -> None:
        await ws.close()
        try:
            await ws.send("late")
        except api.ConnectionClosedOK as exc:
            seen.append(type(exc).__name__)

    async with serving(api, handler) as (_, url):
        async with connect(url) as ws:
            with pytest.raises(ConnectionClosedOK):
                await ws.recv()
        await eventually(lambda: seen)
    assert seen == ["ConnectionClosedOK"]


@pytest.mark.parametrize("fragments", [["text", b"bytes"], [b"bytes", "text"]])
async def test_send_mixed_fragments_type_error(api: types.SimpleNamespace, fragments: list[Any]) -> None:
    seen: list[str] = []

    async def handler(ws: Any) -> None:
        try:
            await ws.send(fragments)
        except TypeError:
            seen.append("TypeError")

    async with serving(api, handler) as (_, url):
        async with connect(url) as ws:
            with contextlib.suppress(ConnectionClosedOK, ConnectionClosedError):
                await ws.recv()
        await eventually(lambda: seen, timeout=2)
    assert seen == ["TypeError"]


async def test_send_dict_type_error(api: types.SimpleNamespace) -> None:
    seen: list[str] = []

    async def handler(ws: Any) -> None:
        for bad in ({"a": 1}, 42):
            try:
                await ws.send(bad)
            except TypeError:
                seen.append("TypeError")
        await ws.send("ok")

    async with serving(api, handler) as (_, url):
        async with connect(url) as ws:
            assert await ws.recv() == "ok"
    assert seen == ["TypeError", "TypeError"]


# -- broadcast ------------------------------------------------------------


@pytest.mark.parametrize("lib", LIBS)
async def test_broadcast_text_argument(lib: str) -> None:
    api = server_api(lib)
    connected: set[Any] = set()

    async def handler(ws: Any) -> None:
        connected.add(ws)
        await ws.wait_closed()

    async with serving(api, handler) as (_, url):
        async with connect(url) as ws:
            await eventually(lambda: connected)
            api.broadcast(connected, b"json bytes", text=True)
            api.broadcast(connected, "as binary", text=False)
            assert await ws.recv() == "json bytes"
            assert await ws.recv() == b"as binary"


async def test_broadcast_skips_closed_and_raises_typeerror(api: types.SimpleNamespace) -> None:
    connected: list[Any] = []

    async def handler(ws: Any) -> None:
        connected.append(ws)
        await ws.wait_closed()

    async with serving(api, handler) as (_, url):
        first = await connect(url)
        async with connect(url) as second:
            await eventually(lambda: len(connected) == 2)
            await first.close()
            await eventually(lambda: connected[0].state.name == "CLOSED")
            api.broadcast(connected, "to the living")
            assert await second.recv() == "to the living"
            with pytest.raises(TypeError):
                api.broadcast(connected, {"not": "data"})


@pytest.mark.parametrize("lib", LIBS)
async def test_broadcast_burst_reaches_a_reading_client(lib: str) -> None:
    """A burst broadcast in one loop reaches a client that reads normally."""
    api = server_api(lib)
    connected: set[Any] = set()

    async def handler(ws: Any) -> None:
        connected.add(ws)
        await ws.wait_closed()

    async with serving(api, handler, compression=None) as (_, url):
        async with connect(url, max_size=None, compression=None) as ws:
            await eventually(lambda: connected)
            for i in range(200):
                api.broadcast(connected, f"{i:08d}" + "x" * 65536)
            got = [int(str(await asyncio.wait_for(ws.recv(), unit(3)))[:8]) for _ in range(200)]
            assert got == list(range(200))


# -- handshake hooks ---------------------------------------------------------


async def test_async_process_request(api: types.SimpleNamespace) -> None:
    async def process_request(connection: Any, request: Any) -> Any:
        await asyncio.sleep(0.01)
        if "Authorization" not in request.headers:
            return connection.respond(403, "no\n")
        return None

    async with serving(api, echo, process_request=process_request) as (_, url):
        with pytest.raises(InvalidStatus) as info:
            async with connect(url):
                pass
        assert info.value.response.status_code == 403
        async with connect(url, additional_headers={"Authorization": "x"}) as ws:
            await ws.send("in")
            assert await ws.recv() == "in"


async def test_process_request_raises_500(api: types.SimpleNamespace) -> None:
    def process_request(connection: Any, request: Any) -> Any:
        raise ValueError("oops")

    async with serving(api, echo, process_request=process_request) as (_, url):
        with pytest.raises(InvalidStatus) as info:
            async with connect(url):
                pass
        assert info.value.response.status_code == 500


@pytest.mark.parametrize("lib", LIBS)
async def test_process_response_adds_header(lib: str) -> None:
    api = server_api(lib)
    calls: list[int] = []

    def process_response(connection: Any, request: Any, response: Any) -> None:
        calls.append(response.status_code)
        response.headers["X-Served-By"] = "migration"

    async with serving(api, echo, process_response=process_response) as (_, url):
        async with connect(url) as ws:
            assert ws.response.headers["X-Served-By"] == "migration"
    assert calls == [101]


async def test_select_subprotocol(api: types.SimpleNamespace) -> None:
    def select_subprotocol(connection: Any, subprotocols: Any) -> Any:
        assert isinstance(connection, api.ServerConnection)
        return "b" if "b" in subprotocols else None

    async def handler(ws: Any) -> None:
        await ws.send(str(ws.subprotocol))

    async with serving(api, handler, select_subprotocol=select_subprotocol) as (_, url):
        async with connect(url, subprotocols=["a", "b"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "b" and await ws.recv() == "b"
        async with connect(url, subprotocols=["a"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol is None and await ws.recv() == "None"


async def test_origins(api: types.SimpleNamespace) -> None:
    origins = ["https://good.example", re.compile(r"https://.*\.good\.example")]
    async with serving(api, echo, origins=origins) as (_, url):
        for origin in ["https://good.example", "https://a.good.example"]:
            async with connect(url, origin=origin) as ws:  # type: ignore[arg-type]
                await ws.send("x")
                assert await ws.recv() == "x"
        for origin in ["https://evil.example", None]:
            with pytest.raises(InvalidStatus) as info:
                async with connect(url, origin=origin):  # type: ignore[arg-type]
                    pass
            assert info.value.response.status_code == 403


# -- options ------------------------------------------------------------------


async def test_compression_option(api: types.SimpleNamespace) -> None:
    """``compression="deflate"`` (the default) negotiates permessage-deflate
    in both libraries, ``None`` declines it; messages are the same."""
    for compression in ("deflate", None):
        async with serving(api, echo, compression=compression) as (_, url):
            async with connect(url) as ws:
                await ws.send("z" * 10000)
                assert await ws.recv() == "z" * 10000
                extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
        negotiated = compression == "deflate"
        assert (extensions is not None) == negotiated, extensions
    with pytest.raises(ValueError):
        api.serve(echo, "127.0.0.1", 0, compression="brotli")


async def test_logger_option_accepted(api: types.SimpleNamespace) -> None:
    async with serving(api, echo, logger=logging.getLogger("my.app")) as (_, url):
        async with connect(url) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"


@pytest.mark.parametrize("lib", LIBS)
async def test_tuple_limits(lib: str) -> None:
    api = server_api(lib)
    async with serving(api, echo, max_queue=(8, 2), write_limit=(65536, 16384), max_size=(2**20, 2**16)) as (_, url):
        async with connect(url) as ws:
            await ws.send("x")
            assert await asyncio.wait_for(ws.recv(), unit(5)) == "x"


async def test_max_size_none_and_small(api: types.SimpleNamespace) -> None:
    async with serving(api, echo, max_size=None) as (_, url):
        async with connect(url, max_size=None) as ws:
            await ws.send(b"x" * (3 * 2**20))
            assert len(await ws.recv()) == 3 * 2**20
    async with serving(api, echo, max_size=10) as (_, url):
        async with connect(url, compression=None) as ws:
            await ws.send("0123456789")
            assert await ws.recv() == "0123456789"
            await ws.send("0123456789A")
            with pytest.raises(ConnectionClosedError):
                await ws.recv()
            assert ws.close_code == 1009


async def test_open_timeout(api: types.SimpleNamespace) -> None:
    async with serving(api, echo, open_timeout=0.2) as (_, url):
        host, port = url.removeprefix("ws://").rsplit(":", 1)

        def idle() -> bytes:
            with socket.create_connection((host, int(port)), timeout=unit(3)) as sock:
                start = time.monotonic()
                data = sock.recv(100)  # EOF (or an error answer) when dropped
                assert time.monotonic() - start < unit(2)
                return data

        data = await asyncio.to_thread(idle)
        assert data == b"" or data.startswith(b"HTTP/1.1 "), data


async def test_sock_option(api: types.SimpleNamespace) -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    async with api.serve(echo, sock=sock) as server:
        assert server.sockets[0].getsockname()[1] == port
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            await ws.send("via sock")
            assert await ws.recv() == "via sock"


async def test_server_header(api: types.SimpleNamespace) -> None:
    """Deliberate difference: the default ``Server`` header names the
    library. Setting it, or removing it with None, works the same."""
    async with serving(api, echo) as (_, url):
        async with connect(url) as ws:
            default = ws.response.headers["Server"]
    assert default.startswith("Python/") if api.logger_name == "websockets.server" else default == "fastws"
    async with serving(api, echo, server_header="my-app/1.0") as (_, url):
        async with connect(url) as ws:
            assert ws.response.headers["Server"] == "my-app/1.0"
    async with serving(api, echo, server_header=None) as (_, url):
        async with connect(url) as ws:
            assert "Server" not in ws.response.headers


def test_defaults_match() -> None:
    """The limits and timeouts a program gets without options are the same,
    but for write_limit (64 KiB in fastws, 32 KiB in websockets)."""
    import inspect

    import websockets.asyncio.server

    from fastws import Config

    params = inspect.signature(websockets.asyncio.server.serve).parameters
    ours = Config()
    pairs = {
        "open_timeout": ours.open_timeout,
        "ping_interval": ours.ping_interval,
        "ping_timeout": ours.ping_timeout,
        "close_timeout": ours.close_timeout,
        "max_size": ours.max_message_size,
        "max_queue": ours.max_queue,
    }
    for name, value in pairs.items():
        assert params[name].default == value, name
    assert params["write_limit"].default == 32 * 1024 and ours.write_limit == 64 * 1024


@pytest.mark.parametrize("lib", LIBS)
async def test_create_connection_subclass(lib: str) -> None:
    api = server_api(lib)

    class MyConnection(api.ServerConnection):  # type: ignore[name-defined,misc]
        def greeting(self) -> str:
            return "hello from a subclass"

    async def handler(ws: Any) -> None:
        await ws.send(ws.greeting())

    async with serving(api, handler, create_connection=MyConnection) as (_, url):
        async with connect(url) as ws:
            assert await ws.recv() == "hello from a subclass"


@pytest.mark.parametrize("lib", LIBS)
async def test_missing_names(lib: str) -> None:
    if lib == "websockets":
        from websockets.asyncio.server import basic_auth
    else:
        from fastws import basic_auth  # type: ignore[attr-defined]
    api = server_api(lib)
    async with serving(api, echo, process_request=basic_auth(credentials=("u", "p"))) as (server, url):
        assert server.get_loop() is asyncio.get_running_loop()
        with pytest.raises(InvalidStatus) as info:
            async with connect(url):
                pass
        assert info.value.response.status_code == 401
        async with connect(url.replace("ws://", "ws://u:p@")) as ws:
            await ws.send("in")
            assert await ws.recv() == "in"


@pytest.mark.parametrize("lib, logged", [("websockets", 1), ("fastws", 0)])
async def test_connection_closed_escaping_the_handler(lib: str, logged: int, caplog: pytest.LogCaptureFixture) -> None:
    """Deliberate difference: a ConnectionClosed that escapes the handler
    (e.g. ``gather(consumer, producer)`` when the client leaves) is a normal
    end for fastws; websockets logs "connection handler failed" with it."""
    api = server_api(lib)

    async def handler(ws: Any) -> None:
        await ws.recv()  # raises ConnectionClosedOK when the client leaves

    caplog.set_level(logging.INFO)
    async with serving(api, handler) as (_, url):
        async with connect(url):
            pass
        await asyncio.sleep(0.1)
    failed = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], api.ConnectionClosed)]
    assert len(failed) == logged


@pytest.mark.parametrize("lib, reason", [("websockets", ""), ("fastws", "internal error")])
async def test_handler_error_close_reason(lib: str, reason: str) -> None:
    """Deliberate difference: the 1011 close after a handler error carries
    the reason "internal error" in fastws, none in websockets."""
    api = server_api(lib)

    async def handler(ws: Any) -> None:
        raise RuntimeError("boom")

    logging.getLogger(api.logger_name).disabled = True
    try:
        async with serving(api, handler) as (_, url):
            async with connect(url) as ws:
                with pytest.raises(ConnectionClosedError):
                    await ws.recv()
            assert (ws.close_code, ws.close_reason) == (1011, reason)
    finally:
        logging.getLogger(api.logger_name).disabled = False


@pytest.mark.parametrize("lib", LIBS)
async def test_other_create_server_kwargs(lib: str) -> None:
    api = server_api(lib)
    async with serving(api, echo, flags=socket.AI_PASSIVE, ssl_handshake_timeout=None) as (_, url):
        async with connect(url) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"


def test_exception_names() -> None:
    import websockets.exceptions

    import fastws

    names = [
        "ConnectionClosed", "ConnectionClosedOK", "ConnectionClosedError", "InvalidHandshake", "InvalidOrigin",
        "InvalidUpgrade", "InvalidHeader", "InvalidHeaderValue", "NegotiationError", "PayloadTooBig",
        "ConcurrencyError", "WebSocketException",
    ]  # fmt: skip
    for name in names:
        theirs, ours = getattr(websockets.exceptions, name), getattr(fastws, name)
        assert issubclass(ours, fastws.WebSocketException), name
        # The same family tree where a program's except clauses rely on it.
        for base in ("ConnectionClosed", "InvalidHandshake", "InvalidHeader"):
            assert issubclass(theirs, getattr(websockets.exceptions, base)) == issubclass(ours, getattr(fastws, base)), (name, base)
    assert issubclass(fastws.ConcurrencyError, RuntimeError)


def test_invalid_upgrade_is_invalid_header() -> None:
    import fastws

    assert issubclass(fastws.InvalidUpgrade, fastws.InvalidHeader)


@pytest.mark.parametrize("lib", LIBS)
async def test_response_attribute(lib: str) -> None:
    api = server_api(lib)
    seen: list[Any] = []

    async def handler(ws: Any) -> None:
        seen.append((ws.response.status_code, ws.response.headers["Upgrade"].lower()))

    async with serving(api, handler) as (_, url):
        async with connect(url) as ws:
            with contextlib.suppress(ConnectionClosedOK, ConnectionClosedError):
                await ws.recv()
    assert seen == [(101, "websocket")]


@pytest.mark.parametrize("lib, cleaned_up", [("websockets", True), ("fastws", False)])
async def test_server_close_handler_wait_is_bounded(lib: str, cleaned_up: bool) -> None:
    """Deliberate difference: ``wait_closed()`` waits for handlers to return
    in both, but fastws gives up after ``close_timeout`` and cancels them
    (websockets waits as long as they take)."""
    api = server_api(lib)
    cleaned: list[str] = []

    async def handler(ws: Any) -> None:
        try:
            await echo(ws)
        finally:
            await asyncio.sleep(1.0)
            cleaned.append("done")

    async with api.serve(handler, "127.0.0.1", 0, close_timeout=0.2) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with connect(url) as ws:
            await ws.send("x")
            await ws.recv()
            start = time.monotonic()
            server.close()
            await asyncio.wait_for(server.wait_closed(), unit(10))
            took = time.monotonic() - start
    assert cleaned == (["done"] if cleaned_up else [])
    assert (took >= 1.0) if cleaned_up else (took < 1.0)


@pytest.mark.parametrize("lib, stays_open", [("websockets", True), ("fastws", False)])
async def test_broadcast_to_a_client_that_never_reads(lib: str, stays_open: bool) -> None:
    """Deliberate difference: broadcast never drops a message in either, but
    a client that lets more than ``max_write_buffer`` (16 MiB) pile up is
    disconnected by fastws; websockets buffers without a bound."""
    api = server_api(lib)
    connected: list[Any] = []

    async def handler(ws: Any) -> None:
        connected.append(ws)
        await ws.wait_closed()

    async with serving(api, handler, compression=None) as (_, url):
        async with connect(url, max_size=None, max_queue=1, compression=None) as ws:
            await eventually(lambda: connected)
            payload = os.urandom(2**20)
            for _ in range(40):
                api.broadcast(connected, payload)
                await asyncio.sleep(0)
            await asyncio.sleep(0.3)
            assert (connected[0].state.name == "OPEN") == stays_open
