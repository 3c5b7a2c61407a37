"""The HTTP fallback transports against WebSocket: echo rate, latency, server CPU.

Runs ``python -m fastws serve --fallback`` (the bundled echo demo) and, in
``--rounds`` interleaved rounds (every transport once per round, the order
rotated by one each round), ``--clients`` concurrent echo clients over each
transport for ``--duration`` seconds after a ``--warmup``:

- ``websocket``: aiohttp's WebSocket client on ``ws://127.0.0.1:P/bench``
  (no permessage-deflate: aiohttp does not offer it by default);
- ``sse``: ``POST /_fastws/open`` (transport ``sse``), one
  ``GET /_fastws/sse`` stream down, ``POST /_fastws/send`` up;
- ``polling``: ``POST /_fastws/open`` (transport ``polling``), a loop of
  ``GET /_fastws/poll?last=N`` down, ``POST /_fastws/send`` up.

Each client keeps ``--inflight`` messages in flight: a new one for each echo
received. The HTTP clients upload in batches, one POST in flight per session
(docs/fallback.md): whatever was queued while a POST was out goes in the
next one, which also acknowledges what came down (``ack``; polls acknowledge
with ``last=`` too). Every request is a new TCP connection (the fallback
answers ``Connection: close``); the HTTP client is a minimal one on
``asyncio.Protocol`` (an HTTP library would only add client CPU).

Messages are 64-byte texts ``CCCC SSSSSSSSSS TTTT... xxx``: client id, the
client's message number and the ``time.monotonic_ns()`` of the send (the
moment the client queued it, so batching waits count), padded. Every echo is
checked against what was sent, in order; downstream sequence numbers of the
fallback must go 1, 2, 3 ... without gaps or repeats. Anything else (an echo
that does not match, comes twice or never, a failed request, a session that
closed on its own, a close that is not 1000) is counted as an error by kind;
a run that could not be measured is reported as failed. Each run has a fresh
server (its log is kept; warnings and errors in it are reported).

Figures per run, over the measured window: messages/s (echoes received per
second, all clients), p50/p99 latency (send to echo received), server CPU
(psutil on the server's pid) as a % of one core and as microseconds per
message, the client's (this process's) CPU as a % of one core, the rest of
the machine's busy CPU ("other"), and HTTP requests per message. The table
shows per transport the median of the rounds, the min-max, and ratios of
medians to ``websocket``. A transport whose client was at >= 90% of its core
is flagged: the load generator, not the server, was the limit, and its
messages/s is a lower bound (server us/msg still holds).

With 2+ CPUs the server is pinned to the first and this process (the load
generator) to the others.

    python -m bench.fallback [--clients 8] [--duration 3] [--warmup 1] [--rounds 3]
                             [--inflight 1] [--transports websocket,sse,polling] [--json FILE]
                             [--wait-quiet SECONDS] [--no-pin]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench.handshakes import _git, _version  # the same run header as bench.handshakes
from bench.run import _free_port, _stop, wait_quiet  # the same server handling as bench.run

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
TRANSPORTS = ("websocket", "sse", "polling")
PATH = "/bench"
SIZE = 64
#: Client CPU (% of one core) from which the load generator counts as the bottleneck.
SATURATED = 90.0
#: How long a request (other than a long poll) may take before it counts as failed.
REQUEST_TIMEOUT = 10.0
POLL_TIMEOUT = 35.0  # the server answers a long poll within 25 s


class Failed(Exception):
    """A client cannot go on (its session is gone, its requests keep failing)."""


# -- measurements shared by the clients of one run -------------------------


class Stats:
    def __init__(self) -> None:
        self.measuring = False
        self.received = 0  # echoes received inside the window
        self.latencies: list[int] = []  # ns, echoes inside the window
        self.requests = 0  # HTTP requests started inside the window
        self.sent = 0  # every message sent (whole run)
        self.echoed = 0  # every good echo (whole run)
        self.errors: dict[str, int] = {}
        self.info: dict[str, int] = {}  # things that are not errors (SSE recycles, ...)

    def error(self, kind: str, n: int = 1) -> None:
        if n > 0:
            self.errors[kind] = self.errors.get(kind, 0) + n

    def note(self, kind: str, n: int = 1) -> None:
        self.info[kind] = self.info.get(kind, 0) + n


class Client:
    """One echo client: numbered, timestamped messages; echoes checked in order."""

    def __init__(self, cid: int, stats: Stats, inflight: int, port: int) -> None:
        self.cid = cid
        self.stats = stats
        self.inflight = inflight
        self.port = port
        self.seq = 0
        self.outstanding: deque[tuple[int, str]] = deque()  # sent, echo not yet received
        self.stopping = False
        self.stopped = asyncio.Event()
        self.drained = asyncio.Event()

    def make(self) -> str:
        self.seq += 1
        head = f"{self.cid:04d} {self.seq:010d} {time.monotonic_ns():020d} "
        payload = head + "x" * (SIZE - len(head))
        self.outstanding.append((self.seq, payload))
        self.stats.sent += 1
        return payload

    def echo(self, text: str) -> int:
        """Check an echo; the number of messages it answered (to send as many new ones)."""
        now = time.monotonic_ns()
        st = self.stats
        if self.outstanding and self.outstanding[0][1] == text:
            self.outstanding.popleft()
            answered = 1
        else:
            try:
                cid, seq = int(text[0:4]), int(text[5:15])
            except ValueError:
                cid = seq = -1
            first = self.outstanding[0][0] if self.outstanding else self.seq + 1
            if cid != self.cid or len(text) != SIZE:
                st.error("echo does not match anything sent (corrupt, or another client's)")
                return 0
            if seq < first:
                st.error("echo received twice")
                return 0
            index = next((i for i, (s, _) in enumerate(self.outstanding) if s == seq), None)
            if index is None or self.outstanding[index][1] != text:
                st.error("echo does not match what was sent")
                return 0
            # Echoes of earlier messages never came: count them lost, go on from this one.
            st.error("echo skipped (earlier echoes missing): messages lost", index)
            for _ in range(index + 1):
                self.outstanding.popleft()
            answered = index + 1
        st.echoed += 1
        if st.measuring:
            st.received += 1
            st.latencies.append(now - int(text[16:36]))
        if self.stopping and not self.outstanding:
            self.drained.set()
        return answered

    def stop(self) -> None:
        self.stopping = True
        self.stopped.set()
        if not self.outstanding:
            self.drained.set()

    async def run(self, drain: float) -> None:
        raise NotImplementedError


# -- WebSocket (aiohttp) ---------------------------------------------------


class WSClient(Client):
    http: Any = None  # the run's aiohttp.ClientSession

    async def run(self, drain: float) -> None:
        import aiohttp

        st = self.stats
        ws = await self.http.ws_connect(f"ws://127.0.0.1:{self.port}{PATH}", compress=0, max_msg_size=0)
        try:
            for _ in range(self.inflight):
                await ws.send_str(self.make())
            deadline: float | None = None
            while not (self.stopping and not self.outstanding):
                if self.stopping and deadline is None:
                    deadline = time.monotonic() + drain
                timeout = REQUEST_TIMEOUT if deadline is None else max(0.01, deadline - time.monotonic())
                try:
                    msg = await ws.receive(timeout=timeout)
                except TimeoutError:
                    if deadline is None:
                        st.error(f"no echo for {REQUEST_TIMEOUT:g} s")
                        continue
                    break
                if msg.type == aiohttp.WSMsgType.TEXT:
                    for _ in range(self.echo(msg.data)):
                        if not self.stopping:
                            await ws.send_str(self.make())
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    raise Failed(f"the server closed the WebSocket ({ws.close_code})")
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    raise Failed(f"WebSocket error: {ws.exception()!r}")
                else:
                    st.error(f"unexpected WebSocket message {msg.type.name}")
            st.error(f"echo never received ({drain:g} s after the window): messages lost", len(self.outstanding))
        finally:
            await ws.close()
        if ws.close_code != 1000:
            st.error(f"close code {ws.close_code} (expected 1000)")


# -- HTTP: a minimal client (one request per connection) -------------------


class _OneShot(asyncio.Protocol):
    """Write one request, collect everything until the server closes."""

    def __init__(self, request: bytes, done: asyncio.Future[bytes]) -> None:
        self.request = request
        self.done = done
        self.chunks: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if exc is not None and not self.chunks:
                self.done.set_exception(exc)
            else:
                self.done.set_result(b"".join(self.chunks))


def _request_bytes(port: int, method: str, target: str, body: Any = None) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    if body is None:
        return (head + "\r\n").encode()
    data = json.dumps(body, separators=(",", ":")).encode()
    return (head + f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data


def _parse_response(raw: bytes) -> tuple[int, bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ConnectionError(f"incomplete HTTP response ({len(raw)} bytes)")
    status = int(head.split(b" ", 2)[1])
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and int(value) != len(body):
            raise ConnectionError(f"truncated HTTP response body ({len(body)} of {int(value)} bytes)")
    return status, body


async def http_request(port: int, method: str, target: str, body: Any = None, timeout: float = REQUEST_TIMEOUT) -> tuple[int, bytes]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    request = _request_bytes(port, method, target, body)
    async with asyncio.timeout(timeout):
        transport, _ = await loop.create_connection(lambda: _OneShot(request, done), "127.0.0.1", port)
        try:
            raw = await done
        finally:
            transport.close()
    return _parse_response(raw)


class _SSE(asyncio.Protocol):
    """An SSE response: events handed to ``on_event(event, id, data)``."""

    def __init__(self, request: bytes, on_event: Any, done: asyncio.Future[None]) -> None:
        self.request = request
        self.on_event = on_event
        self.done = done
        self.buf = bytearray()
        self.status: int | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.status is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            del self.buf[: end + 4]
            self.status = int(head.split(b" ", 2)[1])
            if self.status != 200:
                self.transport.close()  # type: ignore[union-attr]
                return
        while True:
            end = self.buf.find(b"\n\n")
            if end < 0:
                return
            block = bytes(self.buf[:end])
            del self.buf[: end + 2]
            event, ident, data_lines, any_field = "message", None, [], False
            for line in block.split(b"\n"):
                if not line or line.startswith(b":"):
                    continue  # comment (the preamble, heartbeats)
                field, _, value = line.partition(b":")
                value = value[1:] if value.startswith(b" ") else value
                any_field = True
                if field == b"event":
                    event = value.decode()
                elif field == b"id":
                    ident = value.decode()
                elif field == b"data":
                    data_lines.append(value.decode())
            if any_field:
                self.on_event(event, ident, "\n".join(data_lines))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


class HTTPClient(Client):
    """A fallback session: ``kind`` is ``sse`` or ``polling``."""

    kind = "sse"

    def __init__(self, cid: int, stats: Stats, inflight: int, port: int) -> None:
        super().__init__(cid, stats, inflight, port)
        self.query = ""
        self.pending: list[str] = []  # queued, not yet uploaded
        self.wake = asyncio.Event()
        self.up_seq = 0  # the last upload number the server has
        self.last_down = 0  # the last downstream sequence number received
        self.close_info: dict[str, Any] | None = None
        self.closing = False  # we asked for the close
        self.ready = asyncio.Event()  # the first SSE stream said "ready"
        self.down_done = asyncio.Event()

    async def request(self, method: str, endpoint: str, body: Any = None, extra: str = "", timeout: float = REQUEST_TIMEOUT) -> tuple[int, bytes]:
        if self.stats.measuring:
            self.stats.requests += 1
        target = f"/_fastws/{endpoint}" + (f"?{self.query}{extra}" if self.query else "")
        return await http_request(self.port, method, target, body, timeout)

    def queue(self, n: int) -> None:
        for _ in range(n):
            if not self.stopping:
                self.pending.append(self.make())
        self.wake.set()

    def down(self, seq: int, kind: str, data: str) -> None:
        st = self.stats
        if seq <= self.last_down:
            st.error(f"{self.kind}: downstream message received twice (seq <= last)")
            return
        if seq != self.last_down + 1:
            st.error(f"{self.kind}: gap in downstream sequence numbers: messages lost", seq - self.last_down - 1)
        self.last_down = seq
        if kind != "t":
            st.error(f"{self.kind}: unexpected binary message")
            return
        self.queue(self.echo(data))

    def session_closed(self, info: Any) -> None:
        self.close_info = info if isinstance(info, dict) else {"code": None, "reason": repr(info)}
        if not self.closing:
            self.stats.error(f"{self.kind}: the server closed the session ({self.close_info.get('code')} {self.close_info.get('reason')!r})")
        self.wake.set()

    # -- up ------------------------------------------------------------------

    async def post(self, messages: list[str], ack: int) -> None:
        """POST /send once (retried after a failed connection: uploads are idempotent)."""
        st = self.stats
        body = {"seq": self.up_seq + 1, "messages": [["t", m] for m in messages], "ack": ack}
        for attempt in range(4):
            try:
                status, answer = await self.request("POST", "send", body)
            except (TimeoutError, OSError) as exc:
                st.error(f"send: {type(exc).__name__}")
                await asyncio.sleep(0.05)
                continue
            if status == 200:
                expected = self.up_seq + len(messages)
                received = json.loads(answer)["received"]
                if received != expected:
                    st.error(f"send: server has {received}, expected {expected}")
                self.up_seq = expected
                return
            if status == 409:
                st.error("send: 409 (a POST of the session in progress)")
                await asyncio.sleep(0.01)
                continue
            raise Failed(f"send: HTTP {status} {answer[:200]!r}")
        raise Failed("send: failed 4 times")

    async def uploader(self) -> None:
        while self.close_info is None:
            await self.wake.wait()
            self.wake.clear()
            if self.pending and self.close_info is None:
                batch, self.pending = self.pending, []
                if self.stats.measuring:
                    self.stats.note(f"{self.kind}: messages per POST (sum)", len(batch))
                    self.stats.note(f"{self.kind}: POSTs with messages", 1)
                await self.post(batch, self.last_down)
            elif self.stopping and not self.pending:
                return

    # -- down ----------------------------------------------------------------

    async def stream_sse(self) -> None:
        st = self.stats
        failures = 0
        while self.close_info is None:
            loop = asyncio.get_running_loop()
            done: asyncio.Future[None] = loop.create_future()
            state = {"recycle": False}

            def on_event(event: str, ident: str | None, data: str) -> None:
                try:
                    handle(event, ident, data)
                except Exception as exc:  # noqa: BLE001 - counted, the stream goes on
                    st.error(f"sse: bad event {event!r}: {type(exc).__name__}")

            def handle(event: str, ident: str | None, data: str) -> None:
                if event == "message":
                    seq = int(ident or 0)
                    kind, payload = json.loads(data)
                    self.down(seq, kind, payload)
                elif event == "ready":
                    self.ready.set()
                elif event == "recycle":
                    state["recycle"] = True
                    st.note("sse: streams recycled by the server")
                elif event == "close":
                    self.session_closed(json.loads(data))
                else:
                    st.error(f"sse: unknown event {event!r}")

            target = f"sse?{self.query}&last={self.last_down}"
            if st.measuring:
                st.requests += 1
            request = _request_bytes(self.port, "GET", f"/_fastws/{target}")
            try:
                transport, protocol = await loop.create_connection(lambda: _SSE(request, on_event, done), "127.0.0.1", self.port)
            except OSError as exc:
                st.error(f"sse: connect: {type(exc).__name__}")
                failures += 1
                if failures > 3:
                    raise Failed("sse: cannot open the stream") from exc
                await asyncio.sleep(0.05)
                continue
            try:
                await done
            finally:
                transport.close()
            if protocol.status != 200:
                raise Failed(f"sse: HTTP {protocol.status}")
            if self.close_info is None and not state["recycle"]:
                st.error("sse: the stream ended without recycle or close")
                failures += 1
                if failures > 3:
                    raise Failed("sse: the stream keeps ending")
            if state["recycle"]:
                failures = 0

    async def poll(self) -> None:
        st = self.stats
        failures = 0
        while self.close_info is None:
            try:
                status, answer = await self.request("GET", "poll", extra=f"&last={self.last_down}", timeout=POLL_TIMEOUT)
            except (TimeoutError, OSError) as exc:
                st.error(f"poll: {type(exc).__name__}")
                failures += 1
                if failures > 3:
                    raise Failed("poll: requests keep failing") from exc
                await asyncio.sleep(0.05)
                continue
            if status != 200:
                raise Failed(f"poll: HTTP {status} {answer[:200]!r}")
            failures = 0
            doc = json.loads(answer)
            if not doc["messages"] and doc["close"] is None:
                st.note("polling: empty answers")
            for seq, kind, data in doc["messages"]:
                self.down(seq, kind, data)
            if doc["close"] is not None:
                self.session_closed(doc["close"])

    async def downstream(self) -> None:
        try:
            await (self.stream_sse() if self.kind == "sse" else self.poll())
        finally:
            self.down_done.set()

    # -- the session ---------------------------------------------------------------

    async def run(self, drain: float) -> None:
        st = self.stats
        status, answer = await self.request("POST", "open", {"path": PATH, "transport": self.kind})
        if status != 200:
            raise Failed(f"open: HTTP {status} {answer[:200]!r}")
        doc = json.loads(answer)
        self.query = f"s={quote(doc['session'])}&t={quote(doc['token'])}"
        down: asyncio.Future[None] = asyncio.ensure_future(self.downstream())
        up: asyncio.Future[None] | None = None
        try:
            if self.kind == "sse":
                await asyncio.wait_for(self.ready.wait(), REQUEST_TIMEOUT)
            up = asyncio.ensure_future(self.uploader())
            self.queue(self.inflight)
            # Run until stopped, then until drained (every echo back) or the drain time is over.
            stopper: asyncio.Future[Any] = asyncio.ensure_future(self.stopped.wait())
            await asyncio.wait([down, up, stopper], return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            for task in (down, up):
                if task.done() and not self.stopping:
                    task.result()  # raises what failed it
                    raise Failed(f"{self.kind}: the session ended during the run")
            try:
                await asyncio.wait_for(self.drained.wait(), drain)
            except TimeoutError:
                st.error(f"echo never received ({drain:g} s after the window): messages lost", len(self.outstanding))
            self.wake.set()
            if not up.done():
                await asyncio.wait_for(up, REQUEST_TIMEOUT)
            up.result()
            if self.close_info is not None:
                return
            # The last acknowledgement, then the close: the stream must end with close 1000.
            if self.kind == "sse":
                await self.post([], self.last_down)
            self.closing = True
            status, answer = await self.request("POST", "close", {"code": 1000, "reason": ""})
            if status != 200:
                st.error(f"close: HTTP {status}")
            try:
                await asyncio.wait_for(self.down_done.wait(), REQUEST_TIMEOUT)
            except TimeoutError:
                st.error(f"{self.kind}: no close event {REQUEST_TIMEOUT:g} s after POST close")
            else:
                down.result()
                code = self.close_info.get("code") if self.close_info is not None else None
                if code != 1000:
                    st.error(f"{self.kind}: close event with code {code} (expected 1000)")
        finally:
            for task in [down, *([up] if up is not None else [])]:
                if not task.done():
                    task.cancel()


class SSEClient(HTTPClient):
    kind = "sse"


class PollingClient(HTTPClient):
    kind = "polling"


CLIENTS: dict[str, type[Client]] = {"websocket": WSClient, "sse": SSEClient, "polling": PollingClient}


# -- one run: a fresh server, C clients, the window ---------------------------


def _cpu_snapshot(server: Any) -> dict[str, float]:
    import psutil

    t = server.cpu_times()
    me = resource.getrusage(resource.RUSAGE_SELF)
    machine = psutil.cpu_times()
    idle = machine.idle + getattr(machine, "iowait", 0.0)
    return {
        "time": time.monotonic(),
        "server": t.user + t.system,
        "server_sys": t.system,
        "client": me.ru_utime + me.ru_stime,
        "busy": sum(machine) - idle - getattr(machine, "guest", 0.0) - getattr(machine, "guest_nice", 0.0),
        # Interrupt time is charged to no process: loopback TCP of this very run is much of it.
        "irq": getattr(machine, "irq", 0.0) + getattr(machine, "softirq", 0.0),
    }


def _percentile(sorted_ns: list[int], q: float) -> float | None:
    if not sorted_ns:
        return None
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1e6


async def measure(transport: str, port: int, server_pid: int, opts: argparse.Namespace) -> dict[str, Any]:
    import aiohttp
    import psutil

    server = psutil.Process(server_pid)
    stats = Stats()
    cls = CLIENTS[transport]
    clients = [cls(i, stats, opts.inflight, port) for i in range(opts.clients)]
    http = aiohttp.ClientSession() if transport == "websocket" else None
    for c in clients:
        if isinstance(c, WSClient):
            c.http = http
    failures: list[str] = []

    async def guarded(c: Client) -> None:
        try:
            await c.run(opts.drain)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a client's failure is reported, the run goes on
            failures.append(f"client {c.cid}: {type(exc).__name__}: {exc}"[:300])
            c.drained.set()

    tasks = [asyncio.ensure_future(guarded(c)) for c in clients]
    try:
        await asyncio.sleep(opts.warmup)
        stats.measuring = True
        before = _cpu_snapshot(server)
        await asyncio.sleep(opts.duration)
        after = _cpu_snapshot(server)
        stats.measuring = False
        for c in clients:
            c.stop()
        _, pending = await asyncio.wait(tasks, timeout=opts.drain + 3 * REQUEST_TIMEOUT)
        for t in pending:
            t.cancel()
        if pending:
            failures.append(f"{len(pending)} client(s) did not finish after the window (cancelled)")
            await asyncio.wait(pending, timeout=5)
    finally:
        if http is not None:
            await http.close()
    window = after["time"] - before["time"]
    server_cpu = after["server"] - before["server"]
    client_cpu = after["client"] - before["client"]
    irq = after["irq"] - before["irq"]
    other = max(0.0, (after["busy"] - before["busy"]) - irq - server_cpu - client_cpu)
    lat = sorted(stats.latencies)
    received = stats.received
    return {
        "window_s": window,
        "messages": received,
        "rate": received / window if window > 0 else None,
        "p50_ms": _percentile(lat, 0.50),
        "p90_ms": _percentile(lat, 0.90),
        "p99_ms": _percentile(lat, 0.99),
        "max_ms": lat[-1] / 1e6 if lat else None,
        "server_cpu_pct": 100 * server_cpu / window,
        "server_us_per_msg": 1e6 * server_cpu / received if received else None,
        # The kernel's share of the server's CPU (TCP connections, system calls).
        "server_sys_pct_of_cpu": 100 * (after["server_sys"] - before["server_sys"]) / server_cpu if server_cpu > 0 else None,
        "client_cpu_pct": 100 * client_cpu / window,
        "other_cpu_pct": 100 * other / window,
        "irq_cpu_pct": 100 * irq / window,
        "requests_per_msg": stats.requests / received if received else None,
        "sent_total": stats.sent,
        "echoed_total": stats.echoed,
        "errors": dict(stats.errors),
        "info": dict(stats.info),
        "client_failures": failures,
    }


def _wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            status, _ = _run_loop(http_request(port, "GET", "/healthz", timeout=1.0))
            if status == 200:
                return True
        except (TimeoutError, OSError, ValueError, IndexError):
            pass
        time.sleep(0.05)
    return False


def _run_loop(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def run_one(transport: str, opts: argparse.Namespace, server_cpus: set[int] | None) -> dict[str, Any]:
    """A fresh ``fastws serve --fallback``, the clients of ``transport`` against it, its log."""
    port = _free_port()
    cmd = [
        sys.executable, "-m", "fastws", "serve", "--fallback", "--port", str(port), "--no-access-log",
        "--timeout-graceful-shutdown", "2",
    ]  # fmt: skip
    row: dict[str, Any] = {"transport": transport, "port": port, "fatal": [], "result": None}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.sched_setaffinity(0, server_cpus)) if server_cpus else None,
        )  # fmt: skip
        try:
            if not _wait_ready(proc, port):
                row["fatal"].append(f"the server did not start (exit status {proc.poll()})")
            else:
                try:
                    row["result"] = _run_loop(measure(transport, port, proc.pid, opts))
                except Exception as exc:  # noqa: BLE001 - reported, not hidden
                    row["fatal"].append(f"the run failed: {type(exc).__name__}: {exc}"[:500])
                if proc.poll() is not None:
                    row["fatal"].append(f"the server died during the run (exit status {proc.returncode})")
        finally:
            row["server_exit"] = _stop(proc)
        log.seek(0)
        lines = log.read().decode("utf-8", "replace").splitlines()
    trouble = [ln for ln in lines if " WARNING " in ln or " ERROR " in ln or " CRITICAL " in ln or ln.startswith("Traceback")]
    row["server_log_trouble"] = trouble[:50]
    row["server_log_trouble_count"] = len(trouble)
    row["server_log_tail"] = lines[-15:]
    result = row["result"]
    if result is not None:
        if result["client_failures"] and len(result["client_failures"]) == opts.clients:
            row["fatal"].append("every client failed")
        if not result["messages"]:
            row["fatal"].append("no echo received in the window")
    return row


def errors_total(row: dict[str, Any]) -> int:
    r = row["result"] or {}
    return int(sum((r.get("errors") or {}).values())) + len(r.get("client_failures") or []) + len(row["fatal"])


# -- summary ----------------------------------------------------------------


def _median(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarise(runs: list[dict[str, Any]], transports: list[str]) -> list[dict[str, Any]]:
    out = []
    for name in transports:
        mine = [r for r in runs if r["transport"] == name]
        good = [r["result"] for r in mine if not r["fatal"] and r["result"] is not None]

        def col(key: str, good: list[dict[str, Any]] = good) -> list[Any]:
            return [g[key] for g in good if g.get(key) is not None]

        errors: dict[str, int] = {}
        info: dict[str, int] = {}
        for r in mine:
            for k, v in ((r["result"] or {}).get("errors") or {}).items():
                errors[k] = errors.get(k, 0) + v
            for k, v in ((r["result"] or {}).get("info") or {}).items():
                if "(sum)" not in k and "POSTs with" not in k:
                    info[k] = info.get(k, 0) + v
        out.append({
            "transport": name,
            "rounds": len(mine),
            "good_rounds": len(good),
            "rate": _median(col("rate")),
            "rate_min": min(col("rate"), default=None),
            "rate_max": max(col("rate"), default=None),
            "p50_ms": _median(col("p50_ms")),
            "p99_ms": _median(col("p99_ms")),
            "p99_min": min(col("p99_ms"), default=None),
            "p99_max": max(col("p99_ms"), default=None),
            "server_us_per_msg": _median(col("server_us_per_msg")),
            "server_cpu_pct": _median(col("server_cpu_pct")),
            "client_cpu_pct": _median(col("client_cpu_pct")),
            "other_cpu_pct": _median(col("other_cpu_pct")),
            "requests_per_msg": _median(col("requests_per_msg")),
            "client_saturated_rounds": sum(1 for g in good if g["client_cpu_pct"] >= SATURATED),
            "errors": errors,
            "info": info,
            "irq_cpu_pct": _median(col("irq_cpu_pct")),
            "errors_total": sum(errors_total(r) for r in mine),
            "client_failures": [f for r in mine for f in ((r["result"] or {}).get("client_failures") or [])],
            "failed": [f"round {r['round']}: {f}" for r in mine for f in r["fatal"]],
            "server_log_trouble": sum(r["server_log_trouble_count"] for r in mine),
        })  # fmt: skip
    return out


def _n(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def _table(headers: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    """Aligned columns: the first ``left`` to the left, the others to the right."""
    widths = [max(len(x) for x in col) for col in zip(headers, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]


def format_summary(summary: list[dict[str, Any]]) -> str:
    ref = next((s for s in summary if s["transport"] == "websocket"), {})
    headers = [
        "transport", "msg/s", "min-max", "vs ws", "p50 ms", "p99 ms", "p99 min-max", "vs ws",
        "srv us/msg", "vs ws", "srv CPU", "client CPU", "other", "req/msg", "errors", "rounds",
    ]  # fmt: skip
    rows = []
    for s in summary:
        if not s["good_rounds"]:
            rows.append([s["transport"], "FAILED", *["-"] * 12, str(s["errors_total"]), f"0/{s['rounds']}"])
            continue
        sat = "!" if s["client_saturated_rounds"] else ""
        rows.append([
            s["transport"],
            _n(s["rate"], ",.0f"),
            f"{s['rate_min']:,.0f}-{s['rate_max']:,.0f}",
            _ratio(s["rate"], ref.get("rate")),
            _n(s["p50_ms"], ".2f"),
            _n(s["p99_ms"], ".2f"),
            f"{s['p99_min']:.2f}-{s['p99_max']:.2f}",
            _ratio(s["p99_ms"], ref.get("p99_ms")),
            _n(s["server_us_per_msg"], ".1f"),
            _ratio(s["server_us_per_msg"], ref.get("server_us_per_msg")),
            _n(s["server_cpu_pct"], ".0f") + "%",
            _n(s["client_cpu_pct"], ".0f") + "%" + sat,
            _n(s["other_cpu_pct"], ".0f") + "%",
            _n(s["requests_per_msg"], ".2f"),
            str(s["errors_total"]),
            f"{s['good_rounds']}/{s['rounds']}",
        ])  # fmt: skip
    out = _table(headers, rows)
    notes = []
    for s in summary:
        if s["client_saturated_rounds"]:
            notes.append(
                f"LOADGEN-BOUND {s['transport']}: the client was at >= {SATURATED:.0f}% of its core in "
                f"{s['client_saturated_rounds']}/{s['good_rounds']} rounds: its msg/s is a lower bound (the load "
                "generator was the bottleneck); srv us/msg still holds"
            )
    for s in summary:
        if s["errors"] or s["failed"] or s["client_failures"]:
            parts = [f"{k}: {v}" for k, v in sorted(s["errors"].items())] + s["client_failures"][:5] + s["failed"]
            notes.append(f"ERRORS {s['transport']}: " + "; ".join(parts))
        if s["server_log_trouble"]:
            notes.append(f"note {s['transport']}: the server logged {s['server_log_trouble']} warning/error line(s) (see below / JSON)")
    for s in summary:
        if s["info"]:
            notes.append(f"note {s['transport']} (all rounds): " + "; ".join(f"{k}: {v:,}" for k, v in sorted(s["info"].items())))
    busy = [s["other_cpu_pct"] for s in summary if s["other_cpu_pct"] is not None and s["other_cpu_pct"] > 25]
    if busy:
        notes.append(
            f"WARNING the machine was busy with other work (up to {max(busy):.0f}% of a core charged to neither "
            "server nor client: column 'other'): rates are disturbed, srv us/msg less so"
        )
    if not any(s["errors_total"] for s in summary):
        notes.append("no errors: every echo matched what was sent, in order, once; every session closed with 1000")
    return "\n".join(out + ([""] + notes if notes else []))


def format_runs(runs: list[dict[str, Any]]) -> str:
    headers = ["round", "transport", "msg/s", "p50 ms", "p99 ms", "max ms", "srv us/msg", "srv CPU", "client CPU",
               "other", "req/msg", "msgs/POST", "errors"]  # fmt: skip
    rows = []
    for r in runs:
        res = r["result"]
        if res is None:
            rows.append([str(r["round"]), r["transport"], "FAILED", *["-"] * 9, str(errors_total(r))])
            continue
        info = res["info"]
        kind = r["transport"]
        posts = info.get(f"{kind}: POSTs with messages")
        per_post = info.get(f"{kind}: messages per POST (sum)", 0) / posts if posts else None
        rows.append([
            str(r["round"]), kind, _n(res["rate"], ",.0f"), _n(res["p50_ms"], ".2f"), _n(res["p99_ms"], ".2f"),
            _n(res["max_ms"], ".1f"), _n(res["server_us_per_msg"], ".1f"), f"{res['server_cpu_pct']:.0f}%",
            f"{res['client_cpu_pct']:.0f}%" + ("!" if res["client_cpu_pct"] >= SATURATED else ""),
            f"{res['other_cpu_pct']:.0f}%", _n(res["requests_per_msg"], ".2f"), _n(per_post, ".2f"),
            str(errors_total(r)) + (" FAILED" if r["fatal"] else ""),
        ])  # fmt: skip
    return "\n".join(_table(headers, rows, left=2))


def describe_machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    probe = subprocess.run(
        [sys.executable, "-c", "import fastws; print('compiled' if fastws.COMPILED else 'pure-python', fastws.__file__)"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", "fastws"))
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": (_git("rev-parse", "--short", "HEAD") or "?") + ("+dirty(fastws/)" if dirty else ""),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "fastws": probe.stdout.strip() or f"? ({probe.stderr.strip()[-200:]})",
        "versions": {d: _version(d) for d in ("uvloop", "aiohttp", "psutil")},
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.fallback", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (sessions / WebSockets)")
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before the window")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are shown)")
    p.add_argument("--inflight", type=int, default=1, help="messages in flight per client")
    p.add_argument("--transports", default=",".join(TRANSPORTS), help="comma-separated, of " + ", ".join(TRANSPORTS))
    p.add_argument("--order", choices=("rotate", "fixed"), default="rotate", help="order of the transports in a round")
    p.add_argument("--drain", type=float, default=5.0, help="seconds after the window for the last echoes to come")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin server and client to different CPUs")
    p.add_argument(
        "--wait-quiet", type=float, default=0.0, metavar="SECONDS",
        help="before each run, wait up to SECONDS for the machine to be idle (shared machines; 0: don't)",
    )  # fmt: skip
    p.add_argument("--quiet-below", type=float, default=15.0, help="'idle' means CPU use under this %% of all cores")
    p.add_argument("--json", metavar="FILE", default=None, help="write configuration, summary and every run here")
    return p


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    transports = [t.strip() for t in opts.transports.split(",") if t.strip()]
    unknown = [t for t in transports if t not in TRANSPORTS]
    if unknown or not transports:
        raise SystemExit(f"bench.fallback: unknown transport(s) {unknown}; known: {', '.join(TRANSPORTS)}")
    if opts.clients < 1 or opts.inflight < 1 or opts.rounds < 1 or opts.duration <= 0:
        raise SystemExit("bench.fallback: --clients, --inflight, --rounds and --duration must be positive")
    server_cpus = client_cpus = None
    avail = sorted(os.sched_getaffinity(0))
    if opts.pin and len(avail) >= 2:
        server_cpus, client_cpus = {avail[0]}, set(avail[1:])
        os.sched_setaffinity(0, client_cpus)
        pin_text = f"pinned: server on CPU {sorted(server_cpus)}, client (this process) on CPU {sorted(client_cpus)}"
    else:
        pin_text = "not pinned" + (" (fewer than 2 CPUs)" if len(avail) < 2 else " (--no-pin)") + ": server and client share the CPUs"
    meta = describe_machine()

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    runs: list[dict[str, Any]] = []
    total = opts.rounds * len(transports)
    try:
        for rnd in range(1, opts.rounds + 1):
            shift = (rnd - 1) % len(transports) if opts.order == "rotate" else 0
            for transport in transports[shift:] + transports[:shift]:
                busy_before = None
                if opts.wait_quiet:
                    busy_before = wait_quiet(opts.wait_quiet, opts.quiet_below)
                print(f"[{len(runs) + 1}/{total}] round {rnd} {transport}: ~{opts.warmup + opts.duration:g} s ...", file=sys.stderr, flush=True)
                row = run_one(transport, opts, server_cpus)
                row["round"] = rnd
                row["machine_busy_before_pct"] = busy_before
                runs.append(row)
                res = row["result"] or {}
                status = "FAILED: " + "; ".join(row["fatal"]) if row["fatal"] else (
                    f"{res['rate']:,.0f} msg/s, p99 {_n(res['p99_ms'], '.2f')} ms, client CPU {res['client_cpu_pct']:.0f}%"
                )
                print(f"    {status}; errors {errors_total(row)}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: summarising the runs done so far", file=sys.stderr)
    summary = summarise(runs, transports)
    v = meta["versions"]
    order = "order rotated each round" if opts.order == "rotate" else "same order each round"
    header = [
        f"fastws HTTP fallback benchmark: echo, {opts.clients} clients x {opts.inflight} in flight x {SIZE} B text; "
        f"{opts.rounds} interleaved rounds ({order}) x {opts.duration:g} s (+{opts.warmup:g} s warmup); medians of rounds",
        f"server: python -m fastws serve --fallback (fastws.demo:EchoHandler), a fresh one per run; fastws {meta['fastws']}",
        f"date {meta['date']}  commit {meta['commit']}",
        f"machine {meta['cpu']}, {meta['cores']} cores, {meta['kernel']}, Python {meta['python']}",
        *([f"before each run: waited up to {opts.wait_quiet:g} s for the machine to be under {opts.quiet_below:g}% busy"] if opts.wait_quiet else []),
        f"{pin_text}; client: one asyncio process (uvloop), websocket = aiohttp, sse/polling = a minimal HTTP/1.1 "
        "client (a new TCP connection per request)",
        "versions " + " ".join(f"{k} {val}" for k, val in v.items()),
        "other: busy CPU of the machine charged to neither server nor client nor interrupts (irq/softirq: in the JSON), "
        "in % of one core",
        "latency: from the client queueing a message to its echo arriving; srv us/msg: server CPU seconds in the window "
        "/ echoes; client CPU in % of one core ('!': >= 90%, the load generator was the bottleneck)",
    ]
    text = "\n".join(header) + "\n\n" + format_summary(summary) + "\n\nper run:\n" + format_runs(runs)
    trouble = [(r["round"], r["transport"], ln) for r in runs for ln in r["server_log_trouble"]]
    if trouble:
        text += "\n\nserver log warnings/errors (first ones per run):\n" + "\n".join(
            f"  round {rnd} {t}: {ln[:240]}" for rnd, t, ln in trouble[:40]
        )
    print(text)
    if opts.json:
        config = dict(vars(opts), transports=transports, server_cpus=sorted(server_cpus or []), client_cpus=sorted(client_cpus or []))
        doc = {"meta": meta, "config": config, "summary": summary, "runs": runs}
        Path(opts.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nwrote {opts.json}", file=sys.stderr)
    bad = len(runs) < total or any(s["errors_total"] or s["failed"] for s in summary)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
