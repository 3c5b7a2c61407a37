"""Ping and pong (Autobahn section 2).

A ping is answered with a pong carrying the same payload (0 to 125 bytes,
any bytes: control payloads are not UTF-8 checked); a longer or fragmented
ping fails the connection with 1002; an unsolicited pong is ignored.
"""

from __future__ import annotations

import pytest

from tests.conformance.conftest import bytewise, whole
from tests.conformance.wire import PING, B, P, T, binary, close, echo, fails, frame, ping, pong, run_case, text

ALL_BYTES = bytes(range(256))

TABLE = [
    echo("ping-0", ping(b""), P(b"")),
    echo("ping-text-payload", ping("Hello, world!".encode()), P(b"Hello, world!")),
    echo("ping-binary-payload", ping(b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff"), P(b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff")),
    echo("ping-invalid-utf8-payload", ping(b"\xed\xa0\x80\xff"), P(b"\xed\xa0\x80\xff")),
    echo("ping-125", ping(ALL_BYTES[:125]), P(ALL_BYTES[:125])),
    fails("ping-126", ping(ALL_BYTES[:126]), 1002),
    fails("ping-126-after-echo", text("a") + ping(ALL_BYTES[:126]), 1002, T("a")),
    fails("ping-65535", ping(ALL_BYTES * 255 + ALL_BYTES[:255]), 1002, bytewise=False),
    # A control frame may not be fragmented (RFC 6455 5.5).
    fails("ping-fragmented", frame(PING, b"part", fin=False), 1002),
    fails("ping-fragmented-then-cont", frame(PING, b"a", fin=False) + frame(0, b"b"), 1002),
    fails("pong-fragmented", frame(0xA, b"x", fin=False), 1002),
    # An unsolicited pong is ignored, and what follows is still served.
    echo("pong-unsolicited-0", pong(b"") + text("after"), T("after")),
    echo("pong-unsolicited-125", pong(ALL_BYTES[:125]) + binary(b"next"), B(b"next")),
    echo("pong-unsolicited-only", pong(b"x")),
    fails("pong-126", pong(ALL_BYTES[:126]), 1002),
    # Several pings: as many pongs, in order (2.10, 2.11).
    echo("ping-x10", b"".join(ping(b"p%d" % i) for i in range(10)), *(P(b"p%d" % i) for i in range(10))),
    echo(
        "ping-between-messages",
        text("one") + ping(b"1") + binary(b"two") + ping(b"2"),
        T("one"), P(b"1"), B(b"two"), P(b"2"),
    ),
    # A ping after our close is not answered (the server echoes the close
    # and stops).
    fails("ping-after-close", close(1000) + ping(b"late"), 1000),
]


@pytest.mark.parametrize("case", whole(TABLE))
def test_control(echo_server, case):
    run_case(echo_server.port, case)


@pytest.mark.parametrize("case", bytewise(TABLE))
def test_control_bytewise(echo_server, case):
    run_case(echo_server.port, case, "bytewise")
