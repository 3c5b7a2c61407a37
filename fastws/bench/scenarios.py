"""The scenarios of ``fastws bench`` that are not an echo load:

- ``handshakes``: each of ``conns`` clients connects, upgrades (the 101 and
  its ``Sec-WebSocket-Accept`` are checked), closes with 1000, waits for the
  server's close and EOF, and starts again; handshakes/s and the time of
  each cycle;
- ``idle``: open ``conns`` connections and hold them for ``duration``; with
  the server's PID, its RSS before and after, per connection.

Both reuse the load generator's configuration, TLS context and server probe
(:mod:`fastws.bench.loadgen`); handshake times go into the compiled
histogram (:mod:`fastws.bench.echo`).
"""

from __future__ import annotations

import asyncio
import base64
import os
import resource
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from ..codec import frame as _frame
from ..codec import handshake as handshake_codec
from ..types import CloseCode
from . import echo, loadgen

__all__ = ["format_handshakes", "format_idle", "run_handshakes", "run_idle"]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Target:
    def __init__(self, cfg: loadgen.LoadConfig) -> None:
        url = urlsplit(cfg.url)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (443 if url.scheme == "wss" else 80)
        self.path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self.netloc = url.netloc
        self.context = loadgen.client_context(cfg.cafile, cfg.insecure, cfg.ecdh_curve) if url.scheme == "wss" else None
        extra = [f"{name}: {value}\r\n" for name, value in cfg.headers]
        if cfg.subprotocol:
            extra.append(f"Sec-WebSocket-Protocol: {cfg.subprotocol}\r\n")
        self.extra = "".join(extra)

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect and upgrade."""
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.context, server_hostname=self.host if self.context else None
        )
        key = base64.b64encode(os.urandom(16))
        writer.write(
            f"GET {self.path} HTTP/1.1\r\nHost: {self.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: fastws-bench\r\n{self.extra}\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if lines[0].split(" ", 2)[1:2] != ["101"]:
            writer.close()
            raise ConnectionError(f"server answered {lines[0]!r} instead of 101")
        accept = next((line.partition(":")[2].strip() for line in lines[1:] if line.lower().startswith("sec-websocket-accept:")), "")
        if accept.encode() != handshake_codec.accept_key(key):
            writer.close()
            raise ConnectionError(f"bad Sec-WebSocket-Accept {accept!r}")
        return reader, writer


_CLOSE = _frame.close_payload(CloseCode.NORMAL_CLOSURE, "")


async def _close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send a close frame and read until the server's close and EOF."""
    writer.write(_frame.encode_frame(_frame.OP_CLOSE, _CLOSE, mask=os.urandom(4)))
    while await reader.read(65536):
        pass  # the server's close frame, then EOF
    writer.close()


Scenario = Callable[[loadgen.LoadConfig, "loadgen.ServerProbe | None"], Awaitable[dict[str, Any]]]


def _run(scenario: Scenario, cfg: loadgen.LoadConfig) -> dict[str, Any]:
    """Run a scenario on a fresh event loop, with the server probed if known."""
    probe = loadgen.ServerProbe(cfg.server_pid) if cfg.server_pid else None
    result: dict[str, Any] = loadgen.run_loop(scenario(cfg, probe))
    return result


def run_handshakes(cfg: loadgen.LoadConfig) -> dict[str, Any]:
    """``conns`` clients cycling connect, upgrade, close for warmup + duration:
    on ws://, each a thread running the compiled :func:`handshake_loop`
    (blocking sockets, GIL released); on wss://, coroutines on the event loop."""
    if urlsplit(cfg.url).scheme == "ws":
        return _handshakes_blocking(cfg)
    return _run(_handshakes, cfg)


def _handshakes_blocking(cfg: loadgen.LoadConfig) -> dict[str, Any]:
    target = _Target(cfg)
    probe = loadgen.ServerProbe(cfg.server_pid) if cfg.server_pid else None
    key = base64.b64encode(os.urandom(16))
    request = (
        f"GET {target.path} HTTP/1.1\r\nHost: {target.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: fastws-bench\r\n{target.extra}\r\n"
    ).encode()
    close_frame = _frame.encode_frame(_frame.OP_CLOSE, _CLOSE, mask=os.urandom(4))
    start = echo.now_ns()
    window_start = start + int(cfg.warmup * 1e9)
    window_end = window_start + int(cfg.duration * 1e9)
    hists = [echo.Histogram() for _ in range(cfg.conns)]
    results: list[Any] = [None] * cfg.conns

    def client(i: int) -> None:
        results[i] = echo.handshake_loop(
            target.host, target.port, request, handshake_codec.accept_key(key), close_frame, hists[i],
            window_start, window_end, window_end, cfg.connect_timeout,
        )  # fmt: skip

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(cfg.conns)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, (window_start - echo.now_ns()) / 1e9))
    cpu0, srv0 = _cpu(), probe.sample()[0] if probe else 0.0
    time.sleep(max(0.0, (window_end - echo.now_ns()) / 1e9))
    cpu1, srv1 = _cpu(), probe.sample()[0] if probe else 0.0
    for t in threads:
        t.join(cfg.connect_timeout * 2)
    hist = echo.Histogram()
    for h in hists:
        hist.merge(h)
    errors: dict[str, int] = {}
    samples: list[str] = []
    for result in results:
        if result is None:
            errors["failed"] = errors.get("failed", 0) + 1
            continue
        _, counts, sample = result
        for name, n in zip(echo.HANDSHAKE_ERRORS, counts):
            if n:
                errors[name] = errors.get(name, 0) + n
        if sample and len(samples) < 5:
            samples.append(sample)
    return _handshake_result(cfg, hist, errors, samples, cpu1 - cpu0, None if probe is None else srv1 - srv0, "blocking threads")


async def _handshakes(cfg: loadgen.LoadConfig, probe: loadgen.ServerProbe | None) -> dict[str, Any]:
    target = _Target(cfg)
    loop = asyncio.get_running_loop()
    start = loop.time()
    window_start = start + cfg.warmup
    end = window_start + cfg.duration
    times: list[float] = []
    errors: dict[str, int] = {}
    samples: list[str] = []
    marks: dict[str, Any] = {}

    async def client() -> None:
        while loop.time() < end:
            t = time.perf_counter()
            begun = loop.time()
            try:
                reader, writer = await asyncio.wait_for(target.open(), cfg.connect_timeout)
                await asyncio.wait_for(_close(reader, writer), cfg.close_timeout)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, TimeoutError) as exc:
                kind = "refused" if isinstance(exc, ConnectionRefusedError) else "timeout" if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) else "failed"
                errors[kind] = errors.get(kind, 0) + 1
                if len(samples) < 5:
                    samples.append(f"{kind}: {exc}")
                await asyncio.sleep(0.01)
                continue
            if begun >= window_start and loop.time() <= end:
                times.append(time.perf_counter() - t)

    async def mark() -> None:
        await asyncio.sleep(max(0.0, window_start - loop.time()))
        marks["cpu0"], marks["srv0"] = _cpu(), probe.sample()[0] if probe else None
        await asyncio.sleep(max(0.0, end - loop.time()))
        marks["cpu1"], marks["srv1"] = _cpu(), probe.sample()[0] if probe else None

    await asyncio.gather(mark(), *(client() for _ in range(cfg.conns)))
    hist = echo.Histogram()
    for t in times:
        hist.record(int(t * 1e9))
    server_cpu = None if probe is None else marks["srv1"] - marks["srv0"]
    return _handshake_result(cfg, hist, errors, samples, marks["cpu1"] - marks["cpu0"], server_cpu, "event loop")


def _handshake_result(
    cfg: loadgen.LoadConfig, hist: Any, errors: dict[str, int], samples: list[str], cpu: float, server_cpu: float | None, io: str
) -> dict[str, Any]:
    n = hist.total
    quantiles = hist.quantiles([0.5, 0.9, 0.99, 0.999, 1.0])
    fatal = [samples[0]] if not n and samples else []
    return {
        "url": cfg.url, "scenario": "handshakes", "conns": cfg.conns, "warmup_s": cfg.warmup, "window_s": cfg.duration,
        "client_io": io, "handshakes": n, "handshakes_per_s": n / cfg.duration,
        "latency_ms": dict(zip(("p50", "p90", "p99", "p999", "max"), (v / 1e6 if n else None for v in quantiles))),
        "loadgen_cpu_pct": 100 * cpu / cfg.duration, "loadgen_saturated": cpu / cfg.duration >= loadgen.SATURATED,
        "server_pid": cfg.server_pid, "server_cpu_s": server_cpu,
        "server_cpu_us_per_handshake": None if server_cpu is None or not n else 1e6 * server_cpu / n,
        "errors": errors, "error_samples": samples, "fatal": fatal,
    }  # fmt: skip


def format_handshakes(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    lines = [
        f"fastws bench -> {r['url']}",
        f"  scenario    handshakes: {r['conns']} clients cycling connect, upgrade, close ({r['client_io']})",
        f"  throughput  {r['handshakes_per_s']:,.0f} handshakes/s ({r['handshakes']} in {r['window_s']:.2f} s)",
        f"  cycle time  {loadgen.format_latency(lat)}",
        f"  loadgen CPU {r['loadgen_cpu_pct']:.0f}% of one core" + ("  <- the load generator was the limit" if r["loadgen_saturated"] else ""),
    ]
    if r["server_cpu_us_per_handshake"] is not None:
        lines.append(f"  server CPU  {r['server_cpu_us_per_handshake']:.1f} us per handshake (pid {r['server_pid']})")
    lines.append("  errors      " + (", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "none"))
    return "\n".join(lines)


def run_idle(cfg: loadgen.LoadConfig) -> dict[str, Any]:
    """Open ``conns`` connections, hold them ``duration`` seconds, close."""
    return _run(_idle, cfg)


async def _idle(cfg: loadgen.LoadConfig, probe: loadgen.ServerProbe | None) -> dict[str, Any]:
    target = _Target(cfg)
    rss0 = None if probe is None else probe.sample()[1]
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    errors: dict[str, int] = {}
    samples: list[str] = []
    batch = 100  # connections opened at once
    t = time.monotonic()
    for first in range(0, cfg.conns, batch):
        results = await asyncio.gather(*(target.open() for _ in range(min(batch, cfg.conns - first))), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                errors["failed"] = errors.get("failed", 0) + 1
                if len(samples) < 5:
                    samples.append(str(result))
            else:
                opened.append(result)
    open_time = time.monotonic() - t
    await asyncio.sleep(cfg.duration)
    rss1 = None if probe is None else probe.sample()[1]
    await asyncio.gather(*(_close(r, w) for r, w in opened), return_exceptions=True)
    n = len(opened)
    per_conn = None if rss0 is None or rss1 is None or not n else (rss1 - rss0) / n / 1024
    return {
        "url": cfg.url, "scenario": "idle", "conns": cfg.conns, "conns_open": n, "open_s": open_time, "held_s": cfg.duration,
        "server_pid": cfg.server_pid, "server_rss_before_mib": None if rss0 is None else rss0 / 2**20,
        "server_rss_held_mib": None if rss1 is None else rss1 / 2**20, "server_kib_per_connection": per_conn,
        "errors": errors, "error_samples": samples, "fatal": [samples[0]] if not n and samples else [],
    }  # fmt: skip


def format_idle(r: dict[str, Any]) -> str:
    lines = [
        f"fastws bench -> {r['url']}",
        f"  scenario    idle: {r['conns']} connections opened ({r['conns_open']} open in {r['open_s']:.2f} s), held {r['held_s']:.1f} s",
    ]
    if r["server_kib_per_connection"] is not None:
        lines.append(
            f"  server RSS  {r['server_rss_before_mib']:.1f} MiB before, {r['server_rss_held_mib']:.1f} MiB held: "
            f"{r['server_kib_per_connection']:.1f} KiB per connection (pid {r['server_pid']})"
        )
    else:
        lines.append("  server RSS  not measured (no --server-pid; a local server is found by its port)")
    lines.append("  errors      " + (", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "none"))
    return "\n".join(lines)
