"""Fixtures of the hostile-client suite.

Servers run in subprocesses (``python -m fastws serve``, the echo demo) so
that their resident memory can be measured with psutil before and after an
attack; their whole log is kept and checked for tracebacks at teardown.
Set ``FASTWS_RSS_REPORT=path`` to append the measured figures (JSON lines)
to ``path``: docs/limits.md quotes them.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable, Iterator

import pytest

from tests.conformance.servers import MeasuredServer, require_codec
from tests.conformance.wire import T, open_ws, read_until_closed, text, close
from tests.conftest import unit

MIB = 2**20
#: Growth of a server's RSS an attack may cause, generous on purpose: the
#: figures measured are a few MiB (docs/limits.md); this catches a leak or
#: an unbounded buffer, not a regression of a few pages.
RSS_BOUND = 100 * MIB


@pytest.fixture(scope="session", autouse=True)
def _enough_fds() -> None:
    """500 sockets at once need more than a default soft limit of 1024 fds
    (for the tests, and for the servers they start, which inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


@pytest.fixture
def start_server() -> Iterator[Callable[..., MeasuredServer]]:
    """``start_server(*cli_args, codec=...)``: a running echo server.

    Stopped at teardown; its log must hold no traceback and no ERROR line.
    """
    servers: list[MeasuredServer] = []

    def start(*args: str, codec: str = "compiled") -> MeasuredServer:
        require_codec(codec)
        server = MeasuredServer("--no-access-log", *args, codec=codec).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
    for server in servers:
        out = server.output
        assert "Traceback" not in out, out[-4000:]
        assert " ERROR " not in out and " CRITICAL " not in out, out[-4000:]


def echo_works(port: int) -> None:
    """A fresh client connects, gets an echo, closes cleanly."""
    sock, rest = open_ws(port)
    try:
        sock.sendall(text("still here?") + close(1000))
        reply = read_until_closed(sock, unit(5), rest)
    finally:
        sock.close()
    assert [f.brief() for f in reply.frames] == [T("still here?"), ("close", 1000)]


def settle_rss(server: MeasuredServer, seconds: float = 0.3) -> int:
    """RSS after the server had a moment to finish what it was doing."""
    time.sleep(seconds)
    return server.rss()


def report_rss(name: str, codec: str, before: int, after: int, peak: int | None = None, **extra: object) -> None:
    """Check the bound and, with FASTWS_RSS_REPORT set, record the figures."""
    growth = max(after, peak or 0) - before
    path = os.environ.get("FASTWS_RSS_REPORT")
    if path:
        row = {
            "test": name,
            "codec": codec,
            "rss_before_mib": round(before / MIB, 1),
            "rss_after_mib": round(after / MIB, 1),
            "rss_peak_mib": round((peak or after) / MIB, 1),
            "growth_mib": round(growth / MIB, 1),
            **extra,
        }
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
    assert growth < RSS_BOUND, f"{name} ({codec}): server RSS grew by {growth / MIB:.1f} MiB"


class RssSampler:
    """Samples a server's RSS every 20 ms in a thread; ``peak`` is the max."""

    def __init__(self, server: MeasuredServer) -> None:
        import threading

        self.server = server
        self.peak = server.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.server.rss())
            except Exception:  # the process may be gone at teardown
                return

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
