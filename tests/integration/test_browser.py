"""A real browser (Debian's chromium, driven by Playwright) uses the demo page.

Needs ``apt-get install chromium`` and ``pip install playwright`` (never
``playwright install``: the system chromium is used). Skipped, with the
reason, only when one of them is missing.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

from fastws.demo import EchoHandler

from ..conftest import serving, unit
from .conftest import eventually, recording

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)

try:
    from playwright.async_api import async_playwright
except ImportError:  # pragma: no cover - depends on the environment
    async_playwright = None

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"),
    pytest.mark.skipif(async_playwright is None, reason="playwright is not installed (pip install playwright)"),
]

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


async def open_demo(browser: Any, url: str, transport: str, errors: list[str]) -> Any:
    """The demo page at ``url``, once it shows ``transport`` and a round trip."""
    page = await browser.new_page()
    page.set_default_timeout(unit(15) * 1000)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    response = await page.goto(url)
    assert response is not None and response.status == 200
    await page.wait_for_function("t => document.getElementById('transport').textContent === t", arg=transport)
    await page.wait_for_function("() => parseFloat(document.getElementById('rtt').textContent) >= 0")
    return page


async def type_and_see_echo(page: Any, message: str) -> None:
    """Send ``message`` with the demo page's echo box; wait until it comes back."""
    await page.fill("#echo-input", message)
    await page.click("#echo-send")
    await page.wait_for_function(
        "text => [...document.querySelectorAll('#echo-log li')].some(li => li.textContent === text)", arg=message
    )


async def test_demo_page_in_chromium_over_every_transport() -> None:
    handler, log = recording(EchoHandler)
    async with serving(handler, fallback=True) as (server, url):
        http_url = url.replace("ws://", "http://") + "/"
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True, timeout=unit(30) * 1000)
            try:
                errors: list[str] = []
                page = await open_demo(browser, http_url, "websocket", errors)
                await eventually(lambda: log.conns, what="the page's connection")
                # The page connected back with fastws.js, over WebSocket, as a browser does.
                request = log.conns[0].request
                assert request.path == "/demo"
                assert request.headers["Origin"] == http_url.rstrip("/")
                assert "Chrome" in request.headers["User-Agent"]
                assert log.conns[0].transport_name == "websocket"

                message = "h\u00e9llo from chromium \u2603"
                await type_and_see_echo(page, message)
                assert ("message", message.encode(), True) in log.of("message")  # beside the rtt: pings

                # Big and binary messages straight from the page's script.
                echoed = await page.evaluate(
                    """async () => {
                        const ws = new WebSocket(location.href.replace('http', 'ws') + 'raw');
                        ws.binaryType = 'arraybuffer';
                        await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = fail; });
                        const got = [];
                        const done = new Promise(ok => { ws.onmessage = e => { if (typeof e.data !== 'string' || !e.data.startsWith('chat:')) got.push(e.data); if (got.length === 2) ok(); }; });
                        ws.send('x'.repeat(200000));
                        ws.send(new Uint8Array([0, 1, 2, 255]).buffer);
                        await done;
                        const closed = new Promise(ok => { ws.onclose = e => ok(e.code); });
                        ws.close(4321, 'bye');
                        return [got[0].length, Array.from(new Uint8Array(got[1])), await closed];
                    }"""
                )
                assert echoed == [200000, [0, 1, 2, 255], 4321]

                # The same page over the HTTP fallback, and a chat between the three tabs.
                sse = await open_demo(browser, http_url + "?transport=sse", "sse", errors)
                polling = await open_demo(browser, http_url + "?transport=polling", "polling", errors)
                for tab in (sse, polling):
                    await type_and_see_echo(tab, message)
                assert sorted(c.transport_name for c in log.conns) == ["polling", "sse", "websocket", "websocket"]
                await polling.fill("#chat-input", "hi from polling")
                await polling.click("#chat-send")
                for tab in (page, sse, polling):
                    await tab.wait_for_function(
                        "() => [...document.querySelectorAll('#chat-log li')].some(li => li.textContent === 'hi from polling')"
                    )
                assert errors == []
                # Leaving a page ends its fallback session at once (a beacon), not after fallback_timeout.
                for tab in (sse, polling):
                    await tab.goto("about:blank")
            finally:
                await browser.close()
        await eventually(lambda: len(log.closes()) == 4, what="every browser connection to close")
    closes = log.closes()
    assert (4321, "bye") in closes
    assert closes.count((1001, "")) >= 2, closes  # the two sessions, by beacon
    # The page's socket went away with the browser: 1001 (going away) or,
    # if the browser was faster than its close frame, 1006.
    other = [c for c, _ in closes if c not in (4321,)]
    assert all(c in (1001, 1006) for c in other), closes
