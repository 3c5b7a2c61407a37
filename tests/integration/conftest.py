"""Helpers of the integration suite: recording handlers, raw frames, CLI runs.

Raw-socket helpers are blocking; tests against an in-process server run them
with ``asyncio.to_thread`` so the server's event loop keeps turning.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from fastws import Handler
from fastws.codec._frame_py import OP_CLOSE, FrameReader, encode_frame, parse_close
from fastws.demo import EchoHandler

from ..conftest import ROOT, ServerProcess, compiled_available, handshake, raw_connect, unit

MASK = b"abcd"


# -- waiting ---------------------------------------------------------------


async def eventually(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` (scaled)."""
    deadline = time.monotonic() + unit(timeout)
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.01)


# -- recording handlers ----------------------------------------------------


class Log:
    """What the handlers of one test saw, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.conns: list[Any] = []

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == kind]

    def closes(self) -> list[tuple[int, str]]:
        return [(e[1], e[2]) for e in self.of("close")]


def recording(base: type = EchoHandler, **methods: Any) -> tuple[type, Log]:
    """A subclass of ``base`` that records every callback in a fresh Log.

    Extra ``methods`` (plain functions taking ``self, ws, ...``) override the
    base's behaviour; recording happens before they run.
    """
    log = Log()

    class Recorder(base):  # type: ignore[misc, valid-type]
        def on_connect(self, ws: Any) -> None:
            log.conns.append(ws)
            log.events.append(("connect", ws))
            if "on_connect" in methods:
                methods["on_connect"](self, ws)
            else:
                super().on_connect(ws)

        def on_message(self, ws: Any, data: bytes, is_text: bool) -> None:
            log.events.append(("message", data, is_text))
            if "on_message" in methods:
                methods["on_message"](self, ws, data, is_text)
            else:
                super().on_message(ws, data, is_text)

        def on_ping(self, ws: Any, data: bytes) -> None:
            log.events.append(("ping", data))

        def on_pong(self, ws: Any, data: bytes) -> None:
            log.events.append(("pong", data))

        def on_close(self, ws: Any, code: int, reason: str) -> None:
            log.events.append(("close", code, reason))
            if "on_close" in methods:
                methods["on_close"](self, ws, code, reason)

    return Recorder, log


# -- raw sockets -----------------------------------------------------------


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def open_ws(port: int, request: bytes | None = None) -> socket.socket:
    """A raw socket that completed a good handshake (blocking)."""
    sock = raw_connect(port)
    if request is None:
        handshake(sock)
    else:
        handshake(sock, request)
    return sock


def client_frame(opcode: int, payload: bytes | str = b"", fin: bool = True, mask: bytes | None = MASK) -> bytes:
    return encode_frame(opcode, payload, fin=fin, mask=mask)


def recv_until_eof(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes TCP (or resets it)."""
    sock.settimeout(unit(timeout))
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except ConnectionResetError:
        return data


class FrameStream:
    """Reads the server's frames off a raw socket (blocking)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = FrameReader(require_mask=False, max_message_size=None)
        self.eof = False

    def next(self, timeout: float = 5.0) -> tuple[int, bytes] | None:
        """The next event, or None at EOF; raises socket.timeout."""
        self.sock.settimeout(unit(timeout))
        while True:
            event = self.reader.next_event()
            if event is not None:
                return event
            if self.eof:
                return None
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.eof = True
            else:
                self.reader.feed_data(chunk)

    def expect_close(self, timeout: float = 5.0) -> tuple[int, str]:
        """Read until the close frame; return its (code, reason)."""
        while True:
            event = self.next(timeout)
            assert event is not None, "connection closed without a close frame"
            if event[0] == OP_CLOSE:
                return parse_close(event[1])

    def at_eof(self, timeout: float = 5.0) -> bool:
        """True if the server closes TCP (after the close frame) in time."""
        return self.next(timeout) is None


# -- HTTP over raw sockets -------------------------------------------------


class HttpReply:
    """A parsed HTTP response head (and body up to EOF)."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status_line = lines[0]
        parts = self.status_line.split(" ", 2)
        self.version = parts[0]
        self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
        self.headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers.setdefault(name.strip().lower(), []).append(value.strip())

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        assert values is None or len(values) == 1, f"repeated {name}: {values}"
        return values[0] if values else None

    def __repr__(self) -> str:
        return f"<HttpReply {self.raw[:600]!r}>"


def http_exchange(port: int, request: bytes, timeout: float = 5.0) -> HttpReply:
    """Send ``request``; read the answer until the server closes (non-101) or
    until the end of the head (101)."""
    sock = raw_connect(port)
    try:
        sock.sendall(request)
        sock.settimeout(unit(timeout))
        data = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if data.startswith(b"HTTP/1.1 101") and b"\r\n\r\n" in data:
                    break
        except ConnectionResetError:
            pass
        assert data, "no response"
        return HttpReply(data)
    finally:
        sock.close()


def upgrade_request(
    path: str = "/chat",
    *,
    method: str = "GET",
    version: str = "HTTP/1.1",
    drop: tuple[str, ...] = (),
    replace: dict[str, str] | None = None,
    extra: list[tuple[str, str]] | None = None,
) -> bytes:
    """A handshake request like ``UPGRADE`` with headers dropped/replaced/added."""
    headers = [
        ("Host", "127.0.0.1"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ]
    replace = {k.lower(): v for k, v in (replace or {}).items()}
    out = []
    for name, value in headers:
        if name.lower() in {d.lower() for d in drop}:
            continue
        out.append((name, replace.get(name.lower(), value)))
    out += extra or []
    head = f"{method} {path} {version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in out) + "\r\n"
    return head.encode("latin-1")


# -- CLI subprocesses --------------------------------------------------------


def cli_codec() -> str:
    """The codec a CLI subprocess should run: compiled if it is built."""
    return "compiled" if compiled_available() else "pure"


def cli_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if cli_codec() == "pure":
        env["FASTWS_NO_EXTENSIONS"] = "1"
    else:
        env.pop("FASTWS_NO_EXTENSIONS", None)
    return env


def run_cli(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """``python -m fastws ARGS`` to completion, stdout and stderr apart."""
    return subprocess.run(
        [sys.executable, "-m", "fastws", *args],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=unit(timeout),
    )


START_TCP = re.compile(r"serving \S+ on wss?://([^ ]+):(\d+)")
START_ANY = re.compile(r"serving \S+ on (\S+) ")


class CliProcess(ServerProcess):
    """A ServerProcess whose output is drained by a thread, so a test can wait
    for any line while the server runs (and ``--uds`` servers can start)."""

    def __init__(self, *args: str, pass_fds: tuple[int, ...] = ()) -> None:
        super().__init__(*args, codec=cli_codec(), pass_fds=pass_fds)
        self._cond = threading.Condition()

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def start(self, timeout: float = 10.0) -> "CliProcess":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastws", *self.args],
            cwd=ROOT,
            env=self.env,
            pass_fds=self.pass_fds,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        try:
            m = self.wait_for(START_ANY, timeout)
        except AssertionError:
            self.stop()
            raise
        tcp = START_TCP.search(m.string)
        if tcp:
            self.port = int(tcp.group(2))
        return self

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float = 10.0, count: int = 1) -> re.Match[str]:
        """Wait until ``count`` output lines match; return the last match."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + unit(timeout)
        with self._cond:
            while True:
                matches = [m for m in map(regex.search, self.lines) if m]
                if len(matches) >= count:
                    return matches[count - 1]
                left = deadline - time.monotonic()
                assert self.proc is not None
                if left <= 0 or (self.proc.poll() is not None and not self._thread_alive()):
                    raise AssertionError(f"no line matching {regex.pattern!r}:\n{self.output}")
                self._cond.wait(min(left, 0.1))

    def _thread_alive(self) -> bool:
        return self._drainer is not None and self._drainer.is_alive()

    @property
    def output(self) -> str:
        with self._cond:
            return "".join(self.lines)


@pytest.fixture
def cli_process() -> Any:
    """Factory of started CliProcess objects, all stopped at teardown."""
    procs: list[CliProcess] = []

    def start(*args: str, pass_fds: tuple[int, ...] = ()) -> CliProcess:
        proc = CliProcess(*args, pass_fds=pass_fds)
        procs.append(proc)
        return proc.start()

    yield start
    for proc in procs:
        if proc.proc is not None and proc.proc.poll() is None:
            # A failed test may leave workers behind: kill the whole tree.
            try:
                import psutil

                children = psutil.Process(proc.proc.pid).children(recursive=True)
            except Exception:
                children = []
            proc.stop(signal.SIGKILL)
            for child in children:
                try:
                    child.kill()
                except Exception:
                    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


__all__ = [
    "CliProcess",
    "FrameStream",
    "Handler",
    "HttpReply",
    "Log",
    "MASK",
    "client_frame",
    "cli_codec",
    "eventually",
    "free_port",
    "http_exchange",
    "open_ws",
    "port_of",
    "recording",
    "recv_until_eof",
    "run_cli",
    "upgrade_request",
]
