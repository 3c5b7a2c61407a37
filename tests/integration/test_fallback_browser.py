"""fastws.js in a real browser (Debian's chromium, driven by Playwright),
directly and through nginx configured the ways that break WebSockets.

- The demo page over WebSocket (nothing in the way).
- Through an nginx that does not pass the upgrade (no ``Upgrade`` /
  ``Connection`` headers configured): the WebSocket is refused, and the
  client falls back to SSE + POST (nginx honours ``X-Accel-Buffering: no``).
- Through an nginx that buffers responses and ignores ``X-Accel-Buffering``:
  no SSE event gets through in time, so the client falls back to polling.
- 10,000 numbered messages each way over SSE while the server kills the SSE
  stream in the middle: both sides get every number once, in order.

Each nginx is a non-daemon of its own on a free loopback port (see
test_nginx.py). Without chromium or nginx the tests are skipped, unless
CI=true: then they fail.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import fastws
from fastws.demo import EchoHandler
from fastws.protocol.http import make_response

from ..conftest import unit
from .conftest import eventually, free_port
from .test_nginx import Nginx, nginx_binary

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)

try:
    from playwright.async_api import async_playwright
except ImportError:  # pragma: no cover - depends on the environment
    async_playwright = None

_MISSING = CHROMIUM is None or async_playwright is None
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(_MISSING and os.environ.get("CI") != "true", reason="needs chromium and playwright"),
]

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]

#: nginx that proxies HTTP but was never told about WebSockets: it drops
#: the hop-by-hop Upgrade header, so fastws sees a plain GET (426).
NO_UPGRADE = """\
server {{
    listen 127.0.0.1:{port};
    location / {{
        proxy_pass http://127.0.0.1:{upstream};
        proxy_http_version 1.1;
    }}
}}
"""

#: nginx that buffers every response whole-buffer-at-a-time and ignores
#: X-Accel-Buffering: an SSE event sits in its 64 KiB buffer.
BUFFERING = """\
server {{
    listen 127.0.0.1:{port};
    location / {{
        proxy_pass http://127.0.0.1:{upstream};
        proxy_http_version 1.1;
        proxy_buffering on;
        proxy_ignore_headers X-Accel-Buffering;
        proxy_buffer_size 64k;
        proxy_buffers 8 64k;
        proxy_busy_buffers_size 128k;
    }}
}}
"""

#: A page that runs the counting exchange of the last test.
COUNT_PAGE = """<!doctype html><meta charset="utf-8"><title>count</title>
<script type="module">
import { FastWS } from "/fastws.js";
const N = %d;
window.got = [];
window.sent = 0;
const ws = new FastWS("/count", { transports: ["sse"] });
ws.onmessage = (event) => { window.got.push(Number(event.data)); };
ws.onopen = () => {
  window.transport = ws.transport;
  // Up: N numbered messages, a few at a time so they travel in many POSTs.
  const pump = () => {
    for (let i = 0; i < 50 && window.sent < N; i++) ws.send(String(++window.sent));
    if (window.sent < N) setTimeout(pump, 1);
  };
  pump();
};
</script>
"""

N = 10_000


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    if _MISSING:
        pytest.fail("chromium and playwright are needed (CI=true): apt-get install chromium; pip install playwright")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True, timeout=unit(30) * 1000)
        try:
            yield browser
        finally:
            await browser.close()


async def demo_transport(browser: Any, url: str) -> tuple[str, Any]:
    """Open the demo page at ``url``; the transport it settles on, and the page."""
    page = await browser.new_page()
    await page.goto(url, timeout=unit(15) * 1000)
    await page.wait_for_function(
        "['websocket', 'sse', 'polling'].includes(document.querySelector('#transport').textContent)",
        timeout=unit(20) * 1000,
    )
    return await page.locator("#transport").text_content(), page


async def echo_works(page: Any, text: str) -> None:
    await page.fill("#echo-input", text)
    await page.click("#echo-send")
    await page.wait_for_function(
        "text => document.querySelector('#echo-log').textContent.includes(text)", arg=text, timeout=unit(10) * 1000
    )


async def chat_between(first: Any, second: Any, text: str) -> None:
    """A chat line typed in one tab shows in both (rooms across sessions)."""
    await first.fill("#chat-input", text)
    await first.click("#chat-send")
    for page in (first, second):
        await page.wait_for_function(
            "text => [...document.querySelectorAll('#chat-log li')].some(li => li.textContent.includes(text))",
            arg=text,
            timeout=unit(10) * 1000,
        )


async def test_demo_page_over_websocket(chromium: Any) -> None:
    async with fastws.serve(EchoHandler, "127.0.0.1", 0, fallback=True) as server:
        port = server.sockets[0].getsockname()[1]
        transport, page = await demo_transport(chromium, f"http://127.0.0.1:{port}/")
        assert transport == "websocket"
        await echo_works(page, "h\u00e9llo over websocket")
        await page.wait_for_function("Number(document.querySelector('#rtt').textContent) >= 0", timeout=unit(10) * 1000)
        other = await chromium.new_page()
        await other.goto(f"http://127.0.0.1:{port}/?transport=sse")
        await other.wait_for_function("document.querySelector('#transport').textContent === 'sse'", timeout=unit(20) * 1000)
        await chat_between(page, other, "a chat line from the websocket tab")
        await chat_between(other, page, "and one from the sse tab")


async def behind(tmp_path: Path, site: str, upstream: int) -> Nginx:
    nginx_binary()  # skips or fails (CI) without nginx
    port = free_port()
    return await asyncio.to_thread(Nginx, tmp_path / "nginx", site.format(port=port, upstream=upstream), port)


async def test_nginx_without_upgrade_falls_back_to_sse(chromium: Any, tmp_path: Path) -> None:
    async with fastws.serve(EchoHandler, "127.0.0.1", 0, fallback=True) as server:
        upstream = server.sockets[0].getsockname()[1]
        nginx = await behind(tmp_path, NO_UPGRADE, upstream)
        try:
            transport, page = await demo_transport(chromium, f"http://127.0.0.1:{nginx.port}/")
            assert transport == "sse", nginx.logs()
            await echo_works(page, "through nginx, over SSE + POST")
            assert all(conn.transport_name == "sse" for conn in server.connections)
        finally:
            await asyncio.to_thread(nginx.stop)


async def test_buffering_nginx_falls_back_to_polling(chromium: Any, tmp_path: Path) -> None:
    async with fastws.serve(EchoHandler, "127.0.0.1", 0, fallback=True) as server:
        upstream = server.sockets[0].getsockname()[1]
        nginx = await behind(tmp_path, BUFFERING, upstream)
        try:
            transport, page = await demo_transport(chromium, f"http://127.0.0.1:{nginx.port}/")
            assert transport == "polling", nginx.logs()
            await echo_works(page, "through a buffering nginx, by long polling")
            await eventually(lambda: any(conn.transport_name == "polling" for conn in server.connections), what="a polling session")
        finally:
            await asyncio.to_thread(nginx.stop)


async def test_ten_thousand_each_way_across_a_killed_sse_stream(chromium: Any) -> None:
    received: list[int] = []
    sent_down = asyncio.Event()

    async def count(ws: Any) -> None:
        async def down() -> None:
            for i in range(1, N + 1):
                await ws.send(str(i))  # waits while the client has not acked enough
            sent_down.set()

        task = asyncio.ensure_future(down())
        try:
            async for message in ws:
                received.append(int(message))
        finally:
            task.cancel()

    async def page(conn: Any, request: Any) -> Any:
        if request.path == "/count.html":
            return make_response(200, COUNT_PAGE % N, content_type="text/html; charset=utf-8")
        return None

    async with fastws.serve(count, "127.0.0.1", 0, fallback=True, process_request=page) as server:
        port = server.sockets[0].getsockname()[1]
        tab = await chromium.new_page()
        await tab.goto(f"http://127.0.0.1:{port}/count.html")
        await tab.wait_for_function("window.got.length > 3000 && window.sent > 3000", timeout=unit(60) * 1000)
        # Kill the SSE stream under the session, as a proxy that drops it would.
        fallback = server._context.fallback  # the test looks inside on purpose
        (session,) = fallback.sessions.values()
        assert session.stream is not None and session.stream.name == "sse"
        session.stream.transport.abort()
        await tab.wait_for_function(f"window.got.length >= {N}", timeout=unit(90) * 1000)
        try:
            await eventually(lambda: len(received) >= N, timeout=unit(60), what=f"{N} messages up")
        except AssertionError:
            raise AssertionError(
                f"{len(received)} messages up of {await tab.evaluate('window.sent')} sent; "
                f"last {received[-3:]}, session received {session.received}"
            ) from None
        got = await tab.evaluate("window.got")
        assert got == list(range(1, N + 1)), [x for i, x in enumerate(got) if x != i + 1][:10]
        assert received == list(range(1, N + 1)), [x for i, x in enumerate(received) if x != i + 1][:10]
        assert await tab.evaluate("window.transport") == "sse"
        assert sent_down.is_set()
