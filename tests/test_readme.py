"""The README's examples run as written (only the port is changed)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import websockets

from tests.conftest import ROOT, ServerProcess, unit

README = Path(ROOT, "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _block(marker: str) -> str:
    for block in BLOCKS:
        if marker in block:
            return block
    raise AssertionError(f"no README python block contains {marker!r}")


async def _echo(url: str) -> None:
    async with websockets.connect(url) as ws:
        await ws.send("hi")
        assert await asyncio.wait_for(ws.recv(), unit(5)) == "hi"
        await ws.send(b"\x00\xff")
        assert await asyncio.wait_for(ws.recv(), unit(5)) == b"\x00\xff"


async def test_callback_example_via_cli(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(_block("# app.py"))
    # `fastws serve app:Echo` imports app from the current directory (like
    # uvicorn); fastws itself comes from the checkout.
    with ServerProcess("app:Echo", env={"PYTHONPATH": ROOT}, cwd=tmp_path) as proc:
        await _echo(proc.url + "/any/path")
        status = proc.stop()
    assert status == 0
    assert "Traceback" not in proc.output


@pytest.mark.parametrize("marker", ["from app import Echo", "async def handler(ws)"])
async def test_embedded_examples(tmp_path: Path, marker: str) -> None:
    (tmp_path / "app.py").write_text(_block("# app.py"))
    port = _free_port()
    source = _block(marker).replace("8765", str(port))
    (tmp_path / "main.py").write_text(source)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, str(tmp_path)]))
    proc = subprocess.Popen([sys.executable, "main.py"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + unit(10)
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "example did not start"
                await asyncio.sleep(0.05)
        await _echo(f"ws://127.0.0.1:{port}/")
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=unit(10))
    assert "Traceback" not in out or "KeyboardInterrupt" in out or "CancelledError" in out, out
