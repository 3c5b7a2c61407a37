"""Flow control, both ways, on both libraries: a slow peer slows the server
down instead of growing its memory.

The memory figures come from a server subprocess (``flow_server.py``, run as
written and migrated to fastws) measured with psutil; each test prints what
it measured (run with ``-s`` to see it) and records it as a property.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psutil
import pytest
from websockets.asyncio.client import connect

from ..conftest import ROOT, unit
from .harness import LIBS, eventually, migrate, queued, server_api

MiB = 2**20
HERE = os.path.dirname(os.path.abspath(__file__))
#: What the tests accept as "bounded" growth of the server's RSS.
RSS_LIMIT = 32 * MiB


@pytest.fixture(params=LIBS)
def lib(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class FlowServer:
    """``flow_server.py`` in a subprocess, as written or migrated."""

    def __init__(self, lib: str, tmpdir: str) -> None:
        script = os.path.join(HERE, "flow_server.py")
        if lib == "fastws":
            with open(script, encoding="utf-8") as f:
                source = migrate(f.read())
            script = os.path.join(tmpdir, "flow_server.py")
            with open(script, "w", encoding="utf-8") as f:
                f.write(source)
        env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, script], env=env, cwd=tmpdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self.port = 0
        started = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                if line.startswith("listening "):
                    self.port = int(line.split()[1])
                    started.set()
            started.set()

        threading.Thread(target=read, daemon=True).start()
        if not started.wait(unit(15)) or not self.port:
            self.stop()
            raise RuntimeError("flow_server did not start:\n" + "\n".join(self.lines))
        self.ps = psutil.Process(self.proc.pid)

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def sent(self) -> int:
        """The last ``sent K`` the bulk handler printed."""
        for line in reversed(self.lines):
            if line.startswith("sent "):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=unit(10))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def flow_server(lib: str, tmp_path: Any) -> Iterator[FlowServer]:
    server = FlowServer(lib, str(tmp_path))
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def peak_rss(server: FlowServer) -> AsyncIterator[dict[str, int]]:
    """Samples the server's RSS every 10 ms; yields {"base", "peak"}."""
    figures = {"base": server.rss(), "peak": 0}

    async def sample() -> None:
        while True:
            figures["peak"] = max(figures["peak"], server.rss())
            await asyncio.sleep(0.01)

    task = asyncio.create_task(sample())
    try:
        yield figures
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        figures["peak"] = max(figures["peak"], server.rss())


def report(record_property: Any, lib: str, what: str, figures: dict[str, int], **extra: Any) -> int:
    growth = figures["peak"] - figures["base"]
    line = (
        f"[{lib}] {what}: server RSS {figures['base'] / MiB:.1f} MiB -> peak {figures['peak'] / MiB:.1f} MiB"
        f" (growth {growth / MiB:.1f} MiB)" + "".join(f", {k}={v}" for k, v in extra.items())
    )
    print(line)
    record_property(f"{lib}-{what}", line)
    return growth


async def test_client_that_never_reads(lib: str, flow_server: FlowServer, record_property: Any) -> None:
    """The handler sends 100 x 1 MiB with ``await send`` to a client that
    reads nothing: the server waits instead of buffering 100 MiB."""
    url = f"ws://127.0.0.1:{flow_server.port}"
    async with asyncio.timeout(unit(60)):
        # Warm up (imports, allocator arenas) before the baseline.
        async with connect(url + "/bulk?n=2", max_size=None, compression=None) as ws:
            assert [len(await ws.recv()) for _ in range(2)] == [MiB, MiB]
            assert await ws.recv() == "done"
        await asyncio.sleep(0.2)
        # The client's own queue holds one message at most (max_queue=1),
        # then it stops reading too: the server meets a full socket.
        async with connect(url + "/bulk?n=100", max_size=None, max_queue=1, compression=None) as ws:
            async with peak_rss(flow_server) as figures:
                await eventually(lambda: flow_server.sent() > 0, what="the first message")
                # Wait until the handler is stuck: no progress for 0.5 s.
                last, still_since = -1, time.monotonic()
                while time.monotonic() - still_since < 0.5:
                    await asyncio.sleep(0.05)
                    if flow_server.sent() != last:
                        last, still_since = flow_server.sent(), time.monotonic()
                stuck_at = flow_server.sent()
            # Now read everything: nothing was lost.
            got = 0
            while (message := await ws.recv()) != "done":
                assert message == ws_payload_size_check(message)
                got += 1
        growth = report(record_property, lib, "client never reads, 100 x 1 MiB", figures, stuck_at=f"{stuck_at} sent")
    assert got == 100 and flow_server.sent() == 100
    assert stuck_at < 50, "the handler did not wait for the client"
    assert growth < RSS_LIMIT


def ws_payload_size_check(message: Any) -> Any:
    assert isinstance(message, bytes) and len(message) == MiB
    return message


async def test_client_that_floods_a_slow_handler(lib: str, flow_server: FlowServer, record_property: Any) -> None:
    """A client sends 10,000 x 8 KiB to a handler that reads one message per
    10 ms for a second: the client is paused, not buffered for."""
    url = f"ws://127.0.0.1:{flow_server.port}"
    message = os.urandom(8 * 1024)
    async with asyncio.timeout(unit(60)):
        async with connect(url + "/slow?for=1.5", compression=None) as ws:
            await ws.send(b"warm")
            await asyncio.sleep(0.2)
            async with peak_rss(flow_server) as figures:
                sent = 0

                async def flood() -> None:
                    nonlocal sent
                    for _ in range(10_000):
                        await ws.send(message)
                        sent += 1
                    await ws.send("end")

                flooding = asyncio.create_task(flood())
                await asyncio.sleep(1.0)  # the handler is still slow
                sent_while_slow = sent
                await flooding
                count, peak_queue = map(int, str(await ws.recv()).split())
        growth = report(
            record_property,
            lib,
            "10,000 x 8 KiB flood to a slow handler",
            figures,
            sent_in_first_second=sent_while_slow,
            peak_queue=peak_queue,
        )
    assert count == 10_001  # nothing lost ("warm" + the flood)
    assert sent_while_slow < 5_000, "the client was not paused"
    # max_queue (16) bounds the queue, give or take the messages of one read
    # from the socket (both libraries parse a whole read before pausing).
    assert peak_queue <= 16 + 256 * 1024 // len(message) + 1
    assert growth < RSS_LIMIT


@pytest.mark.parametrize("size", [16, 1024, 64 * 1024])
async def test_receive_queue_bounded_in_process(lib: str, size: int) -> None:
    """The queue a ``recv()`` drains never grows past max_queue plus one
    socket read's worth of messages, whatever their size."""
    api = server_api(lib)
    peaks: list[int] = []
    done = asyncio.Event()

    async def handler(ws: Any) -> None:
        peak = 0
        for i in range(2000):
            peak = max(peak, queued(ws))
            await ws.recv()
            if i < 50:
                await asyncio.sleep(0.005)
        peaks.append(peak)
        await ws.send("ok")
        done.set()

    async with asyncio.timeout(unit(60)):
        async with api.serve(handler, "127.0.0.1", 0, max_size=None) as server:
            url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            async with connect(url, compression=None, max_size=None) as ws:
                payload = b"m" * size
                for _ in range(2000):
                    await ws.send(payload)
                assert await ws.recv() == "ok"
    # One read is at most 256 KiB; each message has a 6 to 14 byte header.
    per_read = 256 * 1024 // (size + 6) + 1
    print(f"[{lib}] {size}-byte messages: peak receive queue {peaks[0]} (max_queue 16, one read {per_read})")
    assert peaks[0] <= 16 + per_read, (peaks, per_read)
