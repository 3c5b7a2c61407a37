"""Origins (cross-site WebSocket hijacking defence) at both API levels and
from the CLI: a listed Origin is let in, any other gets 403, and a request
without Origin only when the list holds None (``none`` on the command line).
Driven by the websockets client, which sends the Origin it is given."""

from __future__ import annotations

from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import fastws
from fastws.demo import EchoHandler

from ..conftest import ServerProcess, serving

pytestmark = pytest.mark.timeout(60)

ALLOWED = "https://a.example"


async def echo(ws: Any) -> None:
    async for message in ws:
        await ws.send(message)


async def outcome(url: str, origin: str | None) -> int:
    """101 if the upgrade went through (and echoes), else the HTTP status."""
    try:
        async with connect(url, origin=origin) as ws:  # type: ignore[arg-type]
            await ws.send("hi")
            assert await ws.recv() == "hi"
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


@pytest.mark.parametrize("handler", [EchoHandler, echo], ids=["callback", "coroutine"])
@pytest.mark.parametrize(
    "origins, expected",
    [
        ([ALLOWED], {ALLOWED: 101, "https://evil.example": 403, None: 403}),
        ([ALLOWED, None], {ALLOWED: 101, "https://evil.example": 403, None: 101}),
        (None, {ALLOWED: 101, "https://evil.example": 101, None: 101}),
    ],
    ids=["listed", "listed-or-none", "off"],
)
async def test_origins_at_both_levels(handler: Any, origins: Any, expected: dict[str | None, int]) -> None:
    async with serving(handler, origins=origins) as (_, url):
        for origin, status in expected.items():
            assert await outcome(url, origin) == status, origin


@pytest.mark.parametrize(
    "flag, expected",
    [
        (ALLOWED, {ALLOWED: 101, "https://b.example": 403, None: 403}),
        (f"{ALLOWED},https://b.example,none", {ALLOWED: 101, "https://b.example": 101, None: 101, "https://c.example": 403}),
    ],
    ids=["one", "two-and-none"],
)
async def test_cli_origins(flag: str, expected: dict[str | None, int]) -> None:
    server = ServerProcess("--origins", flag).start()
    try:
        for origin, status in expected.items():
            assert await outcome(server.url, origin) == status, (origin, server.output)
    finally:
        assert server.stop() == 0, server.output
    assert "403 (origin 'https://" in server.output or all(s == 101 for s in expected.values())


def test_a_single_origin_string_is_refused() -> None:
    with pytest.raises(TypeError, match="list of origins"):
        fastws.Config(origins="https://a.example")  # type: ignore[arg-type]
