"""Server subprocesses that can be measured, for the hostile suite.

``tests.conftest.ServerProcess`` runs ``python -m fastws serve`` and drains
its output; :class:`MeasuredServer` adds the server's RSS and open file
descriptors (psutil).
"""

from __future__ import annotations

import os

import psutil
import pytest

from tests.conftest import ServerProcess, compiled_available


class MeasuredServer(ServerProcess):
    """``python -m fastws serve ...`` whose resources can be read."""

    def rss(self) -> int:
        """Resident set size of the server process, in bytes."""
        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def num_fds(self) -> int:
        """Open file descriptors of the server process."""
        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).num_fds())


def require_codec(codec: str) -> None:
    """Skip or fail like ``tests.conftest.codec`` when the build is missing."""
    if codec == "compiled" and not compiled_available():
        if os.environ.get("FASTWS_NO_EXTENSIONS"):
            pytest.skip("FASTWS_NO_EXTENSIONS=1: compiled codec not built")
        pytest.fail("compiled codec is not built (pip install -e . builds it)")
