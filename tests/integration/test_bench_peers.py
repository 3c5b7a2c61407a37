"""The peer servers of ``bench.servers`` as the benchmark runs them: each one
started by ``python -m bench.servers NAME --port P``, talked to with the real
``websockets`` client, stopped with SIGTERM.

- the echo peers (uvicorn, granian, socketify): text and binary echoed as
  sent, a 1 MiB message too, no extension negotiated (the client offers
  permessage-deflate), the close frame answered;
- the ``-broadcast`` servers: with three clients connected, five messages
  that one of them sends reach all three, the sender included, in order and
  with their opcode.

A peer whose package is not installed is skipped.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from types import TracebackType
from typing import Any, Self

import pytest
from websockets.asyncio.client import ClientConnection, connect

from ..conftest import ROOT, unit
from .conftest import free_port

#: bench.servers name -> the package it needs.
ECHO_PEERS = {"uvicorn": "uvicorn", "granian": "granian", "granian-rsgi": "granian", "socketify": "socketify"}
BROADCAST = {
    "fastws-callback-broadcast": "fastws",
    "picows-broadcast": "picows",
    "websockets-broadcast": "websockets",
    "aiohttp-broadcast": "aiohttp",
    "socketify-broadcast": "socketify",
}
MIB = 2**20


class BenchServer:
    """``python -m bench.servers NAME --port P`` until ``ready``; on leaving,
    SIGTERM, and checks that it (and any process it started) is gone and
    that it logged no error."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/bench/any/path"
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in __exit__
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Self:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.servers", self.name, "--port", str(self.port)],
            cwd=ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + unit(20)
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:  # exited, or too slow
                self._kill()
                raise AssertionError(f"{self.name}: no ready line\n{self.errors()}")
            if line.startswith("ready"):
                assert f" {self.name} ws://127.0.0.1:{self.port}/ " in line, line
                return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def errors(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()

    def _kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()  # its own children get SIGTERM (PR_SET_PDEATHSIG)
        self.proc.wait()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        import psutil

        assert self.proc is not None
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            children = []
        self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(unit(10))
        except subprocess.TimeoutExpired:
            status = None
        finally:
            self._kill()
            _, alive = psutil.wait_procs(children, timeout=unit(10))
            for child in alive:
                child.kill()
        errors = self.errors()
        self.stderr.close()
        if kind is not None:
            return  # the test's own failure comes first
        assert status == 0, f"{self.name}: status {status} after SIGTERM\n{errors}"
        assert not alive, f"{self.name}: left {alive} running after SIGTERM"
        assert "Traceback" not in errors and "ERROR" not in errors, errors


async def expect_echo(ws: ClientConnection, message: str | bytes) -> None:
    await ws.send(message)
    answer = await asyncio.wait_for(ws.recv(), unit(10))
    assert type(answer) is type(message) and answer == message, (type(answer), len(answer))


@pytest.mark.parametrize("name", list(ECHO_PEERS))
async def test_echo_peer(name: str) -> None:
    pytest.importorskip(ECHO_PEERS[name])
    with BenchServer(name) as server:
        # The client offers permessage-deflate: every peer must decline it.
        async with connect(server.url, max_size=2 * MIB) as ws:
            assert ws.response is not None and "Sec-WebSocket-Extensions" not in ws.response.headers
            await expect_echo(ws, "hello, héllo ✓")
            await expect_echo(ws, b"\x00\x01\xfe\xff binary")
            await expect_echo(ws, bytes(range(256)) * (MIB // 256))
            await expect_echo(ws, "")
        assert ws.close_code == 1000  # our close frame was answered


async def registered(clients: list[ClientConnection]) -> None:
    """Until every client has received one: clients[0] sends ``sync N``
    (the server may add a connection to its set a little after the
    handshake); what a client got before that is dropped."""
    got = [False] * len(clients)
    for attempt in range(100):
        await clients[0].send(f"sync {attempt}")
        for i, ws in enumerate(clients):
            if not got[i]:
                try:
                    message = await asyncio.wait_for(ws.recv(), 0.05)
                except TimeoutError:
                    continue
                assert isinstance(message, str) and message.startswith("sync "), message
                got[i] = True
        if all(got):
            return
    raise AssertionError(f"not every client is served: {got}")


async def received(ws: ClientConnection, count: int) -> list[Any]:
    """The next ``count`` messages that are not ``sync N``."""
    out: list[Any] = []
    while len(out) < count:
        message = await asyncio.wait_for(ws.recv(), unit(10))
        if not (isinstance(message, str) and message.startswith("sync ")):
            out.append(message)
    return out


@pytest.mark.parametrize("name", list(BROADCAST))
async def test_broadcast_server(name: str) -> None:
    pytest.importorskip(BROADCAST[name])
    with BenchServer(name) as server:
        clients = [await connect(server.url) for _ in range(3)]
        try:
            await registered(clients)
            messages: list[str | bytes] = ["m0", b"m1 \x00", "m2 é", b"m3" * 1000, "m4"]
            for message in messages:
                await clients[0].send(message)
            got = await asyncio.gather(*(received(ws, len(messages)) for ws in clients))
            for i, seen in enumerate(got):
                assert [type(m) for m in seen] == [type(m) for m in messages], (i, seen)
                assert seen == messages, (i, seen)
        finally:
            for ws in clients:
                await ws.close()
        assert [ws.close_code for ws in clients] == [1000, 1000, 1000]
