"""``fastws monitor``: check WebSocket endpoints from outside, the way an
uptime checker does (docs/monitor.md).

:func:`check` runs one check of one endpoint and returns a :class:`Result`:
up or down, the time of each phase (DNS, TCP connect, TLS handshake, HTTP
upgrade to 101, ping round trip, application check), the certificate's
days to expiry, and, when down, a named failure (:data:`FAILURES`).
:class:`~fastws.monitor.schedule.Monitor` runs checks of many endpoints on
a schedule and keeps their uptime.

The client side uses the project's own codec: ``encode_frame`` builds the
masked client frames, ``FrameReader(require_mask=False)`` parses what the
server sends, ``accept_key`` checks the 101. Times come from the monotonic
clock.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import os
import re
import socket
import ssl
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..codec import frame as _frame
from ..codec import handshake as _handshake
from ..types import CloseCode

__all__ = ["FAILURES", "CheckError", "Result", "check"]

#: Every failure a check can name, with what it means.
FAILURES = {
    "url": "the URL is not a ws:// or wss:// URL",
    "dns": "the host name did not resolve",
    "tcp_refused": "nothing listens on the port (TCP connection refused)",
    "tcp_timeout": "the TCP connection did not complete in time",
    "tcp_error": "the TCP connection failed",
    "tls": "the TLS handshake failed",
    "http_status": "the server answered the upgrade with an HTTP status other than 101",
    "bad_handshake": "the 101 was malformed (Upgrade, Connection headers)",
    "bad_accept": "the 101 had a wrong Sec-WebSocket-Accept",
    "no_pong": "no pong came back for the ping in time",
    "unexpected_close": "the server closed the connection (close frame or TCP) when it should not have",
    "wrong_answer": "the answer to --send did not match --expect",
    "protocol_error": "the server broke the WebSocket protocol",
    "timeout": "the check did not complete in time",
}

_MAX_HEAD = 16 * 1024


class CheckError(Exception):
    """A named failure of one phase."""

    def __init__(self, kind: str, message: str, close_code: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.close_code = close_code


@dataclass
class Result:
    """One check of one endpoint. Times are seconds (None: phase not reached)."""

    url: str
    up: bool = False
    #: A key of FAILURES, None when up.
    failure: str | None = None
    #: The failure, as a user would want to read it.
    error: str | None = None
    #: When the check started (Unix time).
    time: float = 0.0
    dns: float | None = None
    connect: float | None = None
    tls: float | None = None
    upgrade: float | None = None
    ping: float | None = None
    answer: float | None = None
    #: The whole check, from start to the end of the closing handshake.
    total: float | None = None
    #: The upgrade's HTTP status and Server header.
    status: int | None = None
    server: str | None = None
    subprotocol: str | None = None
    #: The close code the server sent, if it sent one.
    close_code: int | None = None
    #: Days until the TLS certificate expires (wss:// only).
    cert_days_left: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (the ``--json`` line)."""
        return asdict(self)


def _tls_context(insecure: bool, cafile: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _days_left(ssl_object: Any) -> float | None:
    """Days until the peer certificate's notAfter (None if unknown)."""
    cert = ssl_object.getpeercert()
    if cert and "notAfter" in cert:
        return (ssl.cert_time_to_seconds(cert["notAfter"]) - time.time()) / 86400
    der = ssl_object.getpeercert(binary_form=True)
    if der is None:
        return None
    try:  # not verified (--insecure): read the certificate itself, if cryptography is installed
        x509: Any = importlib.import_module("cryptography.x509")
    except ImportError:
        return None
    not_after = x509.load_der_x509_certificate(der).not_valid_after_utc
    return float(not_after.timestamp() - time.time()) / 86400


class _Frames:
    """Reads server frames from a stream with the project's FrameReader."""

    def __init__(self, reader: asyncio.StreamReader, rest: bytes) -> None:
        self.reader = reader
        self.frames = _frame.FrameReader(require_mask=False, max_message_size=16 * 2**20)
        if rest:
            self.frames.feed_data(rest)

    async def next(self) -> tuple[int, bytes]:
        while True:
            try:
                event = self.frames.next_event()
            except Exception as exc:  # the codec's ProtocolError
                raise CheckError("protocol_error", f"the server broke the protocol: {exc}") from None
            if event is not None:
                return event[0], event[1]
            data = await self.reader.read(65536)
            if not data:
                raise CheckError("unexpected_close", "the server closed the TCP connection without a close frame")
            self.frames.feed_data(data)


def _closed(payload: bytes) -> CheckError:
    code, reason = _frame.parse_close(payload) if payload else (CloseCode.NO_STATUS_RCVD, "")
    return CheckError("unexpected_close", f"the server closed with {code}" + (f" {reason!r}" if reason else ""), code)


async def check(
    url: str,
    *,
    timeout: float = 10.0,
    headers: list[tuple[str, str]] | None = None,
    subprotocol: str | None = None,
    origin: str | None = None,
    insecure: bool = False,
    cafile: str | None = None,
    send: str | None = None,
    expect: str | None = None,
    expect_close: int | None = None,
) -> Result:
    """Check ``url`` once; never raises for a failing endpoint.

    Phases: DNS, TCP connect, TLS (wss://), the HTTP upgrade (101 with the
    right ``Sec-WebSocket-Accept``), a ping and its pong, then with
    ``send`` a text message whose answer must match the regular expression
    ``expect``, or with ``expect_close`` a close frame with that code; then
    a normal close. The whole check is bounded by ``timeout``.
    """
    result = Result(url=url, time=time.time())
    started = time.monotonic()
    writer: asyncio.StreamWriter | None = None
    try:
        writer = await asyncio.wait_for(
            _run(result, url, headers or [], subprotocol, origin, insecure, cafile, send, expect, expect_close, timeout),
            timeout,
        )
        result.up = True
    except CheckError as exc:
        result.failure = exc.kind
        result.error = str(exc)
        if exc.close_code is not None:
            result.close_code = exc.close_code
    except (asyncio.TimeoutError, TimeoutError):
        if result.upgrade is not None and result.ping is None:
            result.failure = "no_pong"
            result.error = f"no pong within {timeout}s of the ping"
        else:
            result.failure = "timeout"
            result.error = f"no answer within {timeout}s ({_phase(result)})"
    finally:
        result.total = time.monotonic() - started
    if writer is not None:
        writer.close()
    return result


def _phase(result: Result) -> str:
    for name, done in (("dns", result.dns), ("TCP connect", result.connect), ("upgrade", result.upgrade), ("ping", result.ping)):
        if done is None:
            return f"during {name}"
    return "after the ping"


async def _run(
    result: Result,
    url: str,
    headers: list[tuple[str, str]],
    subprotocol: str | None,
    origin: str | None,
    insecure: bool,
    cafile: str | None,
    send: str | None,
    expect: str | None,
    expect_close: int | None,
    timeout: float,
) -> asyncio.StreamWriter:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise CheckError("url", f"not a ws:// or wss:// URL: {url!r}")
    secure = parts.scheme == "wss"
    host = parts.hostname
    port = parts.port or (443 if secure else 80)
    loop = asyncio.get_running_loop()

    t = time.monotonic()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise CheckError("dns", f"DNS: {host} did not resolve ({exc.strerror})") from None
    result.dns = time.monotonic() - t

    t = time.monotonic()
    sock = None
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        candidate = socket.socket(family, kind, proto)
        candidate.setblocking(False)
        try:
            await loop.sock_connect(candidate, address)
        except OSError as exc:
            candidate.close()
            last = exc
            continue
        sock = candidate
        break
    if sock is None:
        if isinstance(last, ConnectionRefusedError):
            raise CheckError("tcp_refused", f"TCP: connection to {host}:{port} refused (nothing listens)")
        raise CheckError("tcp_error", f"TCP: cannot connect to {host}:{port}: {last}")
    result.connect = time.monotonic() - t

    t = time.monotonic()
    try:
        if secure:
            reader, writer = await asyncio.open_connection(sock=sock, ssl=_tls_context(insecure, cafile), server_hostname=host)
            result.tls = time.monotonic() - t
            ssl_object = writer.get_extra_info("ssl_object")
            if ssl_object is not None:
                result.cert_days_left = _days_left(ssl_object)
        else:
            reader, writer = await asyncio.open_connection(sock=sock)
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise CheckError("tls", f"TLS: certificate not trusted: {exc.verify_message}") from None
    except (ssl.SSLError, ConnectionError) as exc:
        sock.close()
        raise CheckError("tls", f"TLS: handshake failed: {getattr(exc, 'reason', None) or exc}") from None

    try:
        rest = await _upgrade(result, reader, writer, parts, headers, subprotocol, origin)
        frames = _Frames(reader, rest)
        try:
            await _ping(result, frames, writer)
            if send is not None:
                await _answer(result, frames, writer, send, expect)
        except CheckError as exc:
            if exc.close_code is None or exc.close_code != expect_close:
                raise
            result.close_code = exc.close_code  # the close that was asked for
            return writer
        if expect_close is not None:
            await _expect_close(result, frames, expect_close)
        else:
            writer.write(_frame.encode_frame(_frame.OP_CLOSE, _frame.close_payload(CloseCode.NORMAL_CLOSURE, ""), mask=os.urandom(4)))
    except BaseException:
        writer.close()
        raise
    return writer


async def _upgrade(
    result: Result,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    parts: Any,
    headers: list[tuple[str, str]],
    subprotocol: str | None,
    origin: str | None,
) -> bytes:
    """Send the upgrade request and check the 101; the bytes after its head."""
    t = time.monotonic()
    key = base64.b64encode(os.urandom(16)).decode()
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        "User-Agent: fastws-monitor",
    ]
    if subprotocol:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    if origin:
        lines.append(f"Origin: {origin}")
    lines += [f"{name}: {value}" for name, value in headers]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    head = b""
    while b"\r\n\r\n" not in head:
        data = await reader.read(4096)
        if not data:
            raise CheckError("unexpected_close", "the server closed the connection before answering the upgrade")
        head += data
        if len(head) > _MAX_HEAD:
            raise CheckError("bad_handshake", f"the upgrade answer's head is over {_MAX_HEAD} bytes")
    head, _, rest = head.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    result.server = fields.get("server")
    try:
        result.status = int(status_line.split(" ", 2)[1])
    except (IndexError, ValueError):
        raise CheckError("bad_handshake", f"not an HTTP response: {status_line[:80]!r}") from None
    if result.status != 101:
        server = f" (Server: {result.server})" if result.server else ""
        raise CheckError("http_status", f"HTTP {status_line.split(' ', 1)[1]} instead of 101{server}")
    if fields.get("upgrade", "").lower() != "websocket" or "upgrade" not in fields.get("connection", "").lower():
        raise CheckError("bad_handshake", "the 101 lacks Upgrade: websocket / Connection: Upgrade")
    expected = _handshake.accept_key(key.encode())
    expected = expected.decode() if isinstance(expected, bytes) else expected
    if fields.get("sec-websocket-accept") != expected:
        raise CheckError("bad_accept", f"wrong Sec-WebSocket-Accept: {fields.get('sec-websocket-accept')!r}, expected {expected!r}")
    result.subprotocol = fields.get("sec-websocket-protocol")
    result.upgrade = time.monotonic() - t
    return rest


async def _ping(result: Result, frames: _Frames, writer: asyncio.StreamWriter) -> None:
    t = time.monotonic()
    payload = os.urandom(4)
    writer.write(_frame.encode_frame(_frame.OP_PING, payload, mask=os.urandom(4)))
    while True:
        opcode, data = await frames.next()
        if opcode == _frame.OP_PONG and data == payload:
            break
        if opcode == _frame.OP_CLOSE:
            raise _closed(data)
        # A greeting or other message before the pong: not ours to judge.
    result.ping = time.monotonic() - t


async def _answer(result: Result, frames: _Frames, writer: asyncio.StreamWriter, send: str, expect: str | None) -> None:
    t = time.monotonic()
    writer.write(_frame.encode_frame(_frame.OP_TEXT, send.encode(), mask=os.urandom(4)))
    while True:
        opcode, data = await frames.next()
        if opcode == _frame.OP_CLOSE:
            raise _closed(data)
        if opcode in (_frame.OP_TEXT, _frame.OP_BINARY):
            text = data.decode("utf-8", "replace")
            if expect is not None and not re.search(expect, text):
                raise CheckError("wrong_answer", f"answer {text[:80]!r} does not match {expect!r}")
            break
    result.answer = time.monotonic() - t


async def _expect_close(result: Result, frames: _Frames, code: int) -> None:
    while True:
        opcode, data = await frames.next()
        if opcode == _frame.OP_CLOSE:
            got, _ = _frame.parse_close(data) if data else (CloseCode.NO_STATUS_RCVD, "")
            result.close_code = got
            if got != code:
                raise CheckError("unexpected_close", f"the server closed with {got}, expected {code}")
            return
