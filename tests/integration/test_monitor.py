"""``fastws monitor`` against real servers on loopback started here: a fastws
server, a closed port, an HTTP server answering 200, a 101 with a wrong
accept key, a server that never answers pings, a TLS server whose
self-signed certificate expires in 5 days, a server that closes with 1011.
Each must give its named failure; uptime must match what happened."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from fastws import Handler
from fastws.demo import EchoHandler
from fastws.monitor import Result, check
from fastws.monitor.schedule import Endpoint, Monitor

from ..conftest import ROOT, serving, unit
from .conftest import free_port
from .test_tls import _openssl

pytestmark = pytest.mark.timeout(60)


@asynccontextmanager
async def raw_server(answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> AsyncIterator[str]:
    """A TCP server on loopback running ``answer`` per connection; yields its ws:// URL."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    finally:
        server.close()
        await server.wait_closed()


async def read_head(reader: asyncio.StreamReader) -> dict[str, str]:
    head = await reader.readuntil(b"\r\n\r\n")
    fields = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return fields


def accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()).decode()


async def http_200(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nServer: plain-http/1.0\r\nContent-Length: 2\r\n\r\nhi")
    await writer.drain()


async def wrong_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"
    )
    await writer.drain()
    await reader.read()


async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A correct 101, then reads everything and answers nothing."""
    fields = await read_head(reader)
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + f"Sec-WebSocket-Accept: {accept(fields['sec-websocket-key'])}\r\n\r\n".encode()
    )
    await writer.drain()
    while await reader.read(4096):
        pass


class Closes1011(Handler):
    def on_connect(self, ws: Any) -> None:
        ws.close(1011, "broken")

    def on_message(self, ws: Any, data: bytes, is_text: bool) -> None:
        pass


class Greets(EchoHandler):
    def on_connect(self, ws: Any) -> None:
        ws.send("welcome")


async def test_a_fastws_server_is_up_with_every_phase_timed() -> None:
    async with serving(Greets) as (_, url):
        result = await check(url + "/chat", send="hello", expect="^hello$")
    assert result.up and result.failure is None, result
    for phase in ("dns", "connect", "upgrade", "ping", "answer", "total"):
        assert getattr(result, phase) is not None and getattr(result, phase) >= 0, phase
    assert result.tls is None and result.status == 101 and result.server == "fastws"
    json.dumps(result.as_dict())


@pytest.mark.parametrize(
    "answer, failure, words",
    [
        (http_200, "http_status", ["HTTP 200 OK instead of 101", "Server: plain-http/1.0"]),
        (wrong_accept, "bad_accept", ["wrong Sec-WebSocket-Accept"]),
        (deaf, "no_pong", ["no pong"]),
    ],
    ids=["http-200", "wrong-accept", "no-pong"],
)
async def test_broken_servers_are_named(answer: Any, failure: str, words: list[str]) -> None:
    async with raw_server(answer) as url:
        result = await check(url, timeout=unit(1.0))
    assert not result.up and result.failure == failure, result
    for word in words:
        assert word in (result.error or ""), result.error


async def test_closed_port_and_bad_dns() -> None:
    refused = await check(f"ws://127.0.0.1:{free_port()}/", timeout=unit(2))
    assert refused.failure == "tcp_refused" and "refused" in (refused.error or "")
    dns = await check("ws://no-such-host.invalid/", timeout=unit(5))
    assert dns.failure == "dns", dns


async def test_a_server_closing_with_1011() -> None:
    async with serving(Closes1011) as (_, url):
        result = await check(url)
        assert result.failure == "unexpected_close" and result.close_code == 1011, result
        assert "1011" in (result.error or "") and "broken" in (result.error or "")
        # When that close is what the service should do, it is a pass.
        assert (await check(url, expect_close=1011)).up


async def test_wrong_answer() -> None:
    async with serving(EchoHandler) as (_, url):
        result = await check(url, send="ping?", expect="^pong$")
    assert result.failure == "wrong_answer" and "'ping?'" in (result.error or ""), result


@pytest.fixture(scope="module")
def short_cert(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A self-signed certificate for 127.0.0.1 that expires in 5 days."""
    folder = tmp_path_factory.mktemp("monitor-tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "5", "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    )  # fmt: skip
    return {"cert": str(cert), "key": str(key)}


async def test_tls_expiry_and_trust(short_cert: dict[str, str]) -> None:
    async with serving(EchoHandler, ssl_certfile=short_cert["cert"], ssl_keyfile=short_cert["key"]) as (_, url):
        wss = url.replace("ws://", "wss://")
        trusted = await check(wss, cafile=short_cert["cert"])
        assert trusted.up and trusted.tls is not None, trusted
        assert trusted.cert_days_left is not None and 4.9 < trusted.cert_days_left <= 5.0
        insecure = await check(wss, insecure=True)
        assert insecure.up and insecure.cert_days_left is not None and 4.9 < insecure.cert_days_left <= 5.0
        untrusted = await check(wss)
        assert untrusted.failure == "tls" and "not trusted" in (untrusted.error or ""), untrusted
        # The monitor warns under its threshold.
        reports: list[Result] = []
        monitor = Monitor([Endpoint(wss, {"cafile": short_cert["cert"]})], 1.0, lambda e, r: reports.append(r), cert_warn_days=14)
        await monitor.check_once()
        assert reports[0].extra["cert_warning"] in ("certificate expires in 4.9 days", "certificate expires in 5.0 days")


async def test_uptime_matches_what_happened() -> None:
    """Check every 0.1 s for 3 s while the server is stopped for about a
    third of the time: the uptime figure is the share of checks up, and the
    down checks are exactly those made while it was stopped."""
    port = free_port()
    events: list[tuple[float, str]] = []
    endpoint = Endpoint(f"ws://127.0.0.1:{port}/", {"timeout": unit(1.0)})
    results: list[Result] = []
    monitor = Monitor([endpoint], 0.1, lambda e, r: results.append(r))

    async def flap() -> None:
        import fastws

        for _ in range(2):
            server = await fastws.serve(EchoHandler, "127.0.0.1", port, access_log=False)
            events.append((time.time(), "up"))
            await asyncio.sleep(1.0)
            server.close()
            await server.wait_closed()
            events.append((time.time(), "down"))
            await asyncio.sleep(0.5)

    runner = asyncio.ensure_future(monitor.run())
    await asyncio.sleep(0.05)
    await flap()
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    assert len(results) >= 15, len(results)

    def state_at(t: float) -> str:
        state = "down"
        for when, what in events:
            if when <= t:
                state = what
        return state

    # A check started well inside a phase must report that phase.
    margin = 0.05
    for r in results:
        before, after = state_at(r.time - margin), state_at(r.time + (r.total or 0) + margin)
        if before == after:
            assert r.up == (before == "up"), (r.time, r.failure, events)
    ups = sum(r.up for r in results)
    assert endpoint.uptime(3600) == pytest.approx(100.0 * ups / len(results))
    assert 0 < ups < len(results)


def run_monitor(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastws", "monitor", *args], cwd=ROOT, capture_output=True, text=True, timeout=unit(timeout)
    )


async def test_cli_once_exit_codes_json_and_table(tmp_path: Path) -> None:
    async with serving(EchoHandler) as (_, url):
        up = await asyncio.to_thread(run_monitor, url, "--once")
        assert up.returncode == 0, up.stderr
        assert "UP" in up.stdout and "endpoint" in up.stdout
        down_url = f"ws://127.0.0.1:{free_port()}/"
        mixed = await asyncio.to_thread(run_monitor, url, down_url, "--once", "--json", "--timeout", "2")
        assert mixed.returncode == 1, mixed.stderr
        lines = [json.loads(line) for line in mixed.stdout.splitlines()]
        assert {d["url"]: d["failure"] for d in lines} == {url: None, down_url: "tcp_refused"}
        config = tmp_path / "endpoints.json"
        config.write_text(json.dumps({"interval": 5, "endpoints": [{"url": url, "send": "x", "expect": "^x$", "headers": {"X-Probe": "1"}}]}))
        from_file = await asyncio.to_thread(run_monitor, "--config", str(config), "--once", "--json")
        assert from_file.returncode == 0 and json.loads(from_file.stdout)["answer"] is not None, from_file
    for bad in (["--once"], ["http://x/", "--once"], ["ws://x/", "--header", "nocolon", "--once"], ["ws://x/", "--expect", "y", "--once"]):
        res = await asyncio.to_thread(run_monitor, *bad)
        assert res.returncode == 2 and res.stderr.startswith("fastws: error:"), (bad, res.stderr)


async def test_cli_prometheus_port() -> None:
    metrics_port = free_port()
    async with serving(EchoHandler) as (_, url):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fastws", "monitor", url, "--interval", "0.2", "--json", "--prometheus-port", str(metrics_port),
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            await asyncio.wait_for(proc.stdout.readline(), unit(10))  # a first check is done

            def scrape() -> str:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=unit(5)) as r:
                    return r.read().decode()

            text = await asyncio.to_thread(scrape)
        finally:
            proc.terminate()
            await proc.wait()
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("fastws_monitor_up", (("url", url),))] == 1.0
    assert ("fastws_monitor_phase_seconds", (("phase", "ping"), ("url", url))) in samples


async def test_a_slow_endpoint_never_delays_the_others() -> None:
    """Two endpoints every 0.2 s for 1.5 s: one answers at once, one never
    pongs (each check takes its whole 1 s timeout). The fast one keeps its
    schedule."""
    counts: dict[str, int] = {}
    async with serving(EchoHandler) as (_, fast), raw_server(deaf) as slow:
        endpoints = [Endpoint(fast, {"timeout": 1.0}), Endpoint(slow, {"timeout": 1.0})]
        monitor = Monitor(endpoints, 0.2, lambda e, r: counts.__setitem__(e.url, counts.get(e.url, 0) + 1))
        runner = asyncio.ensure_future(monitor.run())
        await asyncio.sleep(1.5)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert counts.get(fast, 0) >= 5, counts
    assert counts.get(slow, 0) <= 2, counts
    assert endpoints[1].last is not None and endpoints[1].last.failure == "no_pong"


async def hangs_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the request, closes TCP without a word."""
    await read_head(reader)


async def endless_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\n")
    for _ in range(100):
        writer.write(b"X-Filler: " + b"a" * 1000 + b"\r\n")
        await writer.drain()


async def not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    await writer.drain()


@pytest.mark.parametrize(
    "answer, failure, words",
    [
        (hangs_up, "unexpected_close", "before answering the upgrade"),
        (endless_head, "bad_handshake", "over 16384 bytes"),
        (not_http, "bad_handshake", "not an HTTP response"),
    ],
    ids=["hangs-up", "endless-head", "not-http"],
)
async def test_hostile_answers_are_named_and_bounded(answer: Any, failure: str, words: str) -> None:
    async with raw_server(answer) as url:
        result = await check(url, timeout=unit(2))
    assert result.failure == failure and words in (result.error or ""), result
