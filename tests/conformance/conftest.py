"""Fixtures of the conformance suite.

Every table runs against the session-scoped ``echo_server`` of
``tests/conftest.py`` (``python -m fastws serve``, the echo demo, once with
the compiled codec and once with the pure-Python twin). Rows are sent whole,
and the rows small enough for it again one byte per TCP write.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tests.conformance.wire import Case

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

