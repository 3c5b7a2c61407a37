"""``fastws bench``: load-test any WebSocket server (docs/bench.md).

The load generator (:mod:`fastws.bench.loadgen`) is a bare asyncio client on
fastws' own compiled codec: every echo is checked byte for byte, round trips
are timed per message, and its own CPU is measured so a run says when the
load generator, not the server, was the limit. :mod:`fastws.bench.command`
is the ``fastws bench`` command and its scenarios.
"""

from types import ModuleType

from .._select import pick

__all__ = ["echo"]

#: The compiled reply checker (``_echo.pyx``) or its pure-Python twin.
echo: ModuleType = pick("fastws.bench._echo", "fastws.bench._echo_py")
