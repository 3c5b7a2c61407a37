"""A WebSocket load generator fast enough not to be the bottleneck.

Scenario "pipelined echo": ``--conns`` connections each keep ``--pipeline``
messages of ``--size`` bytes in flight; every echo that comes back is answered
with one new message, so the server always has work queued. After
``--warmup`` seconds the figures of a ``--duration`` second window are taken:

- messages/s (echoes received in the window / window length);
- round-trip latency percentiles of each message (send timestamps wait in a
  per-connection deque, run-length coded as one ``[count, time]`` per write;
  an echo pops the oldest: echo servers answer in order);
- CPU seconds of the load generator itself (``getrusage``) and of the server
  (``psutil`` on ``--server-pid``, children included), the server's RSS, and
  messages per server CPU-second: the figure that does not care how busy the
  machine was.

Why it is fast: the client is a bare ``asyncio.Protocol`` on uvloop that
speaks HTTP/1.1 for the upgrade itself, then uses fastws' own codec. The
masked message is encoded once; each batch of k echoes parsed from one read
is answered by one ``write`` of k copies of those bytes (pre-built), so the
per-message Python work is a parser step, a compare and a deque pop.

wss:// URLs go through the event loop's TLS (uvloop's SSL transport) with
:func:`client_context`: the server is verified against ``--cafile`` (the
system's CAs without it; ``--insecure``: not at all) and the negotiated
version and cipher are reported; the client's TLS work counts in its CPU.

``fastws bench`` (``fastws.bench``) runs it with a scenario's settings;
``bench/run.py`` runs it as ``python -m fastws.bench.loadgen`` (also
``python -m bench.loadgen``) against several servers. Usage::

    python -m fastws.bench.loadgen ws://127.0.0.1:9001/ --conns 64 --pipeline 16 --size 64 --duration 5
    python -m fastws.bench.loadgen ws://127.0.0.1:9001/ --procs 2 --json
    python -m fastws.bench.loadgen wss://127.0.0.1:9001/ --cafile /tmp/fastws-bench-tls-xyz/cert.pem

Works against any RFC 6455 server (no extension is offered).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib
import importlib.machinery
import json
import math
import os
import random
import resource
import socket
import ssl
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..codec import frame as _frame
from ..codec import handshake as handshake_codec
from ..types import CloseCode
from . import echo

now_ns = echo.now_ns

__all__ = ["LoadConfig", "ServerProbe", "format_report", "main", "run_load"]

CODEC_NAME = "compiled" if Path(str(getattr(_frame, "__file__", ""))).name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)) else "pure-python"
OP_TEXT: int = _frame.OP_TEXT
OP_BINARY: int = _frame.OP_BINARY
OP_CLOSE: int = _frame.OP_CLOSE
OP_PING: int = _frame.OP_PING
OP_PONG: int = _frame.OP_PONG

#: Fraction of a core above which the load generator may be the bottleneck.
SATURATED = 0.90


@dataclass(frozen=True)
class LoadConfig:
    """One load run; sizes in bytes, times in seconds."""

    url: str
    conns: int = 64
    pipeline: int = 16
    size: int = 64
    duration: float = 5.0
    warmup: float = 1.0
    text: bool = False
    procs: int = 1
    #: CPUs the load generator is pinned to (None: not pinned).
    cpus: tuple[int, ...] | None = None
    #: PID of the server to measure; None for no server figures.
    server_pid: int | None = None
    #: For wss:// URLs: the CA certificate(s) to trust (None: the system's),
    #: or no check at all (test certificates), and the one ECDHE curve to
    #: offer (None: OpenSSL's list).
    cafile: str | None = None
    insecure: bool = False
    ecdh_curve: str | None = None
    #: Extra request headers (auth, cookies) and the subprotocol to ask for.
    headers: tuple[tuple[str, str], ...] = ()
    subprotocol: str | None = None
    #: A fixed offered rate in messages/s over all connections (broadcast:
    #: of the sender); None: closed loop, ``pipeline`` in flight each.
    rate: float | None = None
    #: "echo": every connection sends and checks its echoes; "broadcast":
    #: the first connection sends, every connection checks what the server
    #: broadcasts (the first 8 bytes of each message are its send time).
    mode: str = "echo"
    #: Offer permessage-deflate and send JSON-like text compressed.
    compress: bool = False
    #: ws:// with one message in flight: blocking reads in C threads, no
    #: event loop in the round trip (the rr scenario).
    blocking: bool = False
    connect_timeout: float = 10.0
    close_timeout: float = 3.0


# -- TLS ----------------------------------------------------------------------


def client_context(cafile: str | None, insecure: bool = False, ecdh_curve: str | None = None) -> ssl.SSLContext:
    """The load's TLS context: verify against ``cafile`` (the system's CAs
    when None), or not at all with ``insecure``; ``ecdh_curve`` pins the key
    exchange (a comparison runner offers the servers' one group only, so no
    handshake needs a HelloRetryRequest)."""
    context = ssl.create_default_context(cafile=cafile)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if ecdh_curve is not None:
        context.set_ecdh_curve(ecdh_curve)
    return context


def describe_tls(ssl_object: Any) -> str | None:
    """``TLSv1.3 TLS_AES_256_GCM_SHA384``, for the report."""
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    return f"{ssl_object.version()} {cipher[0] if cipher else '?'}"


# -- server side measurements ----------------------------------------------


class ServerProbe:
    """CPU time and RSS of a server process and its children (workers)."""

    def __init__(self, pid: int) -> None:
        psutil: Any = importlib.import_module("psutil")  # optional: server figures only

        self._psutil = psutil
        self.pid = pid
        self._proc = psutil.Process(pid)
        self.name = " ".join(self._proc.cmdline()[:4]) or self._proc.name()

    def sample(self) -> tuple[float, int]:
        """``(cpu_seconds, rss_bytes)`` summed over the process tree."""
        procs = [self._proc]
        try:
            procs += self._proc.children(recursive=True)
        except self._psutil.Error:
            pass
        cpu = 0.0
        rss = 0
        for p in procs:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    cpu += t.user + t.system
                    rss += p.memory_info().rss
            except self._psutil.Error:
                pass  # a worker that just exited: its time is lost, rarely
        return cpu, rss


def find_listener_pid(host: str, port: int) -> int | None:
    """The PID listening on ``port`` (local servers only), or None."""
    try:
        psutil: Any = importlib.import_module("psutil")

        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return int(c.pid)
    except Exception:  # noqa: BLE001 - best effort: no permission, no psutil
        return None
    return None


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- the client ------------------------------------------------------------


def message_payload(cfg: LoadConfig) -> bytes:
    """The message a run sends: ASCII for text, random bytes for binary,
    JSON-like text when compressed (what permessage-deflate is for)."""
    if cfg.compress:
        record = '{"seq":%d,"user":"user-%03d","event":"price_update","symbol":"ACME","bid":%d.25,"ask":%d.75,"tags":["live","eu"]}'
        text = ",".join(record % (i, i % 97, 100 + i % 13, 101 + i % 13) for i in range(cfg.size // 64 + 2))
        return ("[" + text)[: cfg.size].encode()
    if cfg.text:
        return (b"0123456789abcdef" * (cfg.size // 16 + 1))[: cfg.size]
    # The same bytes in every load process (a broadcast crosses them).
    return random.Random(cfg.size).randbytes(cfg.size)


class _Shared:
    """State of one load-generator process, shared by its connections."""

    __slots__ = (
        "frame",
        "batches",
        "payload",
        "opcode",
        "mask",
        "hist",
        "received",
        "reads",
        "protocol_errors",
        "lost",
        "unexpected_closes",
        "error_samples",
        "extra_headers",
        "deflate",
        "stamped",
    )

    def __init__(self, cfg: LoadConfig) -> None:
        lines = [f"{name}: {value}\r\n" for name, value in cfg.headers]
        if cfg.subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {cfg.subprotocol}\r\n")
        if cfg.compress:
            # Our messages are each compressed alone (one frame, built once);
            # the server may keep its context: we inflate in order.
            lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n")
        self.extra_headers = "".join(lines)
        self.payload = message_payload(cfg)
        self.opcode = OP_TEXT if cfg.text or cfg.compress else OP_BINARY
        self.mask = os.urandom(4)
        self.deflate = cfg.compress
        self.stamped = cfg.mode == "broadcast"
        if cfg.compress:
            packer = zlib.compressobj(6, zlib.DEFLATED, -15)
            body = packer.compress(self.payload) + packer.flush(zlib.Z_SYNC_FLUSH)
            self.frame = _frame.encode_frame(self.opcode, body[:-4], rsv1=True, mask=self.mask)
        else:
            # One masked frame, encoded once; batches[k] is k of them back to back.
            self.frame = _frame.encode_frame(self.opcode, self.payload, mask=self.mask)
        kmax = max(1, min(cfg.pipeline, 2**20 // len(self.frame)))
        self.batches = [self.frame * k for k in range(kmax + 1)]
        self.hist = echo.Histogram()
        self.received = 0  #: replies taken off the wire, right or wrong
        self.reads = 0  #: data_received calls with frames (batching diagnostic)
        self.protocol_errors = 0
        self.lost = 0
        self.unexpected_closes = 0
        self.error_samples: list[str] = []

    def batch(self, n: int) -> bytes:
        """``n`` copies of the masked frame, back to back."""
        return self.batches[n] if n < len(self.batches) else bytes(self.frame * n)

    def stamped_frame(self, now: int) -> bytes:
        """The broadcast message sent at ``now``: its first 8 bytes are
        ``now`` (little-endian ns), masked like the rest."""
        stamp = now.to_bytes(8, "little")
        head = len(self.frame) - len(self.payload)
        masked = bytes(b ^ self.mask[i % 4] for i, b in enumerate(stamp))
        return bytes(self.frame[:head] + masked + self.frame[head + 8 :])

    def error(self, text: str) -> None:
        if len(self.error_samples) < 5:
            self.error_samples.append(text)


def upgrade_request(key: bytes, host: str, path: str, extra_headers: str) -> bytes:
    """The HTTP/1.1 upgrade request of a load connection."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n"
        "User-Agent: fastws-bench\r\n" + extra_headers + "\r\n"
    ).encode("latin-1")


def check_upgrade(head: str, key: bytes, deflate: bool) -> str | None:
    """What is wrong with the response head to an upgrade (None: nothing)."""
    lines = head.split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or status[1] != "101":
        return f"server answered {lines[0]!r} instead of 101"
    accept = ""
    extensions = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "sec-websocket-accept":
            accept = value.strip()
        elif name == "sec-websocket-extensions":
            extensions.append(value.strip())
    if accept.encode() != handshake_codec.accept_key(key):
        return f"bad Sec-WebSocket-Accept {accept!r}"
    if deflate and not any(e.split(";")[0].strip() == "permessage-deflate" for e in extensions):
        return "the server did not accept permessage-deflate (the compressed scenario needs it)"
    return None


class EchoClient(asyncio.Protocol):
    """One connection: the handshake by hand, then the load. Its replies
    go through a compiled :class:`~fastws.bench._echo.EchoStream`."""

    __slots__ = (
        "shared",
        "request",
        "key",
        "transport",
        "opened",
        "closed",
        "stream",
        "inflater",
        "sending",
        "is_open",
        "closing",
        "head",
        "due",
        "sender",
        "own",
    )

    def __init__(self, shared: _Shared, host: str, path: str, opened: asyncio.Future[None], closed: asyncio.Future[None]) -> None:
        self.shared = shared
        self.key = base64.b64encode(os.urandom(16))
        self.request = upgrade_request(self.key, host, path, shared.extra_headers)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.opened = opened
        self.closed = closed
        self.stream: Any = echo.EchoStream(
            shared.opcode, shared.payload, shared.hist, stamped=shared.stamped, deflate=shared.deflate
        )
        self.inflater: Any = zlib.decompressobj(-15) if shared.deflate else None
        self.sending = False
        self.is_open = False
        self.closing = False
        self.head = b""
        self.due = 0  #: --rate: when this connection's next message is due (ns)
        self.sender = False  #: broadcast: this connection sends
        self.own = 0  #: broadcast sender: messages sent and not yet back

    @property
    def in_flight(self) -> int:
        """Messages sent and not answered yet."""
        return self.own if self.shared.stamped else int(self.stream.in_flight)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.is_open:
            self._frames(data)
        else:
            self._handshake(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing and self.is_open:
            self.shared.lost += 1
            self.shared.error(f"connection lost during the run: {exc!r}")
        self.is_open = False
        self.sending = False
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost during the handshake: {exc!r}"))
        if not self.closed.done():
            self.closed.set_result(None)

    # handshake

    def _handshake(self, data: bytes) -> None:
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > 65536:
                self._refuse("handshake response head too large")
            return
        head, rest = self.head[:end].decode("latin-1"), self.head[end + 4 :]
        self.head = b""
        problem = check_upgrade(head, self.key, self.shared.deflate)
        if problem is not None:
            self._refuse(problem)
            return
        self.is_open = True
        self.opened.set_result(None)
        if rest:
            self._frames(rest)

    def _refuse(self, why: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(why))
        self.transport.abort()

    # frames

    def start(self, now: int, pipeline: int) -> None:
        """Put ``pipeline`` messages in flight."""
        self.sending = True
        self.send(pipeline, now)

    def send(self, n: int, now: int, step: int = 0) -> None:
        """Write ``n`` messages, due from ``now`` one every ``step`` ns."""
        shared = self.shared
        if shared.stamped:
            self.transport.write(shared.stamped_frame(now) * n)
            self.own += n
        else:
            self.transport.write(shared.batch(n))
            self.stream.sent(n, now, step)

    def _frames(self, data: bytes | memoryview) -> None:
        now = now_ns()
        shared = self.shared
        shared.reads += 1
        stream = self.stream
        before = stream.in_flight if not shared.stamped else stream.matched
        stream.feed(data, now)
        if stream.events:
            self._events(now)
        # Replies taken (right or wrong) free as many places in flight.
        if shared.stamped:
            n = stream.matched - before
            shared.received += n
            if self.sender:
                n = min(n, self.own)  # what came back of ours (all of it: one sender)
                self.own -= n
            else:
                n = 0
        else:
            n = before - stream.in_flight
            shared.received += n
        if n and self.sending and not self.due:
            self.send(n, now)

    def _events(self, now: int) -> None:
        """Handle what the stream could not: pings, closes, wrong replies,
        compressed messages, protocol errors."""
        shared = self.shared
        events = self.stream.events
        for kind, code, detail in events:
            if kind == echo.EV_DEFLATED:
                try:
                    text = self.inflater.decompress(detail + b"\x00\x00\xff\xff")
                except zlib.error as exc:
                    ok = False
                    shared.error(f"reply does not inflate: {exc}")
                else:
                    ok = text == shared.payload
                    if not ok:
                        shared.error(f"inflated reply differs from the message sent ({len(text)} bytes, sent {len(shared.payload)})")
                self.stream.settle(ok, now)
            elif kind == echo.EV_MISMATCH:
                shared.error(detail)
            elif kind == echo.EV_ERROR:
                shared.protocol_errors += 1
                shared.error(f"protocol error {code}: {detail}")
                self.closing = True
                self.transport.abort()
            elif code == OP_PING:
                self.transport.write(_frame.encode_frame(OP_PONG, detail, mask=shared.mask))
            elif code == OP_CLOSE:
                if not self.closing:
                    shared.unexpected_closes += 1
                    shared.error(f"server closed the connection: {_frame.parse_close(detail)}")
                    self.closing = True
                    self.transport.write(_frame.encode_frame(OP_CLOSE, detail[:2], mask=shared.mask))
                self.sending = False
        events.clear()

    def stop(self) -> None:
        """Stop sending and start the closing handshake (1000)."""
        self.sending = False
        if self.is_open and not self.closing and not self.transport.is_closing():
            self.closing = True
            self.transport.write(_frame.encode_frame(OP_CLOSE, _frame.close_payload(CloseCode.NORMAL_CLOSURE, ""), mask=self.shared.mask))


class _TlsReads(asyncio.BufferedProtocol):
    """An :class:`EchoClient` on a TLS transport, fed through one reusable buffer.

    uvloop's SSL transport hands a plain ``Protocol`` the result of
    ``SSLObject.read(256 KiB)`` per TLS record: a fresh 256 KiB ``bytes``
    (an ``mmap`` and a ``munmap`` in the allocator) for each record, which
    made the client, not the server, the limit against a server that sends
    one small record per message. A ``BufferedProtocol`` gets the records
    decrypted into its own buffer, which the client parses in place.
    """

    __slots__ = ("client", "view")

    def __init__(self, client: EchoClient) -> None:
        self.client = client
        self.view = memoryview(bytearray(2**18))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client.connection_made(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        if self.client.is_open:
            self.client._frames(self.view[:nbytes])  # parsed in place, before the next read
        else:
            self.client.data_received(bytes(self.view[:nbytes]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.connection_lost(exc)


@dataclass
class ProcResult:
    """What one load-generator process measured in its window."""

    messages: int = 0
    reads: int = 0
    window: float = 0.0
    cpu: float = 0.0
    conns: int = 0
    #: Round trips (or deliveries) of the window: echo.Histogram.to_bytes().
    hist: bytes = b""
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    fatal: str | None = None
    #: TLS version and cipher of the connections (None: ws://).
    tls: str | None = None
    #: Messages/s every 0.5 s from the first send: [seconds, rate] pairs.
    timeline: list[list[float]] = field(default_factory=list)
    #: Broadcast: messages the sender sent in the window.
    sent: int = 0
    #: --rate: messages due but not sent because the in-flight cap was full,
    #: and the largest delay of a write against its schedule (ns).
    skipped: int = 0
    lag: int = 0
    #: Broadcast, the whole run: messages sent (the sender's process), and
    #: messages that reached this process's connections.
    sent_total: int = 0
    delivered_total: int = 0
    #: How the replies were read: "event loop" or "blocking threads".
    io: str = "event loop"


class _Target:
    """Where a run connects: host, port, path, Host header, TLS context."""

    def __init__(self, cfg: LoadConfig) -> None:
        url = urlsplit(cfg.url)
        if url.scheme not in ("ws", "wss"):
            raise ValueError(f"only ws:// and wss:// URLs are supported, not {cfg.url!r}")
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or _default_port(url.scheme)
        self.context = client_context(cfg.cafile, cfg.insecure, cfg.ecdh_curve) if url.scheme == "wss" else None
        self.path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self.netloc = url.netloc


#: --rate: the most messages one connection may have in flight; what is due
#: beyond it is counted as skipped (the server is not keeping up).
RATE_IN_FLIGHT_CAP = 65536


async def _drive(
    cfg: LoadConfig,
    conns: int,
    sync: Callable[[], None] | None = None,
    on_window: Callable[[str], None] | None = None,
    progress: Progress | None = None,
    first_index: int = 0,
) -> ProcResult:
    """Run ``conns`` connections through connect, warmup, window, close."""
    target = _Target(cfg)
    if cfg.blocking and target.context is None:
        return await asyncio.get_running_loop().run_in_executor(None, _drive_blocking, cfg, conns, target, sync, on_window, progress)
    loop = asyncio.get_running_loop()
    shared = _Shared(cfg)
    clients: list[EchoClient] = []
    closed: list[asyncio.Future[None]] = []

    async def connect_one() -> None:
        opened: asyncio.Future[None] = loop.create_future()
        done: asyncio.Future[None] = loop.create_future()
        client = EchoClient(shared, target.netloc, target.path, opened, done)
        protocol: asyncio.BaseProtocol = client if target.context is None else _TlsReads(client)
        await loop.create_connection(
            lambda: protocol, target.host, target.port, ssl=target.context, server_hostname=target.host if target.context else None
        )
        clients.append(client)
        closed.append(done)
        await opened

    # Connect in waves so that a small listen backlog is not overrun.
    try:
        for start in range(0, conns, 64):
            wave = [connect_one() for _ in range(start, min(conns, start + 64))]
            await asyncio.wait_for(asyncio.gather(*wave), cfg.connect_timeout)
    except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
        for c in clients:
            if c.transport is not None:
                c.transport.abort()
        return ProcResult(fatal=f"could not open {conns} connections to {cfg.url}: {exc!r}")
    if sync is not None:
        sync()  # every process connected: start together
    now = now_ns()
    # broadcast: the first connection of the first process is the sender
    senders = (clients[:1] if first_index == 0 else []) if shared.stamped else clients
    pacer = None
    skipped = [0]
    lag = [0]
    if cfg.rate:
        # A fixed offered rate, spread evenly over the connections: each
        # message is timed from when it was due, not from when it was sent.
        step = max(1, int(1e9 * cfg.conns / cfg.rate)) if not shared.stamped else max(1, int(1e9 / cfg.rate))
        for i, c in enumerate(senders):
            c.sending = True
            c.due = now + (step * (first_index + i)) // max(1, cfg.conns if not shared.stamped else 1)
        pacer = asyncio.ensure_future(_pace(senders, step, skipped, lag))
    else:
        for c in senders:
            c.start(now, cfg.pipeline)
    for c in senders:
        c.sender = True
    timeline: list[list[float]] = []
    ticker = asyncio.ensure_future(_tick(cfg, shared, timeline, progress, lambda: sum(c.stream.mismatches for c in clients)))
    await asyncio.sleep(cfg.warmup)
    if on_window is not None:
        on_window("start")
    cpu0 = _self_cpu()
    count0 = shared.received
    reads0 = shared.reads
    sent0 = senders[0].stream.matched if shared.stamped and senders else 0
    skipped0 = skipped[0]
    for c in clients:
        c.stream.recording = True
    t0 = time.perf_counter()
    await asyncio.sleep(cfg.duration)
    t1 = time.perf_counter()
    for c in clients:
        c.stream.recording = False
    count1 = shared.received
    reads1 = shared.reads
    sent1 = senders[0].stream.matched if shared.stamped and senders else 0
    skipped1 = skipped[0]
    cpu1 = _self_cpu()
    if on_window is not None:
        on_window("end")
    ticker.cancel()
    if pacer is not None:
        pacer.cancel()
    # Stop sending, and give what is in flight time to come back before
    # closing: an echo still missing then was dropped by the server (a
    # server may drop what it reads after a close frame; this one was read
    # long before ours).
    for c in clients:
        c.sending = False
    drain_end = time.perf_counter() + cfg.close_timeout
    while any(c.in_flight for c in clients if c.is_open) and time.perf_counter() < drain_end:
        await asyncio.sleep(0.01)
    missing = sum(c.in_flight for c in clients if c.is_open)
    if missing:
        shared.error(f"{missing} message(s) got no echo within {cfg.close_timeout}s (the server dropped them)")
    if shared.stamped:
        # Deliveries still on their way: wait until none came for 0.3 s.
        # Whether every listener had every message is judged over all the
        # processes (run_load), from these totals.
        last, quiet_since = -1, time.perf_counter()
        while time.perf_counter() - quiet_since < 0.3 and time.perf_counter() < drain_end + cfg.close_timeout:
            seen = sum(c.stream.matched + c.stream.mismatches for c in clients)
            if seen != last:
                last, quiet_since = seen, time.perf_counter()
            await asyncio.sleep(0.05)
    for c in clients:
        c.stop()
    _, pending = await asyncio.wait(closed, timeout=cfg.close_timeout)
    unclean = 0
    for c, fut in zip(clients, closed):
        if fut in pending:
            unclean += 1
            c.transport.abort()
    if unclean:
        shared.error(f"{unclean} connection(s) not closed by the server within {cfg.close_timeout}s of our close frame")
    errors = {
        "mismatches": sum(c.stream.mismatches for c in clients),
        "protocol_errors": shared.protocol_errors,
        "connections_lost": shared.lost,
        "server_closes": shared.unexpected_closes,
        "unclean_closes": unclean,
        "missing_echoes": missing,
    }
    return ProcResult(
        messages=count1 - count0,
        reads=reads1 - reads0,
        window=t1 - t0,
        cpu=cpu1 - cpu0,
        conns=len(clients),
        hist=shared.hist.to_bytes(),
        errors={k: v for k, v in errors.items() if v},
        error_samples=shared.error_samples,
        tls=describe_tls(clients[0].transport.get_extra_info("ssl_object")) if target.context and clients else None,
        timeline=timeline,
        sent=sent1 - sent0,
        skipped=skipped1 - skipped0,
        lag=lag[0],
        sent_total=senders[0].stream.matched + senders[0].own if shared.stamped and senders else 0,
        delivered_total=sum(c.stream.matched + c.stream.mismatches for c in clients) if shared.stamped else 0,
    )


async def _pace(clients: list[EchoClient], step: int, skipped: list[int], lag: list[int]) -> None:
    """--rate: every millisecond, send each connection the messages now due.

    Open loop: a slow server does not hold sends back (the echo pipelines),
    so each round trip is timed from its write; how late the writes were
    against the schedule (this loop's timer, our own load) is kept apart,
    in ``lag`` (the largest, ns).
    """
    while True:
        now = now_ns()
        for c in clients:
            if not c.sending or now < c.due:
                continue
            k = (now - c.due) // step + 1
            lag[0] = max(lag[0], now - c.due)  # the oldest message now due
            room = RATE_IN_FLIGHT_CAP - c.in_flight
            if k > room:
                skipped[0] += k - max(0, room)
                k = max(0, room)
            if k:
                c.send(k, now)
            c.due += ((now - c.due) // step + 1) * step
        await asyncio.sleep(0.001)


def _drive_blocking(
    cfg: LoadConfig,
    conns: int,
    target: _Target,
    sync: Callable[[], None] | None,
    on_window: Callable[[str], None] | None,
    progress: Progress | None,
) -> ProcResult:
    """The ``rr`` scenario without an event loop: one thread per connection
    running :meth:`EchoStream.run_blocking` (write, blocking read of the
    reply, in C with the GIL released)."""
    shared = _Shared(cfg)
    socks: list[socket.socket] = []
    streams: list[Any] = []
    try:
        for _ in range(conns):
            sock = socket.create_connection((target.host, target.port), timeout=cfg.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks.append(sock)
            key = base64.b64encode(os.urandom(16))
            sock.sendall(upgrade_request(key, target.netloc, target.path, shared.extra_headers))
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection lost during the handshake")
                head += chunk
                if len(head) > 65536:
                    raise ConnectionError("handshake response head too large")
            end = head.index(b"\r\n\r\n")
            problem = check_upgrade(head[:end].decode("latin-1"), key, shared.deflate)
            if problem is not None:
                raise ConnectionError(problem)
            stream = echo.EchoStream(shared.opcode, shared.payload, shared.hist)
            if head[end + 4 :]:
                stream.feed(head[end + 4 :], now_ns())
            # Blocking from here; a read that waits longer than close_timeout
            # for a reply is an error, not a hang.
            sock.setblocking(True)
            tv = struct.pack("ll", int(cfg.close_timeout), int((cfg.close_timeout % 1) * 1e6))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
            streams.append(stream)
    except (OSError, ConnectionError) as exc:
        for s in socks:
            s.close()
        return ProcResult(fatal=f"could not open {conns} connections to {cfg.url}: {exc!r}")
    if sync is not None:
        sync()
    start = now_ns()
    window_start = start + int(cfg.warmup * 1e9)
    window_end = window_start + int(cfg.duration * 1e9)
    step = max(1, int(1e9 * cfg.conns / cfg.rate)) if cfg.rate else 0
    failures: list[str] = []

    def run(sock: socket.socket, stream: Any) -> None:
        while True:
            why = stream.run_blocking(sock.fileno(), shared.frame, window_start, window_end, window_end, step)
            for kind, code, detail in stream.events:
                if kind == echo.EV_MISMATCH:
                    shared.error(detail)
                elif kind == echo.EV_ERROR:
                    shared.protocol_errors += 1
                    shared.error(f"protocol error {code}: {detail}")
                elif code == OP_PING:
                    sock.sendall(_frame.encode_frame(OP_PONG, detail, mask=shared.mask))
                elif code == OP_CLOSE:
                    shared.unexpected_closes += 1
                    shared.error(f"server closed the connection: {_frame.parse_close(detail)}")
                    sock.sendall(_frame.encode_frame(OP_CLOSE, detail[:2], mask=shared.mask))
            stream.events.clear()
            if why != "events" or stream.closed or stream.failed:
                break
        if why is not None and why != "events":
            failures.append(why)

    threads = [threading.Thread(target=run, args=(s, st), daemon=True) for s, st in zip(socks, streams)]
    for t in threads:
        t.start()
    timeline: list[list[float]] = []
    marks: dict[str, tuple[float, float, int]] = {}
    last_t, last_n = time.perf_counter(), 0
    for which, at in (("start", window_start), ("end", window_end)):
        while (left := at - now_ns()) > 0:
            time.sleep(min(0.5, left / 1e9))
            n = sum(s.matched + s.mismatches for s in streams)
            tick = time.perf_counter()
            if tick - last_t >= 0.45:
                rate = (n - last_n) / (tick - last_t)
                timeline.append([round((now_ns() - start) / 1e9, 3), rate])
                if progress is not None:
                    progress((now_ns() - start) / 1e9, cfg.warmup + cfg.duration, rate, sum(s.mismatches for s in streams) + len(failures))
                last_t, last_n = tick, n
        if on_window is not None:
            on_window(which)
        marks[which] = (time.perf_counter(), _self_cpu(), 0)
    for t in threads:
        t.join(cfg.close_timeout + 1)
    missing = sum(s.in_flight for s in streams)
    unclean = 0
    for sock, stream in zip(socks, streams):
        if not stream.closed and not stream.failed and not any(t.is_alive() for t in threads):
            try:
                sock.sendall(_frame.encode_frame(OP_CLOSE, _frame.close_payload(CloseCode.NORMAL_CLOSURE, ""), mask=shared.mask))
                while sock.recv(65536):
                    pass  # the server's close frame, then EOF
            except OSError:
                unclean += 1
        sock.close()
    for why in failures:
        if why == "EOF":
            shared.lost += 1
        shared.error(f"connection failed during the run: {why}")
    if missing:
        shared.error(f"{missing} message(s) got no echo within {cfg.close_timeout}s (the server dropped them)")
    errors = {
        "mismatches": sum(s.mismatches for s in streams),
        "protocol_errors": shared.protocol_errors,
        "connections_lost": shared.lost + sum(1 for w in failures if w != "EOF"),
        "server_closes": shared.unexpected_closes,
        "unclean_closes": unclean,
        "missing_echoes": missing,
    }
    window = marks["end"][0] - marks["start"][0]
    return ProcResult(
        messages=shared.hist.total,
        reads=shared.hist.total,
        window=window,
        cpu=marks["end"][1] - marks["start"][1],
        conns=len(streams),
        hist=shared.hist.to_bytes(),
        errors={k: v for k, v in errors.items() if v},
        error_samples=shared.error_samples,
        timeline=timeline,
        io="blocking threads",
        lag=max((s.lag_max for s in streams), default=0),
    )


#: Quantiles of the latency curve in the results (and ``--chart``).
CURVE_QUANTILES = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0]

#: ``progress(elapsed_s, total_s, msgs_per_s, errors)``, twice a second.
Progress = Callable[[float, float, float, int], None]


async def _tick(
    cfg: LoadConfig, shared: _Shared, timeline: list[list[float]], progress: Progress | None, mismatches: Callable[[], int]
) -> None:
    """Note the rate every 0.5 s in ``timeline``; report it to ``progress``."""
    start = last_t = time.perf_counter()
    last_n = shared.received
    total = cfg.warmup + cfg.duration
    while True:
        await asyncio.sleep(0.5)
        now = time.perf_counter()
        n = shared.received
        rate = (n - last_n) / (now - last_t)
        timeline.append([round(now - start, 3), rate])
        if progress is not None:
            errors = mismatches() + shared.protocol_errors + shared.lost + shared.unexpected_closes
            progress(now - start, total, rate, errors)
        last_t, last_n = now, n


def _default_port(scheme: str) -> int:
    return 443 if scheme == "wss" else 80


def run_loop(coro: Any) -> Any:
    """Run ``coro`` on uvloop (asyncio without it); its result."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)
    return uvloop.run(coro)


def _pin(cpus: tuple[int, ...] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, set(cpus))


def _child(cfg: LoadConfig, conns: int, first_index: int, barrier: Any, conn: Any) -> None:
    _pin(cfg.cpus)

    def sync() -> None:
        barrier.wait(timeout=cfg.connect_timeout * 3)

    try:
        result = run_loop(_drive(cfg, conns, sync=sync, first_index=first_index))
    except BaseException as exc:  # noqa: BLE001 - report, never hang the parent
        barrier.abort()
        result = ProcResult(fatal=f"load process failed: {exc!r}")
    if result.fatal:
        barrier.abort()
    conn.send(result)
    conn.close()


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_load(cfg: LoadConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Run the scenario and return every figure as a JSON-able dict;
    ``progress`` is called twice a second (one load process only)."""
    probe = ServerProbe(cfg.server_pid) if cfg.server_pid else None
    samples: dict[str, tuple[float, int]] = {}
    rss_idle = probe.sample()[1] if probe else None

    machine: dict[str, float] = {}

    def on_window(which: str) -> None:
        machine[which] = _machine_busy()
        if probe is not None:
            samples[which] = probe.sample()

    results: list[ProcResult]
    if cfg.procs <= 1:
        _pin(cfg.cpus)
        results = [run_loop(_drive(cfg, cfg.conns, on_window=on_window, progress=progress))]
    else:
        import multiprocessing as mp

        # fork: the parent never ran an event loop, and children start fast.
        ctx = mp.get_context("fork")
        shares = [n for n in _split(cfg.conns, cfg.procs) if n]
        barrier = ctx.Barrier(len(shares) + 1)
        pipes = []
        procs = []
        for i, n in enumerate(shares):
            parent_end, child_end = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_child, args=(cfg, n, sum(shares[:i]), barrier, child_end), daemon=True)
            p.start()
            child_end.close()
            pipes.append(parent_end)
            procs.append(p)
        try:
            barrier.wait(timeout=cfg.connect_timeout * 3)
            time.sleep(cfg.warmup)
            on_window("start")
            time.sleep(cfg.duration)
            on_window("end")
        except Exception:  # noqa: BLE001 - BrokenBarrierError: a child failed
            pass
        results = []
        for pipe, p in zip(pipes, procs):
            try:
                if pipe.poll(cfg.close_timeout + cfg.duration + cfg.warmup + 30):
                    results.append(pipe.recv())
                else:
                    results.append(ProcResult(fatal="load process did not report"))
            except EOFError:
                results.append(ProcResult(fatal="load process died"))
            p.join(5)
    busy = machine["end"] - machine["start"] if "start" in machine and "end" in machine else None
    return _summarise(cfg, results, probe, samples, rss_idle, busy)


def _machine_busy() -> float:
    """CPU seconds all cores spent not idle since boot (every process, and
    the kernel's interrupt work, which loopback traffic is partly made of)."""
    try:
        psutil: Any = importlib.import_module("psutil")
    except ImportError:
        return math.nan
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0))


def _summarise(
    cfg: LoadConfig,
    results: list[ProcResult],
    probe: ServerProbe | None,
    samples: dict[str, tuple[float, int]],
    rss_idle: int | None,
    machine_busy: float | None = None,
) -> dict[str, Any]:
    fatal = [r.fatal for r in results if r.fatal]
    good = [r for r in results if not r.fatal]
    messages = sum(r.messages for r in good)
    window = max((r.window for r in good), default=0.0)
    hist = echo.Histogram()
    for r in good:
        hist.merge(echo.Histogram.from_bytes(r.hist))
    # Nothing timed: null figures (JSON has no NaN), "-" in the report.
    quantiles: list[int | None] = list(hist.quantiles([0.50, 0.90, 0.99, 0.999, 1.0])) if hist.total else [None] * 5
    curve = [[q, x / 1e6] for q, x in zip(CURVE_QUANTILES, hist.quantiles(CURVE_QUANTILES))] if hist.total else []
    # Every process's rates, summed slot by slot (they started together).
    timeline: list[list[float]] = []
    for r in good:
        for i, (t, rate) in enumerate(r.timeline):
            if i < len(timeline):
                timeline[i][1] += rate
            else:
                timeline.append([t, rate])
    errors: dict[str, int] = {}
    samples_text: list[str] = []
    for r in good:
        for k, v in r.errors.items():
            errors[k] = errors.get(k, 0) + v
        samples_text += r.error_samples
    if cfg.mode == "broadcast" and good and not fatal:
        # Every connection (the sender's too) must have had every message.
        undelivered = sum(r.sent_total for r in good) * sum(r.conns for r in good) - sum(r.delivered_total for r in good)
        if undelivered > 0:
            errors["missing_deliveries"] = undelivered
            samples_text.insert(0, f"{undelivered} broadcast deliveries missing: not every connection had every message")
    loadgen_cpu = sum(r.cpu for r in good)
    ncpu = len(cfg.cpus) if cfg.cpus else len(os.sched_getaffinity(0))
    # The client is saturated when its processes use (nearly) all the cores
    # they can run on: min(processes, cores available to them).
    loadgen_capacity = min(max(1, len(good)), ncpu)
    out: dict[str, Any] = {
        "url": cfg.url,
        "conns": cfg.conns,
        "conns_open": sum(r.conns for r in good),
        "pipeline": cfg.pipeline,
        "size": cfg.size,
        "text": cfg.text,
        "procs": cfg.procs,
        "warmup_s": cfg.warmup,
        "window_s": round(window, 4),
        "client_codec": CODEC_NAME,
        "client_io": good[0].io if good else None,
        "tls": next((r.tls for r in good if r.tls), None),
        "mode": cfg.mode,
        "compressed": cfg.compress,
        "rate_offered": cfg.rate,
        "rate_skipped": sum(r.skipped for r in good),
        "rate_lag_max_ms": max((r.lag for r in good), default=0) / 1e6 if cfg.rate else None,
        "broadcast_sent": sum(r.sent for r in good) if cfg.mode == "broadcast" else None,
        "broadcast_sent_per_s": sum(r.sent for r in good) / window if cfg.mode == "broadcast" and window else None,
        "messages": messages,
        "msgs_per_s": messages / window if window else 0.0,
        "mbytes_per_s": messages * cfg.size / window / 1e6 if window else 0.0,
        # Echoes per read on the client: how much both sides batch (each
        # read and write is a system call, the main cost of small messages).
        "echoes_per_read": messages / reads if (reads := sum(r.reads for r in good)) else 0.0,
        "latency_ms": dict(zip(("p50", "p90", "p99", "p999", "max"), (None if x is None else x / 1e6 for x in quantiles))),
        "latency_samples": hist.total,
        "loadgen_cpu_s": loadgen_cpu,
        "loadgen_cpu_pct": 100 * loadgen_cpu / window if window else 0.0,
        "loadgen_cores": loadgen_capacity,
        "loadgen_saturated": bool(window) and loadgen_cpu / window >= SATURATED * loadgen_capacity,
        "server_pid": probe.pid if probe else None,
        "server_cpu_s": None,
        "server_cpu_pct": None,
        "server_rss_mib": None,
        "server_rss_idle_mib": None,
        "msgs_per_server_cpu_s": None,
        "machine_busy_pct": 100 * machine_busy / window if machine_busy is not None and window else None,
        "other_cpu_pct": None,
        "errors": errors,
        "error_samples": samples_text[:5],
        "fatal": fatal,
        "latency_curve_ms": curve,
        "timeline": timeline,
    }
    if probe is not None and "start" in samples and "end" in samples and window:
        cpu = samples["end"][0] - samples["start"][0]
        out["server_cpu_s"] = cpu
        out["server_cpu_pct"] = 100 * cpu / window
        out["server_rss_mib"] = samples["end"][1] / 2**20
        out["server_rss_idle_mib"] = rss_idle / 2**20 if rss_idle is not None else None
        out["msgs_per_server_cpu_s"] = messages / cpu if cpu > 0 else None
    if out["machine_busy_pct"] is not None and out["server_cpu_pct"] is not None:
        # What neither process was charged for: other programs on the machine,
        # and kernel work (softirq) not billed to either.
        out["other_cpu_pct"] = max(0.0, out["machine_busy_pct"] - out["server_cpu_pct"] - out["loadgen_cpu_pct"])
    return out


def _fmt_num(x: float | None, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}f}"


def format_latency(lat: dict[str, float | None]) -> str:
    """``p50 0.033  p90 ...  max 4.390 ms`` ("-" for a figure not measured)."""
    names = (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99.9", "p999"), ("max", "max"))
    return "  ".join(f"{label} {_fmt_num(lat[key], 3)}" for label, key in names) + " ms"


def format_report(r: dict[str, Any]) -> str:
    """The human-readable report of one run."""
    if r["fatal"] and not r["conns_open"]:
        return f"fastws bench -> {r['url']}\n  FAILED      " + "\n              ".join(r["fatal"])
    lat = r["latency_ms"]
    kind = "compressed JSON-like text" if r.get("compressed") else "text" if r["text"] else "binary"
    if r.get("mode") == "broadcast":
        what = f"broadcast: 1 sender + {r['conns'] - 1} listeners, {r['size']} B {kind}"
        load = f"{_fmt_num(r['rate_offered'])} msg/s offered by the sender" if r.get("rate_offered") else f"{r['pipeline']} in flight"
    else:
        what = f"echo: {r['conns']} conns x {r['size']} B {kind}"
        load = f"{_fmt_num(r['rate_offered'])} msg/s offered in all" if r.get("rate_offered") else f"{r['pipeline']} in flight each"
    lines = [
        f"fastws bench -> {r['url']}",
        f"  load        {what}, {load}; {r['procs']} load process(es), {r.get('client_io', 'event loop')}; "
        f"client codec {r['client_codec']}",
        *([f"  tls         {r['tls']}"] if r.get("tls") else []),
        f"  window      {r['window_s']:.2f} s after {r['warmup_s']:g} s warmup; {r['conns_open']} connections open",
    ]
    if r.get("mode") == "broadcast":
        lines.append(
            f"  throughput  {_fmt_num(r['msgs_per_s'])} deliveries/s ({_fmt_num(r['broadcast_sent_per_s'])} msg/s sent, "
            f"each to {r['conns_open']} connections)"
        )
    else:
        lines.append(
            f"  throughput  {_fmt_num(r['msgs_per_s'])} msg/s  ({r['mbytes_per_s']:.1f} MB/s of payload each way; "
            f"{r['echoes_per_read']:.1f} echoes per client read)"
        )
    if r.get("rate_offered"):
        lines.append(
            f"  schedule    writes at most {r['rate_lag_max_ms']:.1f} ms behind the offered rate's schedule"
            + (" (the load generator could not keep up)" if r["rate_lag_max_ms"] > 10 else "")
        )
    if r.get("rate_skipped"):
        lines.append(f"  rate        {r['rate_skipped']:,} due messages not sent: {RATE_IN_FLIGHT_CAP} in flight on a connection (the server fell behind)")
    lines += [
        f"  latency     {format_latency(lat)}",
        f"  loadgen CPU {r['loadgen_cpu_s']:.2f} s = {r['loadgen_cpu_pct']:.0f}% of one core "
        f"(limit {100 * r['loadgen_cores']}%)",
    ]
    if r["server_cpu_s"] is not None:
        lines += [
            f"  server CPU  {r['server_cpu_s']:.2f} s = {r['server_cpu_pct']:.0f}% of one core (pid {r['server_pid']})",
            f"  server RSS  {r['server_rss_mib']:.1f} MiB (idle before connecting: {_fmt_num(r['server_rss_idle_mib'], 1)} MiB)",
            f"  efficiency  {_fmt_num(r['msgs_per_server_cpu_s'])} {'deliveries' if r.get('mode') == 'broadcast' else 'msg'} per server CPU-second",
        ]
    if r["machine_busy_pct"] is not None:
        other = r["other_cpu_pct"]
        lines.append(
            f"  machine     {r['machine_busy_pct']:.0f}% CPU busy in all"
            + (f", {other:.0f}% not charged to server or loadgen (other programs, kernel)" if other is not None else "")
        )
    else:
        lines.append("  server      not measured (pass --server-pid)")
    if r["loadgen_saturated"]:
        lines.append(
            "  WARNING     the load generator used ~all of its CPU: it may be the bottleneck; "
            "the rate is a lower bound (try --procs, or compare the server's CPU per message)"
        )
    if r["errors"] or r["fatal"]:
        lines.append(f"  ERRORS      {r['errors']} {'; '.join(r['fatal'])}")
        for s in r["error_samples"]:
            lines.append(f"              {s}")
    else:
        lines.append("  errors      none (every reply matched the message sent)")
    return "\n".join(lines)


def _cpus(text: str) -> tuple[int, ...] | None:
    if text.lower() in ("", "none", "all"):
        return None
    cpus: set[int] = set()
    for part in text.split(","):
        a, _, b = part.partition("-")
        cpus.update(range(int(a), int(b or a) + 1))
    return tuple(sorted(cpus))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastws.bench.loadgen",
        description="Pipelined-echo load against any WebSocket server (ws:// or wss:// URL).",
    )
    p.add_argument("url", help="e.g. ws://127.0.0.1:9001/ or wss://127.0.0.1:9001/")
    p.add_argument("--conns", "-c", type=int, default=64, help="connections (default 64)")
    p.add_argument("--pipeline", "-p", type=int, default=16, help="messages in flight per connection (default 16)")
    p.add_argument("--size", "-s", type=int, default=64, help="message size in bytes (default 64)")
    p.add_argument("--duration", "-d", type=float, default=5.0, help="measured seconds (default 5)")
    p.add_argument("--warmup", "-w", type=float, default=1.0, help="seconds before measuring (default 1)")
    p.add_argument("--text", action="store_true", help="send text (ASCII) messages instead of binary")
    p.add_argument("--procs", type=int, default=1, help="load-generator processes (default 1)")
    p.add_argument("--cpus", type=_cpus, default=None, help="pin the load generator to these CPUs, e.g. 1 or 0-3")
    p.add_argument(
        "--server-pid",
        default="auto",
        help="PID of the server to measure (CPU, RSS); 'auto' (default) finds the local listener of the port; 'none'",
    )
    p.add_argument("--cafile", default=None, help="wss://: trust the server certificate(s) in this PEM file (default: the system's CAs)")
    p.add_argument("--insecure", action="store_true", help="wss://: accept any certificate (test certificates)")
    p.add_argument("--ecdh-curve", default=None, help="wss://: offer only this ECDHE group (e.g. prime256v1)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.conns < 1 or args.pipeline < 1 or args.size < 0 or args.duration <= 0 or args.procs < 1:
        build_parser().error("--conns, --pipeline, --procs must be >= 1, --size >= 0, --duration > 0")
    pid: int | None
    if args.server_pid == "none":
        pid = None
    elif args.server_pid == "auto":
        u = urlsplit(args.url)
        local = (u.hostname or "") in ("127.0.0.1", "localhost", "::1", "0.0.0.0")
        pid = find_listener_pid(u.hostname or "", u.port or _default_port(u.scheme)) if local else None
    else:
        pid = int(args.server_pid)
    cfg = LoadConfig(
        url=args.url,
        conns=args.conns,
        pipeline=args.pipeline,
        size=args.size,
        duration=args.duration,
        warmup=args.warmup,
        text=args.text,
        procs=args.procs,
        cpus=args.cpus,
        server_pid=pid,
        cafile=args.cafile,
        insecure=args.insecure,
        ecdh_curve=args.ecdh_curve,
    )
    if CODEC_NAME != "compiled":
        print(
            "loadgen: fastws' compiled codec is not built; the pure-Python parser makes the load "
            "generator slow (build with: python setup.py build_ext --inplace)",
            file=sys.stderr,
        )
    result = run_load(cfg)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(format_report(result))
    return 1 if result["fatal"] else 0


if __name__ == "__main__":
    sys.exit(main())
