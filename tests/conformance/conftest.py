"""Fixtures of the conformance suite.

Every table runs against the session-scoped ``echo_server`` of
``tests/conftest.py`` (``python -m fastws serve``, the echo demo, once with
the compiled codec and once with the pure-Python twin). Rows are sent whole,
and the rows small enough for it again one byte per TCP write.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from tests.conformance.servers import DrainedServer, drained_server
from tests.conformance.wire import Case
from tests.conftest import CODECS

#: Rows whose wire is longer than this are not replayed one byte per write
#: (a 64 KiB row would be 64 Ki syscalls and server wakeups).
BYTEWISE_MAX = 2048


def whole(table: Sequence[Case]) -> list[object]:
    """``table`` as pytest params, with the row ids."""
    return [pytest.param(case, id=case.id) for case in table]


def bytewise(table: Sequence[Case]) -> list[object]:
    """The representative subset of ``table`` replayed one byte per write."""
    return [
        pytest.param(case, id=case.id)
        for case in table
        if case.bytewise and len(case.full_wire()) <= BYTEWISE_MAX
    ]


@pytest.fixture(scope="session", params=CODECS)
def echo_server(request: pytest.FixtureRequest) -> Iterator[DrainedServer]:
    """Overrides ``tests/conftest.py::echo_server`` (same params), which hangs:
    it waits for a start line that ``--log-level warning`` never writes, and
    leaves the server's log pipe undrained. See /work/notes/bugs.md; remove
    this override once that is fixed."""
    yield from drained_server(str(request.param))
