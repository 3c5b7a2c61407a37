"""The closing handshake (Autobahn section 7).

The server echoes a valid close code (an empty close with an empty close),
fails with 1002 on a code that may not be sent or a 1-byte payload, with
1007 on a reason that is not UTF-8; it ignores everything after the close
and closes the TCP connection.
"""

from __future__ import annotations

import socket

import pytest

from tests.conformance.conftest import bytewise, whole
from tests.conformance.wire import CLOSE, B, P, T, binary, close, echo, fails, frame, open_ws, ping, read_until_closed, run_case, text

VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999]
INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]

TABLE = [
    fails("empty-close", close(None), None),
    fails("close-1-byte", frame(CLOSE, b"\x03"), 1002),
    fails("close-1000", close(1000), 1000),
    fails("close-1000-reason", close(1000, "Hello World!"), 1000),
    fails("close-1000-reason-123", close(1000, "*" * 123), 1000),
    fails("close-1000-reason-utf8", close(1000, "κόσμε 😀"), 1000),
    fails("close-reason-124", close(1000, "*" * 124), 1002),  # 126-byte control payload
    *(fails(f"close-code-{c}", close(c), c) for c in VALID_CODES),
    *(fails(f"close-code-{c}-reason", close(c, "why"), c) for c in VALID_CODES[::5]),
    *(fails(f"close-invalid-code-{c}", close(c), 1002) for c in INVALID_CODES),
    *(fails(f"close-invalid-code-{c}-reason", close(c, "why"), 1002) for c in INVALID_CODES[::4]),
    # A close reason must be UTF-8 (RFC 6455 5.5.1).
    fails("close-reason-ff", close(1000, b"\xff"), 1007),
    fails("close-reason-surrogate", close(1000, b"\xed\xa0\x80"), 1007),
    fails("close-reason-truncated", close(1000, "κόσμε".encode() + b"\xce"), 1007),
    fails("close-reason-overlong", close(1000, b"\xc0\xaf"), 1007),
    fails("close-invalid-code-and-reason", close(1005, b"\xff"), 1002),
    fails("close-fragmented", frame(CLOSE, b"\x03\xe8", fin=False), 1002),
    # After a close, nothing is served (7.1.x).
    fails("text-after-close", close(1000) + text("ignored"), 1000),
    fails("binary-after-close", close(1001) + binary(b"ignored"), 1001),
    fails("ping-after-close", close(1000) + ping(b"ignored"), 1000),
    fails("invalid-frame-after-close", close(1000) + frame(5, b"junk"), 1000),
    fails("invalid-utf8-after-close", close(1000) + text(b"\xff"), 1000),
    fails("close-after-close", close(1000) + close(1001), 1000),
    fails("empty-close-after-close", close(3000) + close(None), 3000),
    # What came before the close is echoed first.
    fails("text-then-close", text("Hello") + close(1000), 1000, T("Hello")),
    fails("ping-then-close", ping(b"p") + close(1000), 1000, P(b"p")),
    fails("big-then-close", binary(b"x" * 70000) + close(1000), 1000, B(b"x" * 70000)),
    echo("echo-then-normal-close", text("last words"), T("last words")),
]


@pytest.mark.parametrize("case", whole(TABLE))
def test_close(echo_server, case):
    run_case(echo_server.port, case)


@pytest.mark.parametrize("case", bytewise(TABLE))
def test_close_bytewise(echo_server, case):
    run_case(echo_server.port, case, "bytewise")


def test_server_closes_tcp_first(echo_server):
    """After echoing the close, the server closes TCP without waiting for
    us (RFC 6455 7.1.1): we never close our side and still see EOF."""
    sock, rest = open_ws(echo_server.port)
    try:
        sock.sendall(close(1000, "bye"))
        reply = read_until_closed(sock, buf=rest)
    finally:
        sock.close()
    assert [f.brief() for f in reply.frames] == [("close", 1000)]
    assert reply.ending == "eof"


def test_half_close_without_close_frame(echo_server):
    """A client that shuts down its sending side without a close frame: the
    server closes the connection (no close frame owed), promptly."""
    sock, rest = open_ws(echo_server.port)
    try:
        sock.sendall(text("a"))
        sock.shutdown(socket.SHUT_WR)
        reply = read_until_closed(sock, buf=rest)
    finally:
        sock.close()
    assert [f.brief() for f in reply.frames] == [T("a")]
    assert reply.ending == "eof"
