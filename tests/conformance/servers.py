"""Server subprocesses whose output is drained, for long suites.

``tests.conftest.ServerProcess`` stops reading the child's stdout once the
start line is found; a server that logs one line per failed connection then
fills the pipe and blocks. :class:`DrainedServer` keeps reading in a thread.
It also runs at ``--log-level info`` (the start line is logged at INFO; see
/work/notes/bugs.md, "echo_server fixture hangs").
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import psutil
import pytest

from tests.conftest import ServerProcess, compiled_available, unit


class DrainedServer(ServerProcess):
    """``python -m fastws serve ...`` with its output read continuously."""

    def __init__(self, *args: str, codec: str = "compiled", env: dict[str, str] | None = None) -> None:
        if "--log-level" not in args:
            args = ("--log-level", "info", *args)
        super().__init__(*args, codec=codec, env=env)
        self._drain: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> "DrainedServer":
        super().start(timeout)
        self._drain = threading.Thread(target=self._read, daemon=True)
        self._drain.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=unit(timeout))
        except Exception:
            self.proc.kill()
            self.proc.wait()
        if self._drain is not None:
            self._drain.join(unit(5))
        return self.proc.returncode

    def rss(self) -> int:
        """Resident set size of the server process, in bytes."""
        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def num_fds(self) -> int:
        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).num_fds())


def require_codec(codec: str) -> None:
    """Skip or fail like ``tests.conftest.codec`` when the build is missing."""
    if codec == "compiled" and not compiled_available():
        if os.environ.get("FASTWS_NO_EXTENSIONS"):
            pytest.skip("FASTWS_NO_EXTENSIONS=1: compiled codec not built")
        pytest.fail("compiled codec is not built (pip install -e . builds it)")


def drained_server(codec: str, *args: str) -> Iterator[DrainedServer]:
    """Body of a fixture: a server with ``args`` for ``codec``, stopped after."""
    require_codec(codec)
    server = DrainedServer("--no-access-log", *args, codec=codec)
    with server:
        yield server
