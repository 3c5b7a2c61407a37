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
    pytest.mark.timeout(60),
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"),
    pytest.mark.skipif(async_playwright is None, reason="playwright is not installed (pip install playwright)"),
]

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


async def type_and_see_echo(page: Any, message: str) -> None:
    """Send ``message`` with the demo page's form; wait until its log shows
    it sent ("> ") and echoed ("< ")."""
    await page.fill("#text", message)
    await page.click("#send")
    await page.wait_for_function(
        "text => [...document.querySelectorAll('#log div')].some(d => d.textContent === '< ' + text)",
        arg=message,
    )
    lines = await page.locator("#log div").all_text_contents()
    assert "> " + message in lines
    assert "< " + message in lines


async def test_demo_page_echoes_in_chromium() -> None:
    handler, log = recording(EchoHandler)
    async with serving(handler) as (server, url):
        http_url = url.replace("ws://", "http://") + "/"
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True, timeout=unit(30) * 1000)
            try:
                page = await browser.new_page()
                page.set_default_timeout(unit(15) * 1000)
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                response = await page.goto(http_url)
                assert response is not None and response.status == 200
                await page.wait_for_function("document.getElementById('status').textContent === 'open'")
                await eventually(lambda: log.conns, what="the page's WebSocket to connect")
                # The page connected back over WebSocket, as a browser does.
                request = log.conns[0].request
                assert request.path == "/echo"
                assert request.headers["Origin"] == http_url.rstrip("/")
                assert "Chrome" in request.headers["User-Agent"]

                message = "h\u00e9llo from chromium \u2603"
                await type_and_see_echo(page, message)
                assert log.of("message") == [("message", message.encode(), True)]

                # Big and binary messages straight from the page's script.
                echoed = await page.evaluate(
                    """async () => {
                        const ws = new WebSocket(location.href.replace('http', 'ws') + 'raw');
                        ws.binaryType = 'arraybuffer';
                        await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = fail; });
                        const got = [];
                        const done = new Promise(ok => { ws.onmessage = e => { got.push(e.data); if (got.length === 2) ok(); }; });
                        ws.send('x'.repeat(200000));
                        ws.send(new Uint8Array([0, 1, 2, 255]).buffer);
                        await done;
                        const closed = new Promise(ok => { ws.onclose = e => ok(e.code); });
                        ws.close(4321, 'bye');
                        return [got[0].length, Array.from(new Uint8Array(got[1])), await closed];
                    }"""
                )
                assert echoed == [200000, [0, 1, 2, 255], 4321]
                assert errors == []
            finally:
                await browser.close()
        await eventually(lambda: len(log.closes()) == 2, what="both browser sockets to close")
    assert (4321, "bye") in log.closes()
    # The page's socket went away with the browser: 1001 (going away) or,
    # if the browser was faster than its close frame, 1006.
    other = [c for c, _ in log.closes() if c != 4321]
    assert other and other[0] in (1001, 1006), log.closes()
