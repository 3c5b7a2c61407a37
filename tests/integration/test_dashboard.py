"""The live dashboard (``fastws serve --dashboard``) in a real browser.

The bundled demo runs as a user starts it, with ``--dashboard``; Debian's
chromium, driven by Playwright, opens ``/fastws/dashboard`` and must show
the server's figures as they change: WebSocket clients (the ``websockets``
library) come and go, and the page's open-connection count and path table
follow, from the JSON the server pushes every second. Then a server with
``--dashboard-token`` refuses the page without the token and serves it with.

The page's own WebSocket is a connection like any other, so counts are
checked relative to what the page shows before the clients connect.

Needs chromium and playwright (never ``playwright install``); when one is
missing the browser tests are skipped with the reason, except under
``CI=true``, where they fail. A screenshot of the page with clients
connected is saved to ``tests/artifacts/dashboard.png``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from ..conftest import ROOT, ServerProcess, unit
from .conftest import cli_codec
from .test_browser import ARGS, CHROMIUM, async_playwright

pytestmark = pytest.mark.timeout(int(unit(90)))

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ARTIFACTS = Path(ROOT) / "tests" / "artifacts"
TOKEN = "s3cret"
PAGE = "/fastws/dashboard"

# The text of an element, or None when it is not there.
TEXT = "id => { const e = document.getElementById(id); return e ? e.textContent : null; }"
# Whether the #paths table lists a path (its first column, exactly).
HAS_PATH = "path => [...document.querySelectorAll('#paths tr td:first-child')].some(td => td.textContent === path)"


def need_browser() -> None:
    """Skip without chromium or playwright (fail under CI=true, where .ci/run
    installs them)."""
    for tool, what in ((CHROMIUM, "chromium (apt-get install -y chromium)"),
                       (async_playwright, "playwright (pip install playwright)")):  # fmt: skip
        if tool is None:
            message = f"{what} is needed for the dashboard browser tests"
            if IN_CI:
                pytest.fail(message + " (CI=true: .ci/run installs it)")
            pytest.skip(message)


def dashboard_server(*args: str) -> Iterator[ServerProcess]:
    """The bundled demo with the dashboard on, from the command line."""
    server = ServerProcess("--dashboard", *args, "--port", "0", codec=cli_codec()).start()
    try:
        yield server
    finally:
        assert server.stop() == 0, server.output
    assert "Traceback" not in server.output, server.output


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    yield from dashboard_server()


@pytest.fixture(scope="module")
def token_server() -> Iterator[ServerProcess]:
    yield from dashboard_server("--dashboard-token", TOKEN)


def http_get(url: str) -> tuple[int, bytes]:
    """Status and body of a plain GET (blocking)."""
    try:
        with urllib.request.urlopen(url, timeout=unit(10)) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class Browser:
    """A headless chromium page that records what would be a bug on it:
    console errors, uncaught exceptions, requests to other origins."""

    def __init__(self, page: Any, origin: str) -> None:
        self.page = page
        self.origin = origin
        self.problems: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("request", self._request)

    def _console(self, msg: Any) -> None:
        if msg.type == "error":
            self.problems.append(f"console.error: {msg.text}")

    def _request(self, request: Any) -> None:
        if not request.url.startswith(self.origin + "/"):
            self.problems.append(f"request to {request.url}")

    async def text(self, id: str) -> str | None:
        text: str | None = await self.page.evaluate(TEXT, id)
        return text

    async def wait_text(self, id: str, expected: str) -> None:
        try:
            await self.page.wait_for_function(f"([id, text]) => ({TEXT})(id) === text", arg=[id, expected])
        except Exception as exc:
            raise AssertionError(f"#{id} shows {await self.text(id)!r}, not {expected!r}; {self.problems}") from exc

    async def connections(self) -> int:
        text = await self.text("connections")
        assert text is not None and text.isdigit(), text
        return int(text)


@contextlib.asynccontextmanager
async def chromium(origin: str) -> AsyncIterator[Browser]:
    """Debian's chromium, headless; yields a new page."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True, timeout=unit(30) * 1000)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(unit(15) * 1000)
            yield Browser(page, origin)
        finally:
            await browser.close()


async def test_dashboard_follows_connections_in_chromium(server: ServerProcess) -> None:
    need_browser()
    origin = f"http://127.0.0.1:{server.port}"
    async with chromium(origin) as browser:
        page = browser.page
        response = await page.goto(origin + PAGE)
        assert response is not None and response.status == 200
        assert response.headers["content-type"].startswith("text/html")
        await browser.wait_text("status", "connected")
        # The page's own socket is the only connection, and it is counted.
        await browser.wait_text("connections", "1")
        assert await browser.text("workers") == "1"
        assert re.fullmatch(r"(\d+m )?\d+s", await browser.text("uptime") or ""), await browser.text("uptime")
        workers = await page.locator("#per-worker tr").count()
        assert workers == 1
        pid = await page.locator("#per-worker tr td").nth(1).text_content()
        assert pid == str(server.proc.pid if server.proc else None)

        base = await browser.connections()
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(connect(server.url + "/some/path")) for _ in range(5)]
            for i, ws in enumerate(clients):
                await ws.send(f"hello {i}")
                assert await asyncio.wait_for(ws.recv(), unit(5)) == f"hello {i}"
            await browser.wait_text("connections", str(base + 5))
            await page.wait_for_function(HAS_PATH, arg="/some/path")
            # The five echoes went through: messages in and out were counted
            # (charts.messages holds the page's points: in, out).
            await page.wait_for_function("() => charts.messages.values.every(points => Math.max(...points) > 0)")

            for ws in clients[:3]:
                await ws.close()
            await browser.wait_text("connections", str(base + 2))
            # Each client closed with 1000 and the server answered 1000: a row
            # of code, meaning, sent, received.
            await page.wait_for_function(
                """() => [...document.querySelectorAll('#close-codes tr')].some(tr =>
                    tr.cells[0].textContent === '1000' && +tr.cells[2].textContent >= 3 && +tr.cells[3].textContent >= 3)"""
            )

            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        await browser.wait_text("connections", str(base))
        assert browser.problems == []


async def test_dashboard_token_is_required(token_server: ServerProcess) -> None:
    origin = f"http://127.0.0.1:{token_server.port}"
    for path in (PAGE, PAGE + "?token=wrong", PAGE + "?token=", PAGE + "?token=s3cre"):
        status, body = await asyncio.to_thread(http_get, origin + path)
        assert status == 403, (path, status, body)
        assert b"<html" not in body and b"FastwsChart" not in body, (path, body)
    status, body = await asyncio.to_thread(http_get, origin + PAGE + "?token=" + TOKEN)
    assert status == 200 and b"fastws dashboard" in body, (status, body[:200])
    # The chart code is static, with nothing secret: served to anyone.
    status, body = await asyncio.to_thread(http_get, origin + PAGE + "/chart.js")
    assert status == 200 and b"FastwsChart" in body, (status, body[:200])

    # The feed's socket too.
    with pytest.raises(InvalidStatus) as refused:
        async with connect(token_server.url + PAGE + "/ws"):
            pass
    assert refused.value.response.status_code == 403
    async with connect(token_server.url + PAGE + "/ws?token=" + TOKEN) as ws:
        assert '"connections"' in await asyncio.wait_for(ws.recv(), unit(5))


async def test_dashboard_with_token_loads_and_connects_in_chromium(token_server: ServerProcess) -> None:
    need_browser()
    origin = f"http://127.0.0.1:{token_server.port}"
    async with chromium(origin) as browser:
        page = browser.page
        response = await page.goto(origin + PAGE + "?token=" + TOKEN)
        assert response is not None and response.status == 200
        await browser.wait_text("status", "connected")
        await page.wait_for_function("() => /^[0-9]+$/.test(document.getElementById('connections').textContent)")
        assert await browser.connections() >= 1
        # The token is not shown back on the page (e.g. in the paths table).
        assert TOKEN not in await page.inner_text("body")
        assert browser.problems == []
