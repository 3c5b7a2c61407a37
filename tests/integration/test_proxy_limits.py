"""Behind a proxy and under load: the real client address from trusted
forwarding headers (``proxy_headers``, ``forwarded_allow_ips``), and the
connection limits (``limit_concurrency`` answers 503, ``limit_per_ip``
429), at both API levels and from the CLI, with real clients.

Clients pick their source address on loopback (``local_addr``: Linux
routes all of 127/8 to lo), so "different clients" are really different
peers to the server. nginx in front is in ``test_nginx.py``.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from fastws import Handler

from ..conftest import ServerProcess, serving, unit
from .conftest import run_cli

pytestmark = pytest.mark.timeout(60)


class WhoAmI(Handler):
    """Callback level: says who the server thinks the client is, then echoes."""

    def on_connect(self, ws: Any) -> None:
        ws.send(f"{ws.remote_address[0]} {ws.remote_address[1]} {ws.scheme}")

    def on_message(self, ws: Any, data: bytes, is_text: bool) -> None:
        ws.send(data, text=is_text)


async def who_am_i(ws: Any) -> None:
    """Coroutine level: the same."""
    await ws.send(f"{ws.remote_address[0]} {ws.remote_address[1]} {ws.scheme}")
    async for message in ws:
        await ws.send(message)


HANDLERS = pytest.mark.parametrize("handler", [WhoAmI, who_am_i], ids=["callback", "coroutine"])


async def seen_as(url: str, headers: list[tuple[str, str]] | None = None, source: str = "127.0.0.1") -> str:
    async with connect(url, additional_headers=headers, local_addr=(source, 0)) as ws:
        return str(await ws.recv())


@HANDLERS
async def test_forwarded_client_from_a_trusted_proxy(handler: Any) -> None:
    # 127.0.0.1 is trusted by default (uvicorn's default, plus ::1).
    async with serving(handler) as (_, url):
        host, port, scheme = (await seen_as(url)).split()
        assert (host, scheme) == ("127.0.0.1", "ws") and int(port) > 0
        xff = [("X-Forwarded-For", "6.6.6.6, 203.0.113.7"), ("X-Forwarded-Proto", "https")]
        assert await seen_as(url, xff) == "203.0.113.7 0 wss"
        rfc = [("Forwarded", 'for="[2001:db8::7]:4711";proto=https')]
        assert await seen_as(url, rfc) == "2001:db8::7 4711 wss"


@HANDLERS
@pytest.mark.parametrize("options", [{"forwarded_allow_ips": ["10.9.9.9"]}, {"proxy_headers": False}], ids=["untrusted", "off"])
async def test_forwarding_headers_ignored_unless_trusted(handler: Any, options: dict[str, Any]) -> None:
    async with serving(handler, **options) as (_, url):
        seen = await seen_as(url, [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https")])
        host, port, scheme = seen.split()
        assert (host, scheme) == ("127.0.0.1", "ws") and int(port) > 0


async def test_networks_are_trusted(caplog: pytest.LogCaptureFixture) -> None:
    async with serving(WhoAmI, forwarded_allow_ips=["127.0.0.0/8"], access_log=True) as (_, url):
        with caplog.at_level(logging.INFO, logger="fastws.access"):
            xff = [("X-Forwarded-For", "203.0.113.7, 127.0.0.9")]
            assert await seen_as(url, xff, source="127.0.0.5") == "203.0.113.7 0 ws"
    # The access log names the real client, not the proxy.
    opened = [r.getMessage() for r in caplog.records if '" 101' in r.getMessage()]
    assert opened and "203.0.113.7" in opened[0] and "127.0.0.5" not in opened[0], opened


async def status_of(url: str, source: str = "127.0.0.1", headers: list[tuple[str, str]] | None = None) -> tuple[int, Any]:
    """101, or the refusal's status and (case-insensitive) headers."""
    try:
        async with connect(url, local_addr=(source, 0), additional_headers=headers) as ws:
            await ws.recv()
            return 101, {}
    except InvalidStatus as exc:
        return exc.response.status_code, exc.response.headers


async def hold(stack: AsyncExitStack, url: str, source: str = "127.0.0.1", headers: list[tuple[str, str]] | None = None) -> ClientConnection:
    ws = await stack.enter_async_context(connect(url, local_addr=(source, 0), additional_headers=headers))
    await ws.recv()  # the greeting: the upgrade went through
    return ws


@HANDLERS
async def test_limit_concurrency_answers_503_and_frees_slots(handler: Any) -> None:
    async with serving(handler, limit_concurrency=2) as (server, url):
        async with AsyncExitStack() as stack:
            first = await hold(stack, url)
            await hold(stack, url, "127.0.0.2")
            status, headers = await status_of(url, "127.0.0.3")
            assert status == 503 and headers.get("Retry-After") == "1"
            await first.close()
            await asyncio.sleep(unit(0.2))  # the server sees the close
            assert (await status_of(url, "127.0.0.3"))[0] == 101


@HANDLERS
async def test_limit_per_ip_answers_429_per_address(handler: Any) -> None:
    async with serving(handler, limit_per_ip=2) as (_, url):
        async with AsyncExitStack() as stack:
            await hold(stack, url, "127.0.0.2")
            second = await hold(stack, url, "127.0.0.2")
            status, headers = await status_of(url, "127.0.0.2")
            assert status == 429 and headers.get("Retry-After") == "1"
            # Another address is not affected.
            assert (await status_of(url, "127.0.0.3"))[0] == 101
            await second.close()
            await asyncio.sleep(unit(0.2))
            assert (await status_of(url, "127.0.0.2"))[0] == 101


async def test_limit_per_ip_counts_the_real_client_behind_a_proxy() -> None:
    async with serving(WhoAmI, limit_per_ip=1) as (_, url):
        async with AsyncExitStack() as stack:
            await hold(stack, url, headers=[("X-Forwarded-For", "203.0.113.7")])
            # Same proxy, another client: let in; same client again: 429.
            await hold(stack, url, headers=[("X-Forwarded-For", "203.0.113.8")])
            assert (await status_of(url, headers=[("X-Forwarded-For", "203.0.113.7")]))[0] == 429


async def test_limits_with_the_aiohttp_client() -> None:
    async with serving(WhoAmI, limit_concurrency=1) as (_, url):
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url) as ws:
                assert (await ws.receive_str()).startswith("127.0.0.1 ")
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(url)
                assert refused.value.status == 503


def test_cli_flags(tmp_path: Any) -> None:
    (tmp_path / "whoami.py").write_text(
        "async def handler(ws):\n"
        "    await ws.send(f'{ws.remote_address[0]} {ws.scheme}')\n"
        "    async for m in ws:\n"
        "        await ws.send(m)\n"
    )

    async def check(port: int, trusted: bool) -> None:
        url = f"ws://127.0.0.1:{port}"
        xff = [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https")]
        assert await seen_as(url, xff) == ("203.0.113.7 wss" if trusted else "127.0.0.1 ws")
        async with AsyncExitStack() as stack:
            await hold(stack, url, "127.0.0.2")
            assert (await status_of(url, "127.0.0.2"))[0] == 429
            await hold(stack, url, "127.0.0.3")
            assert (await status_of(url, "127.0.0.4"))[0] == 503

    cases = [
        ([], {}, True),
        (["--no-proxy-headers"], {}, False),
        (["--forwarded-allow-ips", "10.0.0.0/8"], {}, False),
        ([], {"FORWARDED_ALLOW_IPS": "10.0.0.0/8"}, False),
        (["--forwarded-allow-ips", "*"], {"FORWARDED_ALLOW_IPS": "10.0.0.0/8"}, True),  # the flag wins
    ]
    for flags, env, trusted in cases:
        args = ["whoami:handler", "--limit-per-ip", "1", "--limit-concurrency", "2", *flags]
        with ServerProcess(*args, cwd=tmp_path, env=env) as server:
            asyncio.run(check(server.port, trusted))


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--forwarded-allow-ips", "localhost"], ["--forwarded-allow-ips", "'localhost'"]),
        (["--limit-concurrency", "0"], ["--limit-concurrency", "at least 1"]),
        (["--limit-per-ip", "-3"], ["--limit-per-ip", "at least 1"]),
    ],
)
def test_cli_bad_values_are_one_line_errors(flags: list[str], words: list[str]) -> None:
    result = run_cli("serve", *flags)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fastws: error:"), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
