"""Fragmentation (Autobahn section 5).

A message may be split over any number of frames (empty ones included);
control frames may come between the fragments and are answered at once, so
a pong can precede the echo of the message it interrupted. A continuation
with no message to continue, or a new data frame inside a fragmented
message, fails with 1002.
"""

from __future__ import annotations

import pytest

from tests.conformance.conftest import bytewise, whole
from tests.conformance.wire import (
    BINARY,
    CONT,
    PING,
    TEXT,
    B,
    P,
    T,
    binary,
    close,
    cont,
    echo,
    fails,
    fragments,
    frame,
    ping,
    pong,
    run_case,
    text,
)

BIG = bytes(range(256)) * 300  # 76800 bytes: a 64-bit length fragment

TABLE = [
    echo("text-2-fragments", fragments(TEXT, ["fragment1", "fragment2"]), T("fragment1fragment2")),
    echo("text-3-fragments", fragments(TEXT, ["frag", "ment", "ed"]), T("fragmented")),
    echo("binary-2-fragments", fragments(BINARY, [b"\x00\x01", b"\xfe\xff"]), B(b"\x00\x01\xfe\xff")),
    echo("binary-3-fragments", fragments(BINARY, [b"a", b"b", b"c"]), B(b"abc")),
    echo("text-1-fragment-fin", fragments(TEXT, ["whole"]), T("whole")),
    echo("text-empty-fragments", fragments(TEXT, ["", "", ""]), T("")),
    echo("binary-empty-fragments", fragments(BINARY, [b"", b"", b""]), B(b"")),
    echo("text-empty-first-and-last", fragments(TEXT, ["", "middle", ""]), T("middle")),
    echo("text-20-fragments", fragments(TEXT, [str(i) for i in range(20)]), T("".join(str(i) for i in range(20)))),
    echo("binary-big-fragments", fragments(BINARY, [BIG, BIG[:100], BIG]), B(BIG + BIG[:100] + BIG), bytewise=False),
    # Autobahn 10.1.1: a 64 KiB text message in 1300-byte fragments.
    echo(
        "text-65536-in-1300-byte-fragments",
        fragments(TEXT, [BIG[:65536].hex()[:65536][i : i + 1300] for i in range(0, 65536, 1300)]),
        T(BIG[:65536].hex()[:65536]),
        bytewise=False,
    ),
    echo(
        "two-fragmented-messages",
        fragments(TEXT, ["a", "b"]) + fragments(BINARY, [b"c", b"d"]),
        T("ab"), B(b"cd"),
    ),
    # Control frames between fragments (5.6-5.8, 5.19, 5.20).
    echo(
        "ping-between-fragments",
        frame(TEXT, "frag1", fin=False) + ping(b"ping!") + cont("frag2"),
        P(b"ping!"), T("frag1frag2"),
    ),
    echo(
        "pings-between-many-fragments",
        frame(TEXT, "f1", fin=False) + ping(b"1") + cont("f2", fin=False) + ping(b"2") + cont("f3"),
        P(b"1"), P(b"2"), T("f1f2f3"),
    ),
    echo(
        "pong-between-fragments",
        frame(BINARY, b"f1", fin=False) + pong(b"unsolicited") + cont(b"f2"),
        B(b"f1f2"),
    ),
    echo(
        "ping-after-empty-fragment",
        frame(TEXT, "", fin=False) + ping(b"") + cont("x"),
        P(b""), T("x"),
    ),
    # Continuation without a message to continue (5.9-5.14).
    fails("cont-fin-without-start", cont("orphan"), 1002),
    fails("cont-nofin-without-start", cont("orphan", fin=False), 1002),
    fails("cont-nofin-then-fin-without-start", cont("a", fin=False) + cont("b"), 1002),
    fails("cont-after-finished-message", text("done") + cont("more"), 1002, T("done")),
    fails(
        "cont-after-finished-fragmented",
        fragments(TEXT, ["a", "b"]) + cont("c"),
        1002,
        T("ab"),
    ),
    # A new data frame inside a fragmented message (5.17, 5.18).
    fails("text-inside-text", frame(TEXT, "a", fin=False) + text("b"), 1002),
    fails("text-nofin-inside-text", frame(TEXT, "a", fin=False) + frame(TEXT, "b", fin=False), 1002),
    fails("binary-inside-text", frame(TEXT, "a", fin=False) + binary(b"b"), 1002),
    fails("text-inside-binary", frame(BINARY, b"a", fin=False) + text("b"), 1002),
    fails("binary-inside-binary-after-cont", frame(BINARY, b"a", fin=False) + cont(b"b", fin=False) + binary(b"c"), 1002),
    fails(
        "text-inside-text-after-echo",
        text("first") + frame(TEXT, "a", fin=False) + ping(b"p") + text("b"),
        1002,
        T("first"), P(b"p"),
    ),
    fails("fragmented-ping-inside-message", frame(TEXT, "a", fin=False) + frame(PING, b"", fin=False), 1002),
    # A close between fragments is a close: echoed, the message is dropped
    # and the rest ignored.
    fails("close-between-fragments", frame(TEXT, "a", fin=False) + close(1000) + cont("b"), 1000),
    fails("close-1001-between-fragments", frame(BINARY, b"a", fin=False) + close(1001, "bye"), 1001),
    fails("empty-close-between-fragments", frame(TEXT, "a", fin=False) + close(None) + cont("b"), None),
]


@pytest.mark.parametrize("case", whole(TABLE))
def test_fragmentation(echo_server, case):
    run_case(echo_server.port, case)


@pytest.mark.parametrize("case", bytewise(TABLE))
def test_fragmentation_bytewise(echo_server, case):
    run_case(echo_server.port, case, "bytewise")


def test_cont_opcode_is_zero():
    assert cont("x")[0] == 0x80 | CONT
