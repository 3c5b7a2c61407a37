"""``/healthz`` and ``/readyz`` (issue 11): on the main port by default at
both API levels, off with ``--no-health``, and on ``--metrics-port`` through
a graceful drain, where ``/readyz`` turns 503 while ``/healthz`` stays 200.

Probes are aiohttp requests, WebSocket clients the ``websockets`` library;
servers are in-process (``serving``) or ``python -m fastws serve``.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect

from ..conftest import UPGRADE, handshake, raw_connect, serving, unit
from .conftest import CliProcess, free_port
from .test_metrics import CLIENT, HANDLERS, http_get, http_url, scrape, total

pytestmark = pytest.mark.timeout(int(unit(40)))

PLAIN = "text/plain; charset=utf-8"


@HANDLERS
async def test_healthz_and_readyz_on_the_main_port_by_default(handler: Any) -> None:
    async with serving(handler) as (server, url):
        async with connect(url + "/chat", **CLIENT) as ws:
            assert await http_get(http_url(url, "/healthz")) == (200, PLAIN, "OK\n")
            assert await http_get(http_url(url, "/readyz")) == (200, PLAIN, "ready\n")
            assert await http_get(http_url(url, "/healthz?probe=1")) == (200, PLAIN, "OK\n")
            # HEAD: the same status and headers, no body.
            assert await http_get(http_url(url, "/healthz"), "HEAD") == (200, PLAIN, "")
            assert await http_get(http_url(url, "/readyz"), "HEAD") == (200, PLAIN, "")
            status, _, _ = await http_get(http_url(url, "/healthz"), "POST")
            assert status == 405
            # The WebSocket next to the probes is not disturbed.
            await ws.send("still here")
            assert await ws.recv() == "still here"
            # Not counted: metrics are off.
            assert server.stats()["handshakes"] == {}
        # Neither path is a WebSocket route of the server's: the app's handler gets it.
        async with connect(url + "/healthz", **CLIENT) as ws:
            await ws.send("app")
            assert await ws.recv() == "app"


@HANDLERS
async def test_health_off_leaves_the_paths_to_the_app(handler: Any) -> None:
    async with serving(handler, health=False) as (_, url):
        for path in ("/healthz", "/readyz"):
            status, _, body = await http_get(http_url(url, path))
            assert status == 426, (path, status, body)  # plain HTTP to a WebSocket server


async def test_no_health_flag(cli_process: Any) -> None:
    # Shout has no process_request: a plain GET it would get is answered 426.
    # (The bundled demo answers /healthz itself, so it cannot tell.)
    proc: CliProcess = cli_process("tests.integration.apps:Shout", "--no-health", "--no-access-log")
    for path in ("/healthz", "/readyz"):
        status, _, body = await http_get(http_url(proc.url, path))
        assert status == 426, (path, status, body)
    with_health: CliProcess = cli_process("tests.integration.apps:Shout", "--no-access-log")
    assert await http_get(http_url(with_health.url, "/healthz")) == (200, PLAIN, "OK\n")
    assert await http_get(http_url(with_health.url, "/readyz")) == (200, PLAIN, "ready\n")
    assert proc.stop() == 0 and with_health.stop() == 0


async def test_readyz_says_503_while_draining_and_healthz_200(cli_process: Any) -> None:
    mport = free_port()
    proc: CliProcess = cli_process("--metrics-port", str(mport), "--timeout-graceful-shutdown", "3")
    probes = f"http://127.0.0.1:{mport}"
    assert await http_get(probes + "/readyz") == (200, PLAIN, "ready\n")
    assert await http_get(http_url(proc.url, "/readyz")) == (200, PLAIN, "ready\n")
    # A client that never answers the close frame holds the drain open.
    silent = await asyncio.to_thread(raw_connect, proc.port)
    try:
        await asyncio.to_thread(handshake, silent, UPGRADE)
        assert total(await scrape(probes + "/metrics"), "fastws_connections") == 1
        assert proc.proc is not None
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait_for, r"SIGTERM received: closing connections with 1001 \(1 open; waiting up to 3.0s\)")
        # Draining: not ready, but alive; both answered by the metrics port.
        for _ in range(3):
            assert await http_get(probes + "/readyz") == (503, PLAIN, "draining\n")
            assert await http_get(probes + "/healthz") == (200, PLAIN, "OK\n")
            assert (await http_get(probes + "/readyz", "HEAD"))[0] == 503
            await asyncio.sleep(0.2)
        samples = await scrape(probes + "/metrics")
        assert total(samples, "fastws_handshakes_total", status="101") == 1
        # The main port no longer accepts.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proc.port), timeout=unit(2)).close()
        assert proc.proc.poll() is None  # still draining
        assert await asyncio.to_thread(proc.proc.wait, unit(10)) == 0, proc.output
        took = time.monotonic() - started
        assert 2.8 <= took < 3 + unit(3), took
    finally:
        silent.close()
    # The metrics port closed with the process.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", mport), timeout=unit(2)).close()
    assert "Traceback" not in proc.output
