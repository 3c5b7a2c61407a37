"""Framing, lengths, reserved bits and opcodes (Autobahn sections 1, 3, 4, 9).

Each row: bytes a client sends after the handshake, the frames the echo
server answers with, the close code it ends with.
"""

from __future__ import annotations

import pytest

from tests.conformance.conftest import bytewise, whole
from tests.conformance.wire import (
    BINARY,
    CLOSE,
    PING,
    B,
    P,
    T,
    binary,
    close,
    cont,
    echo,
    fails,
    frame,
    parse_frames,
    ping,
    run_case,
    send_bytewise,
    text,
)
from tests.conftest import UPGRADE, raw_connect, unit

SIZES = [0, 1, 125, 126, 127, 128, 65535, 65536]
MIB = 2**20  # the server's default max_message_size


def _text(n: int) -> bytes:
    return (b"Hello, fastws! " * (n // 15 + 1))[:n]


def _bin(n: int) -> bytes:
    return (bytes(range(256)) * (n // 256 + 1))[:n]


SIZE_ROWS = [
    *(echo(f"text-{n}", text(_text(n)), T(_text(n))) for n in SIZES),
    *(echo(f"binary-{n}", binary(_bin(n)), B(_bin(n))) for n in SIZES),
    # 1.1.x / 1.2.x style: several messages in one write, sizes across the
    # 7/16/64-bit length boundaries.
    echo(
        "mixed-burst",
        b"".join(text(_text(n)) + binary(_bin(n)) for n in (0, 125, 126, 65535, 65536)),
        *[m for n in (0, 125, 126, 65535, 65536) for m in (T(_text(n)), B(_bin(n)))],
    ),
]

LENGTH_ROWS = [
    # Non-minimal length encodings: RFC 6455 5.2 says "minimal", fastws is
    # deliberately lenient (documented in _frame_py) and accepts them.
    echo("len16-for-5", text("hello", form=16), T("hello")),
    echo("len64-for-5", text("hello", form=64), T("hello")),
    echo("len64-for-0", binary(b"", form=64), B(b"")),
    echo("len64-for-300", binary(_bin(300), form=64), B(_bin(300))),
    echo("len16-for-0", text("", form=16), T("")),
    # The most significant bit of a 64-bit length must be 0 (RFC 6455 5.2).
    fails("len64-top-bit", binary(b"", length=1 << 63), 1002),
    fails("len64-all-ones", binary(b"", length=2**64 - 1), 1002),
    fails("len64-top-bit-after-echo", text("ok") + binary(b"", length=(1 << 63) | 5), 1002, T("ok")),
    # Over max_message_size (1 MiB): refused on the header, before the
    # payload is sent (9.x limits).
    fails("declared-100MB", binary(b"", length=100 * MIB), 1009),
    fails("declared-max+1", text(b"", length=MIB + 1), 1009),
    fails(
        "fragments-over-max",
        frame(BINARY, _bin(MIB // 2), fin=False) + cont(_bin(MIB // 2), fin=False) + cont(b"x"),
        1009,
        bytewise=False,
    ),
    echo("exactly-max", binary(_bin(MIB)), B(_bin(MIB)), bytewise=False),
    # Client frames must be masked (RFC 6455 5.1).
    fails("unmasked-text", text("hello", mask=None), 1002),
    fails("unmasked-ping", ping(b"x", mask=None), 1002),
    fails("unmasked-after-echo", text("a") + text("b", mask=None), 1002, T("a")),
    # A zero mask key is a legal key.
    echo("zero-mask-key", text("hello", mask=b"\0\0\0\0"), T("hello")),
]

RSV_ROWS = [
    # Autobahn 3.x: no extension negotiated, so any RSV bit fails with 1002;
    # what came before the bad frame in the same write is still echoed, and
    # what comes after it is not.
    fails("rsv1-text", text("hello", rsv1=True), 1002),
    fails("rsv2-text-after-echo", text("hello") + text("x", rsv2=True) + ping(b"p"), 1002, T("hello")),
    fails("rsv3-text-after-echo", text("hello") + text("x", rsv3=True) + ping(b"p"), 1002, T("hello")),
    fails("rsv12-binary", binary(b"\x00\xff", rsv1=True, rsv2=True), 1002),
    fails("rsv13-binary-after-echo", binary(b"a") + binary(b"\x00", rsv1=True, rsv3=True), 1002, B(b"a")),
    fails("rsv23-ping", ping(b"p", rsv2=True, rsv3=True), 1002),
    fails("rsv1-ping-after-echo", text("x") + ping(b"p", rsv1=True), 1002, T("x")),
    fails("rsv123-close", close(1000, rsv1=True, rsv2=True, rsv3=True), 1002),
    fails("rsv1-pong", frame(0xA, b"", rsv1=True), 1002),
    fails("rsv1-continuation", frame(1, "a", fin=False) + cont("b", rsv1=True), 1002),
    fails("rsv2-continuation", frame(1, "a", fin=False) + cont("b", rsv2=True), 1002),
]

OPCODE_ROWS = [
    # Autobahn 4.x: reserved opcodes 3-7 (data) and 11-15 (control) fail.
    *(
        fails(f"reserved-opcode-{op}", text("hello") + frame(op, b"") + ping(b"p"), 1002, T("hello"))
        for op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15)
    ),
    *(
        fails(f"reserved-opcode-{op}-payload", frame(op, b"reserved payload"), 1002)
        for op in (3, 7, 11, 15)
    ),
    *(
        fails(f"reserved-opcode-{op}-mid-message", frame(1, "a", fin=False) + frame(op, b"", fin=False), 1002)
        for op in (5, 13)
    ),
]

TABLE = SIZE_ROWS + LENGTH_ROWS + RSV_ROWS + OPCODE_ROWS


@pytest.mark.parametrize("case", whole(TABLE))
def test_framing(echo_server, case):
    run_case(echo_server.port, case)


@pytest.mark.parametrize("case", bytewise(TABLE))
def test_framing_bytewise(echo_server, case):
    run_case(echo_server.port, case, "bytewise")


def test_table_is_sane():
    """The rows say what they mean: the wire builder really sets the bits."""
    assert frame(PING, b"", rsv1=True)[0] == 0xC9
    assert text("x", rsv2=True, rsv3=True)[0] == 0xB1
    assert binary(b"", length=1 << 63)[1:10] == b"\xff\x80" + b"\0" * 7
    assert text("hello", form=64)[1] == 0xFF and text("hello", form=16)[1] == 0xFE
    assert close(None)[:2] == bytes((0x80 | CLOSE, 0x80))
    assert P(b"") == (0xA, b"")


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_frames_in_the_handshake_write(echo_server, mode):
    """Frames sent in the same write as the upgrade request (a client need
    not wait for the 101) are served after it; and a handshake sent one
    byte per write works too."""
    sock = raw_connect(echo_server.port)
    wire = UPGRADE + text("early") + ping(b"p") + close(1000)
    try:
        if mode == "bytewise":
            send_bytewise(sock, wire)
        else:
            sock.sendall(wire)
        data = b""
        sock.settimeout(unit(5))
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    frames = parse_frames(bytearray(rest))
    assert [f.brief() for f in frames] == [T("early"), P(b"p"), ("close", 1000)]
