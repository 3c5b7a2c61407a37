"""Shared test helpers: in-process servers, server subprocesses, time units.

``FASTWS_TEST_TIMEOUT_SCALE`` multiplies every timeout used by the tests (set
it above 1 on a slow or loaded machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from types import ModuleType
from typing import Any

import pytest

import fastws

SCALE = float(os.environ.get("FASTWS_TEST_TIMEOUT_SCALE", "1"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def unit(seconds: float) -> float:
    """A timeout of ``seconds``, scaled for slow machines."""
    return seconds * SCALE


@contextlib.asynccontextmanager
async def serving(handler: Any, **options: Any) -> AsyncIterator[tuple[fastws.Server, str]]:
    """Run ``fastws.serve(handler, ...)`` on 127.0.0.1 and a free port.

    Yields ``(server, "ws://127.0.0.1:PORT")``; closes the server after.
    """
    options.setdefault("access_log", False)
    server = await fastws.serve(handler, "127.0.0.1", 0, **options)
    port = server.sockets[0].getsockname()[1]
    try:
        yield server, f"ws://127.0.0.1:{port}"
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), unit(15))


_START = re.compile(r"serving \S+ on wss?://([^ ]+):(\d+)")


class ServerProcess:
    """``python -m fastws serve ...`` in a subprocess, for CLI and codec tests.

    ``codec="pure"`` sets ``FASTWS_NO_EXTENSIONS=1`` so the server runs the
    pure-Python twin; ``"compiled"`` requires the compiled extension.
    """

    def __init__(
        self,
        *args: str,
        codec: str = "compiled",
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] = ROOT,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.args = ["serve", *args]
        self.cwd = cwd
        self.pass_fds = pass_fds
        if "--port" not in args and "--uds" not in args and "--fd" not in args:
            self.args += ["--port", "0"]
        self.env = dict(os.environ, **(env or {}))
        self.env["PYTHONUNBUFFERED"] = "1"
        if codec == "pure":
            self.env["FASTWS_NO_EXTENSIONS"] = "1"
        else:
            self.env.pop("FASTWS_NO_EXTENSIONS", None)
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.lines: list[str] = []
        self._drainer: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> "ServerProcess":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastws", *self.args],
            cwd=self.cwd,
            env=self.env,
            pass_fds=self.pass_fds,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # A thread drains the output for the whole life of the server: the
        # start line is awaited with a real deadline, and a chatty server
        # can never block on a full pipe.
        started = threading.Event()

        def drain() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                if not started.is_set():
                    m = _START.search(line)
                    if m:
                        self.port = int(m.group(2))
                        started.set()
            started.set()

        self._drainer = threading.Thread(target=drain, daemon=True)
        self._drainer.start()
        if started.wait(unit(timeout)) and self.port:
            return self
        self.stop()
        raise RuntimeError("server did not start:\n" + self.output)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the server, wait for it, collect its output; return status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=unit(timeout))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self._drainer is not None:
            self._drainer.join(unit(5))
        return self.proc.returncode

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()


NO_EXTENSIONS = os.environ.get("FASTWS_NO_EXTENSIONS", "") not in ("", "0")


def import_module_or_fail(name: str) -> ModuleType:
    """Import a codec module; a compiled one that is missing fails the test,
    unless FASTWS_NO_EXTENSIONS is set (then it is skipped)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if not name.endswith("_py") and NO_EXTENSIONS:
            pytest.skip(f"{name} not built and FASTWS_NO_EXTENSIONS is set")
        pytest.fail(f"{name} cannot be imported ({exc}); build it or set FASTWS_NO_EXTENSIONS=1")


def compiled_available() -> bool:
    try:
        import fastws.codec._frame  # noqa: F401
        import fastws.codec._handshake  # noqa: F401
    except ImportError:
        return False
    return True


CODECS = ["compiled", "pure"]


@pytest.fixture(params=CODECS)
def codec(request: pytest.FixtureRequest) -> str:
    """Both codecs: the compiled extension (required unless
    FASTWS_NO_EXTENSIONS=1, then skipped) and the pure-Python twin."""
    if request.param == "compiled" and not compiled_available():
        if os.environ.get("FASTWS_NO_EXTENSIONS"):
            pytest.skip("FASTWS_NO_EXTENSIONS=1: compiled codec not built")
        pytest.fail("compiled codec is not built (pip install -e . builds it)")
    return str(request.param)


@pytest.fixture(scope="session", params=CODECS)
def echo_server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """The bundled demo (``fastws serve``) in a subprocess, once per codec."""
    if request.param == "compiled" and not compiled_available():
        if os.environ.get("FASTWS_NO_EXTENSIONS"):
            pytest.skip("FASTWS_NO_EXTENSIONS=1: compiled codec not built")
        pytest.fail("compiled codec is not built (pip install -e . builds it)")
    with ServerProcess("--no-access-log", codec=str(request.param)) as proc:
        yield proc


def raw_connect(port: int, host: str = "127.0.0.1") -> socket.socket:
    """A blocking TCP socket to the server, with a test-sized timeout."""
    sock = socket.create_connection((host, port), timeout=unit(5))
    return sock


UPGRADE = (
    b"GET /chat HTTP/1.1\r\n"
    b"Host: 127.0.0.1\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


def handshake(sock: socket.socket, request: bytes = UPGRADE) -> bytes:
    """Send an upgrade request and read the response head; assert a 101."""
    sock.sendall(request)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return head
