"""What the restructure promised, seen by real clients (websockets, aiohttp).

- ``server_header`` is on every response, error responses included;
- the state a handler sees is the one public ``fastws.State``, at both levels;
- a handler's own methods cannot change how its connection closes (no
  duck-typed hooks): only what the face registers with the connection counts.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import fastws

from ..conftest import serving, unit
from .conftest import eventually

pytestmark = pytest.mark.timeout(30)


async def echo(ws: Any) -> None:
    async for message in ws:
        await ws.send(message)


@pytest.mark.parametrize("header", ["my-app/1.0", None])
async def test_server_header_on_refused_upgrade(header: str | None) -> None:
    async with serving(echo, origins=["https://ok.example"], server_header=header) as (_, url):
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, origin="https://evil.example"):  # type: ignore[arg-type]
                pass
    response = info.value.response
    assert response.status_code == 403
    assert response.headers.get("Server") == header


@pytest.mark.parametrize("header", ["my-app/1.0", None])
async def test_server_header_on_plain_http(header: str | None) -> None:
    async with serving(fastws.Handler, server_header=header) as (_, url):
        async with aiohttp.ClientSession() as session:
            async with session.get(url.replace("ws://", "http://") + "/x") as resp:
                assert resp.status == 426
                assert resp.headers.get("Server") == header
            # A malformed request (bad Sec-WebSocket-Version) gets its 426 with it too.
            headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "8"}
            async with session.get(url.replace("ws://", "http://"), headers=headers) as resp:
                assert resp.status == 426
                assert resp.headers.get("Sec-WebSocket-Version") == "13"
                assert resp.headers.get("Server") == header


@pytest.mark.parametrize("header", ["my-app/1.0", None])
async def test_server_header_on_101(header: str | None) -> None:
    async with serving(echo, server_header=header) as (_, url):
        async with connect(url) as ws:
            assert ws.response is not None
            assert ws.response.headers.get("Server") == header


async def test_callback_level_state_is_the_public_enum() -> None:
    seen: list[Any] = []

    class H(fastws.Handler):
        def on_connect(self, ws: fastws.Connection) -> None:
            seen.append(ws.state)

        def on_message(self, ws: fastws.Connection, data: bytes, is_text: bool) -> None:
            seen.append(ws.state)
            ws.close(fastws.CloseCode.GOING_AWAY, "bye")
            seen.append(ws.state)

        def on_close(self, ws: fastws.Connection, code: int, reason: str) -> None:
            seen.append(ws.state)
            seen.append(code)

    async with serving(H) as (_, url):
        async with connect(url) as ws:
            await ws.send("hi")
            await ws.wait_closed()
        await eventually(lambda: len(seen) == 5, what="on_close")
    assert seen[:4] == [fastws.State.OPEN, fastws.State.OPEN, fastws.State.CLOSING, fastws.State.CLOSED]
    assert all(s is getattr(fastws.State, s.name) for s in seen[:4])
    assert seen[4] == fastws.CloseCode.GOING_AWAY


async def test_coroutine_level_state_is_the_public_enum() -> None:
    seen: list[Any] = []

    async def handler(ws: fastws.ServerConnection) -> None:
        seen.append(ws.state)
        await ws.recv()
        await ws.close()
        seen.append(ws.state)

    async with serving(handler) as (_, url):
        async with connect(url) as ws:
            await ws.send("hi")
            await ws.wait_closed()
        await eventually(lambda: len(seen) == 2, what="handler end")
    assert seen[0] is fastws.State.OPEN
    assert seen[1] is fastws.State.CLOSED


async def test_handler_methods_named_like_old_hooks_change_nothing() -> None:
    """A handler that happens to define ``has_pending`` (returning True) or
    ``_fastws_bind`` once held its close back or replaced its connection."""
    closed: list[tuple[int, str]] = []
    bound: list[Any] = []

    class H(fastws.Handler):
        def has_pending(self) -> bool:
            return True

        def _fastws_bind(self, conn: Any) -> Any:
            bound.append(conn)
            return object()

        def on_message(self, ws: fastws.Connection, data: bytes, is_text: bool) -> None:
            ws.send(data, is_text)

        def on_close(self, ws: fastws.Connection, code: int, reason: str) -> None:
            closed.append((code, reason))

    async with serving(H, close_timeout=unit(10)) as (server, url):
        async with connect(url) as ws:
            await ws.send("ping")
            assert await ws.recv() == "ping"
            assert {type(c) for c in server.connections} == {fastws.Connection}
            started = time.monotonic()
            await ws.close(1000, "done")
        # The close is answered at once, not after close_timeout.
        assert time.monotonic() - started < unit(2)
        await eventually(lambda: closed == [(1000, "done")], what="on_close")
    assert bound == []


async def test_user_error_in_select_subprotocol_is_an_http_500() -> None:
    def select(ws: Any, offered: Any) -> str:
        raise RuntimeError("boom")

    async with serving(echo, select_subprotocol=select) as (_, url):
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, subprotocols=["chat"]):  # type: ignore[list-item]
                pass
    assert info.value.response.status_code == 500


async def test_broadcast_reaches_both_levels_through_the_declared_interface() -> None:
    joined: list[Any] = []
    ready = asyncio.Event()

    class H(fastws.Handler):
        def on_connect(self, ws: fastws.Connection) -> None:
            joined.append(ws)
            if len(joined) == 2:
                ready.set()

        def on_message(self, ws: fastws.Connection, data: bytes, is_text: bool) -> None:
            pass

    async def coro(ws: fastws.ServerConnection) -> None:
        joined.append(ws)
        if len(joined) == 2:
            ready.set()
        await ws.wait_closed()

    async with serving(H) as (_, url1), serving(coro) as (_, url2):
        async with connect(url1) as a, connect(url2) as b:
            await asyncio.wait_for(ready.wait(), unit(5))
            fastws.broadcast(joined, "hello all")
            assert await asyncio.wait_for(a.recv(), unit(5)) == "hello all"
            assert await asyncio.wait_for(b.recv(), unit(5)) == "hello all"
