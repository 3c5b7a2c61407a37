"""Prometheus metrics and ``server.stats()`` (issue 11), with exact counts.

A load of known size goes through a real server (in-process at both API
levels, or ``python -m fastws serve`` with ``--metrics-port`` and with
``--workers 2``); ``/metrics`` is scraped with aiohttp and parsed with
``prometheus_client``'s own parser, and every counter must equal what the
clients did: handshakes by status, messages and payload bytes by type, close
codes. Compression is off on both sides, so payload bytes on the wire are
the bytes the clients sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from typing import Any

import aiohttp
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from fastws import Handler
from fastws.metrics import COUNTERS, empty_counters

from ..conftest import serving, unit
from .conftest import CliProcess, eventually, free_port
from .test_production import workers_of

pytestmark = pytest.mark.timeout(int(unit(60)))


class Echo(Handler):
    """Callback level: echo, nothing else (no process_request)."""

    def on_message(self, ws: Any, data: bytes, is_text: bool) -> None:
        ws.send(data, is_text)


async def echo(ws: Any) -> None:
    """Coroutine level: the same."""
    async for message in ws:
        await ws.send(message)


HANDLERS = pytest.mark.parametrize("handler", [Echo, echo], ids=["callback", "coroutine"])

# Clients offer no compression and never ping: byte counts are payload sizes
# and every control frame on the wire is the server's.
CLIENT: dict[str, Any] = {"compression": None, "ping_interval": None, "open_timeout": unit(5), "close_timeout": unit(5)}


# -- scraping ---------------------------------------------------------------

Key = tuple[str, frozenset[tuple[str, str]]]


def parse(text: str) -> dict[Key, float]:
    """Every sample of a Prometheus text page, by (name, labels)."""
    samples: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def total(samples: dict[Key, float], name: str, **labels: str) -> float:
    """The sum of ``name`` over the series carrying ``labels`` (so over the
    ``worker`` label unless it is given)."""
    wanted = set(labels.items())
    return sum(value for (n, have), value in samples.items() if n == name and wanted <= have)


def workers_in(samples: dict[Key, float]) -> set[str]:
    return {dict(labels)["worker"] for _, labels in samples}


async def http_get(url: str, method: str = "GET") -> tuple[int, str, str]:
    """Status, Content-Type and body of one plain HTTP request."""
    timeout = aiohttp.ClientTimeout(total=unit(10))
    async with aiohttp.ClientSession(timeout=timeout) as session, session.request(method, url) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


async def scrape(url: str) -> dict[Key, float]:
    status, content_type, body = await http_get(url)
    assert status == 200, (status, body)
    assert content_type.startswith("text/plain"), content_type
    return parse(body)


def http_url(ws_url: str, path: str) -> str:
    return "http" + ws_url.removeprefix("ws") + path


# -- the load -----------------------------------------------------------------

N, M, B, K = 6, 25, 5, 2  # connections; text and binary messages each; closed with 4001


def text_message(conn: int, i: int) -> str:
    # Non-ASCII on purpose: bytes are counted, not characters.
    return f"conn {conn} msg {i} " + "\u00e9\u20ac" * (i % 4)


def binary_message(conn: int, i: int) -> bytes:
    return bytes([conn, i, 0, 255]) * (i + 1)


TEXT_BYTES = sum(len(text_message(c, i).encode()) for c in range(N) for i in range(M))
BINARY_BYTES = sum(len(binary_message(c, i)) for c in range(N) for i in range(B))


async def one_client(url: str, conn: int, stay: float) -> None:
    """Send M texts and B binaries, check the echoes, stay ``stay`` seconds
    in all, then close with 4001 (the first K) or 1000."""
    started = time.monotonic()
    async with connect(f"{url}/load/{conn}", **CLIENT) as ws:
        sent: list[str | bytes] = [text_message(conn, i) for i in range(M)] + [binary_message(conn, i) for i in range(B)]
        for message in sent:
            await ws.send(message)
        got = [await asyncio.wait_for(ws.recv(), unit(5)) for _ in sent]
        assert got == sent
        await asyncio.sleep(max(0.0, stay - (time.monotonic() - started)))
        await ws.close(4001 if conn < K else 1000)


@HANDLERS
async def test_exact_counts_at_both_levels(handler: Any) -> None:
    async with serving(handler, metrics=True, compression=None, ping_interval=0.1) as (server, url):
        await asyncio.gather(*(one_client(url, conn, stay=0.5) for conn in range(N)))
        # Close codes are counted when TCP is gone, just after the clients' close().
        await eventually(lambda: server.stats()["connections"] == 0, what="connections closed")
        await eventually(lambda: sum(server.stats()["close_received"].values()) == N, what="closes counted")

        samples = await scrape(http_url(url, "/metrics"))
        assert workers_in(samples) == {"0"}

        def value(name: str, **labels: str) -> float:
            return total(samples, name, **labels)

        assert value("fastws_handshakes_total", status="101") == N
        for kind, messages, size in (("text", N * M, TEXT_BYTES), ("binary", N * B, BINARY_BYTES)):
            assert value("fastws_messages_received_total", type=kind) == messages, kind
            assert value("fastws_messages_sent_total", type=kind) == messages, kind
            assert value("fastws_received_bytes_total", type=kind) == size, kind
            assert value("fastws_sent_bytes_total", type=kind) == size, kind
        for name in ("fastws_close_codes_received_total", "fastws_close_codes_sent_total"):
            assert value(name, code="4001") == K, name
            assert value(name, code="1000") == N - K, name
            assert value(name) == N, name  # no other code, no 1006
        assert value("fastws_connections") == 0
        assert value("fastws_write_pauses_total") == 0
        assert value("fastws_slow_readers_dropped_total") == 0
        # Pings every 0.1 s to six clients that stayed 0.5 s, all answered.
        rtt_count = value("fastws_ping_rtt_seconds_count")
        assert rtt_count >= N, rtt_count
        assert value("fastws_ping_rtt_seconds_bucket", le="+Inf") == rtt_count
        assert 0 < value("fastws_ping_rtt_seconds_sum") < rtt_count * 0.1
        assert value("fastws_uptime_seconds") > 0

        # The same figures as a plain, JSON-safe dict.
        stats = server.stats()
        assert json.loads(json.dumps(stats)) == stats
        assert stats["worker"] == 0 and stats["connections"] == 0 and stats["draining"] is False
        assert stats["handshakes"]["101"] == N
        assert stats["messages_in"] == stats["messages_out"] == {"text": N * M, "binary": N * B}
        assert stats["bytes_in"] == stats["bytes_out"] == {"text": TEXT_BYTES, "binary": BINARY_BYTES}
        assert stats["close_received"] == stats["close_sent"] == {"4001": K, "1000": N - K}
        assert stats["paths"] == {f"/load/{conn}": 1 for conn in range(N)}
        assert stats["rtt"]["count"] == rtt_count == sum(stats["rtt"]["buckets"])
        assert stats["rtt"]["sum"] == pytest.approx(value("fastws_ping_rtt_seconds_sum"))
        # The scrape itself is a plain-HTTP answer of the server: 200.
        assert stats["handshakes"].get("200") == 1


@HANDLERS
async def test_refused_handshakes_are_counted_by_status(handler: Any) -> None:
    origins = ["https://good.example", None]
    async with serving(handler, metrics=True, origins=origins) as (server, url):
        for _ in range(2):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url + "/chat", origin=Origin("https://evil.example"), **CLIENT):
                    pass
            assert refused.value.response.status_code == 403
        status, _, _ = await http_get(http_url(url, "/not-a-route"))
        assert status == 426
        async with connect(url + "/chat", origin=Origin("https://good.example"), **CLIENT) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"

        samples = await scrape(http_url(url, "/metrics"))
        assert total(samples, "fastws_handshakes_total", status="403") == 2
        assert total(samples, "fastws_handshakes_total", status="426") == 1
        assert total(samples, "fastws_handshakes_total", status="101") == 1
        assert total(samples, "fastws_handshakes_total") == 4  # the scrape counts after it is answered
        assert server.stats()["handshakes"] == {"403": 2, "426": 1, "101": 1, "200": 1}
        # Refused handshakes opened nothing: no path, no close code.
        assert server.stats()["paths"] == {"/chat": 1}


# -- metrics off (the default) ---------------------------------------------------


class AppMetrics(Echo):
    """An app that serves its own /metrics page over plain HTTP."""

    def process_request(self, ws: Any, request: Any) -> Any:
        if request.path == "/metrics":
            return ws.respond(200, "the app's own metrics\n")
        return None


async def app_metrics(ws: Any, request: Any) -> Any:
    if request.path == "/metrics":
        return ws.respond(200, "the app's own metrics\n")
    return None


@pytest.mark.parametrize(
    "handler, options",
    [(Echo, {}), (echo, {}), (AppMetrics, {}), (echo, {"process_request": app_metrics})],
    ids=["callback", "coroutine", "callback-app-page", "coroutine-app-page"],
)
async def test_metrics_off_by_default(handler: Any, options: dict[str, Any]) -> None:
    async with serving(handler, **options) as (server, url):
        async with connect(url + "/chat", **CLIENT) as ws:
            for message in ("one", b"two", "three"):
                await ws.send(message)
                assert await ws.recv() == message
            status, _, body = await http_get(http_url(url, "/metrics"))
            if handler is AppMetrics or options:
                # The app's process_request got the path, not the server.
                assert (status, body) == (200, "the app's own metrics\n")
            else:
                assert status == 426, body
            assert "fastws_" not in body
            stats = server.stats()
            assert stats["connections"] == 1
        json.dumps(stats)
        assert {key: stats[key] for key in COUNTERS} == empty_counters()


# -- --metrics-port from the command line ------------------------------------------


async def test_metrics_port_serves_only_monitoring(cli_process: Any) -> None:
    port = free_port()
    proc: CliProcess = cli_process("--metrics-port", str(port), "--no-access-log")
    base = f"http://127.0.0.1:{port}"
    async with connect(proc.url + "/chat", **CLIENT) as ws:
        await ws.send("h\u00e9")
        assert await ws.recv() == "h\u00e9"
        await ws.send(b"\x00" * 10)
        assert await ws.recv() == b"\x00" * 10

        status, content_type, body = await http_get(base + "/metrics")
        assert status == 200 and content_type.startswith("text/plain"), (status, content_type)
        samples = parse(body)
        assert total(samples, "fastws_connections") == 1
        assert total(samples, "fastws_handshakes_total", status="101") == 1
        assert total(samples, "fastws_received_bytes_total", type="text") == 3
        assert total(samples, "fastws_sent_bytes_total", type="binary") == 10
    assert await http_get(base + "/healthz") == (200, "text/plain; charset=utf-8", "OK\n")
    assert await http_get(base + "/readyz") == (200, "text/plain; charset=utf-8", "ready\n")
    assert (await http_get(base + "/healthz", "HEAD"))[0] == 200
    assert (await http_get(base + "/metrics?x=1"))[0] == 200
    for path in ("/", "/chat", "/metricsx", "/fastws/dashboard"):
        assert (await http_get(base + path))[0] == 404, path
    assert (await http_get(base + "/metrics", "POST"))[0] == 404
    # No WebSocket opens on the metrics port, not even on its paths (an
    # upgrade to /metrics just gets the page: a refusal all the same).
    for path, refusal in (("/chat", 404), ("/metrics", 200), ("/healthz", 200)):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"ws://127.0.0.1:{port}{path}", **CLIENT):
                pass
        assert refused.value.response.status_code == refusal, path
    # /metrics is not on the main port (the demo app answers it: 404).
    status, _, body = await http_get(http_url(proc.url, "/metrics"))
    assert status == 404 and "fastws_" not in body, (status, body)

    # Scrapes on the metrics port are not counted as handshakes.
    samples = await scrape(base + "/metrics")
    statuses = {dict(labels)["status"] for name, labels in samples if name == "fastws_handshakes_total"}
    assert statuses == {"101", "404"}, statuses
    assert total(samples, "fastws_connections") == 0
    assert total(samples, "fastws_close_codes_received_total", code="1000") == 1
    assert proc.stop() == 0, proc.output
    assert "Traceback" not in proc.output


# -- --workers 2 -------------------------------------------------------------------

W_CONNS, W_TEXT, W_BINARY = 16, 5, 2


def expected_worker_totals(greetings: list[str]) -> dict[tuple[str, str, str], float]:
    """(metric, label, value) -> the sum over workers, for the load below."""
    text_in = sum(len(f"t{c}.{i} \u00e9".encode()) for c in range(W_CONNS) for i in range(W_TEXT))
    binary = sum(len(bytes([c]) * (i + 3)) for c in range(W_CONNS) for i in range(W_BINARY))
    greeting_bytes = sum(len(g.encode()) for g in greetings)
    return {
        ("fastws_handshakes_total", "status", "101"): W_CONNS,
        ("fastws_messages_received_total", "type", "text"): W_CONNS * W_TEXT,
        ("fastws_messages_received_total", "type", "binary"): W_CONNS * W_BINARY,
        ("fastws_messages_sent_total", "type", "text"): W_CONNS * W_TEXT + W_CONNS,  # + the "pid N" greetings
        ("fastws_messages_sent_total", "type", "binary"): W_CONNS * W_BINARY,
        ("fastws_received_bytes_total", "type", "text"): text_in,
        ("fastws_received_bytes_total", "type", "binary"): binary,
        ("fastws_sent_bytes_total", "type", "text"): text_in + greeting_bytes,
        ("fastws_sent_bytes_total", "type", "binary"): binary,
        ("fastws_close_codes_received_total", "code", "4002"): W_CONNS // 2,
        ("fastws_close_codes_received_total", "code", "1000"): W_CONNS - W_CONNS // 2,
        ("fastws_close_codes_sent_total", "code", "4002"): W_CONNS // 2,
        ("fastws_close_codes_sent_total", "code", "1000"): W_CONNS - W_CONNS // 2,
    }


def mismatches(samples: dict[Key, float], expected: dict[tuple[str, str, str], float]) -> dict[Any, tuple[float, float]]:
    out = {}
    for (name, label, value), want in expected.items():
        got = total(samples, name, **{label: value})
        if got != want:
            out[(name, value)] = (got, want)
    return out


def counters(samples: dict[Key, float]) -> dict[Key, float]:
    """The samples that may never go down: counters and histogram parts."""
    return {key: v for key, v in samples.items() if key[0].endswith(("_total", "_bucket", "_count", "_sum"))}


async def test_workers_sum_to_the_exact_totals_and_survive_a_restart(cli_process: Any) -> None:
    port = free_port()
    proc: CliProcess = cli_process(
        "tests.integration.apps:WhichWorker", "--workers", "2", "--metrics", "--port", str(port), "--log-level", "debug"
    )
    await asyncio.to_thread(proc.wait_for, r"worker \d \(pid \d+\) is listening", 20, 2)
    url = f"ws://127.0.0.1:{port}"
    metrics_url = f"http://127.0.0.1:{port}/metrics"

    greetings: list[str] = []
    pids: set[int] = set()

    async def client(c: int) -> None:
        async with connect(f"{url}/w/{c}", **CLIENT) as ws:
            greeting = await asyncio.wait_for(ws.recv(), unit(5))
            assert isinstance(greeting, str) and greeting.startswith("pid "), greeting
            greetings.append(greeting)
            pids.add(int(greeting.split()[1]))
            for i in range(W_TEXT):
                await ws.send(f"t{c}.{i} \u00e9")
            for i in range(W_BINARY):
                await ws.send(bytes([c]) * (i + 3))
            for _ in range(W_TEXT + W_BINARY):
                await asyncio.wait_for(ws.recv(), unit(5))
            await ws.close(4002 if c % 2 else 1000)

    await asyncio.gather(*(client(c) for c in range(W_CONNS)))
    # SO_REUSEPORT spreads by hash: all 16 on one worker has odds 2**-15.
    assert pids == workers_of(proc), (pids, workers_of(proc))
    expected = expected_worker_totals(greetings)

    # Workers publish once a second; the worker answering a scrape adds its
    # own fresh figures. Wait until a scrape adds up, then every scrape must.
    last: dict[Key, float] = {}

    async def adds_up() -> bool:
        nonlocal last
        last = await scrape(metrics_url)
        return not mismatches(last, expected) and total(last, "fastws_connections") == 0

    deadline = time.monotonic() + unit(8)
    while not await adds_up():
        assert time.monotonic() < deadline, mismatches(last, expected)
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.2)  # both workers have published their final figures
    before: dict[Key, float] = {}
    for _ in range(6):
        samples = await scrape(metrics_url)
        assert mismatches(samples, expected) == {}
        assert workers_in(samples) == {"0", "1"}
        assert total(samples, "fastws_connections") == 0
        for key, value in counters(samples).items():
            before[key] = max(before.get(key, 0.0), value)
    # What the scrapes above showed (their own 200s included) is published
    # before the kill: the documented loss is only the last second's.
    await asyncio.sleep(1.5)

    victim = min(workers_of(proc))
    psutil.Process(victim).send_signal(signal.SIGKILL)
    await asyncio.to_thread(proc.wait_for, rf"worker \d \(pid {victim}\) died \(killed by SIGKILL\); restarting it", 10)
    await asyncio.to_thread(proc.wait_for, r"worker \d \(pid \d+\) is listening", 20, 3)
    assert len(workers_of(proc)) == 2 and victim not in workers_of(proc)

    seen_after: set[str] = set()
    for _ in range(8):
        try:
            samples = await scrape(metrics_url)
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.1)  # the port may still be settling
            continue
        seen_after |= workers_in(samples)
        assert mismatches(samples, expected) == {}
        after = counters(samples)
        went_back = {key: (value, after.get(key)) for key, value in before.items() if after.get(key, 0.0) < value}
        assert went_back == {}, went_back
        await asyncio.sleep(0.1)
    assert seen_after == {"0", "1"}
    assert proc.stop() == 0, proc.output
    assert "Traceback" not in proc.output


# The worker that answers a scrape shows its own counters live and the other
# workers' as they last published them (up to a second old). So a series can
# be shown ahead of what its worker published, and a later scrape answered by
# another worker, or by the worker's successor after a crash, shows it
# lower: Prometheus reads a counter reset, and rate()/increase() count the
# whole cumulative value again. The answering worker publishes its snapshot
# before rendering the scrape (ServerState.all_snapshots), so everything a
# scrape shows is at least as new as the files.


async def test_consecutive_scrapes_never_go_backwards_across_workers(cli_process: Any) -> None:
    port = free_port()
    proc: CliProcess = cli_process(
        "tests.integration.apps:WhichWorker", "--workers", "2", "--metrics", "--port", str(port), "--log-level", "debug",
        "--no-access-log",
    )  # fmt: skip
    await asyncio.to_thread(proc.wait_for, r"worker \d \(pid \d+\) is listening", 20, 2)
    await asyncio.sleep(1.2)  # both workers have published once
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    went_back: dict[Key, tuple[float, float]] = {}
    for _ in range(5):
        async with contextlib.AsyncExitStack() as stack:
            pids = set()
            for c in range(16):
                ws = await stack.enter_async_context(connect(f"ws://127.0.0.1:{port}/w/{c}", **CLIENT))
                pids.add(await asyncio.wait_for(ws.recv(), unit(5)))
                await ws.send("x")
                assert await asyncio.wait_for(ws.recv(), unit(5)) == "x"
            assert len(pids) == 2
        # Scrapes right after the load, each answered by either worker.
        seen: dict[Key, float] = {}
        for _ in range(10):
            for key, value in counters(await scrape(metrics_url)).items():
                if value < seen.get(key, 0.0):
                    went_back[key] = (seen[key], value)
                seen[key] = max(seen.get(key, 0.0), value)
        if went_back:
            break
        await asyncio.sleep(1.1)
    # Stopped gracefully either way: the supervisor removes its directory.
    assert proc.stop() == 0, proc.output
    assert went_back == {}, went_back


async def test_counters_shown_by_a_worker_that_dies_do_not_go_backwards(cli_process: Any) -> None:
    """What one scrape showed, the next scrape must show at least, even when
    the worker that answered it is killed right after. Tried a few times:
    each try is lost only if the victim happened to publish in between."""
    port = free_port()
    proc: CliProcess = cli_process(
        "tests.integration.apps:WhichWorker", "--workers", "2", "--metrics", "--port", str(port), "--log-level", "debug",
        "--no-access-log",
    )  # fmt: skip
    listening = r"worker \d \(pid \d+\) is listening"
    await asyncio.to_thread(proc.wait_for, listening, 20, 2)
    await asyncio.sleep(1.5)  # both workers have published at least once
    url = f"ws://127.0.0.1:{port}"
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    for attempt in range(3):
        async with contextlib.AsyncExitStack() as stack:
            by_pid: dict[int, list[Any]] = {}
            for c in range(16):
                ws = await stack.enter_async_context(connect(f"{url}/w/{c}", **CLIENT))
                greeting = await asyncio.wait_for(ws.recv(), unit(5))
                by_pid.setdefault(int(str(greeting).split()[1]), []).append(ws)
            victim = min(by_pid)
            # Fresh figures on the victim, then scrapes until one shows them
            # (answered by the victim itself, which reads its own counters live).
            for ws in by_pid[victim]:
                for i in range(5):
                    await ws.send(f"burst {i}")
                for _ in range(5):
                    await asyncio.wait_for(ws.recv(), unit(5))
            before: dict[Key, float] = {}
            for _ in range(10):
                for key, value in counters(await scrape(metrics_url)).items():
                    before[key] = max(before.get(key, 0.0), value)
            psutil.Process(victim).send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait_for, listening, 20, 3 + attempt)
        went_back: dict[Key, tuple[float, float | None]] = {}
        for _ in range(6):
            try:
                after = counters(await scrape(metrics_url))
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
                continue
            went_back.update({key: (value, after.get(key)) for key, value in before.items() if after.get(key, 0.0) < value})
        if went_back:
            break
    # Stopped gracefully either way: the supervisor removes its directory.
    assert proc.stop() == 0, proc.output
    assert went_back == {}, went_back
