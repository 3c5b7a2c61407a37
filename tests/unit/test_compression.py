"""permessage-deflate (RFC 7692): header parsing, negotiation, the zlib data path.

Sans-I/O: offers in, response header out; compressed payloads in, messages
(or ProtocolError codes) out; messages in, frames out, read back with the
pure-Python frame reader and inflated with zlib as a client would.
"""

from __future__ import annotations

import os
import random
import tracemalloc
import zlib

import pytest

from fastws.codec import _frame_py
from fastws.cli import build_parser, config_from_args
from fastws.codec.compression import PerMessageDeflate, negotiate, parse_extensions
from fastws.config import DEFAULTS, Config
from fastws.exceptions import InvalidHeaderValue
from fastws.codec import frame as codec

TAIL = b"\x00\x00\xff\xff"
PMD = "permessage-deflate"


# -- parsing -------------------------------------------------------------------

PARSE_OK = [
    ("permessage-deflate", [(PMD, [])]),
    ("permessage-deflate; client_max_window_bits", [(PMD, [("client_max_window_bits", None)])]),
    ("permessage-deflate;client_max_window_bits=10", [(PMD, [("client_max_window_bits", "10")])]),
    ('permessage-deflate; client_max_window_bits="10"', [(PMD, [("client_max_window_bits", "10")])]),
    ('permessage-deflate; client_max_window_bits="1\\0"', [(PMD, [("client_max_window_bits", "10")])]),
    ("  permessage-deflate \t;\t a = b ;c  ", [(PMD, [("a", "b"), ("c", None)])]),
    ("x-foo, permessage-deflate", [("x-foo", []), (PMD, [])]),
    ("permessage-deflate,", [(PMD, [])]),
    (",, permessage-deflate ,, x ,", [(PMD, []), ("x", [])]),
    ("Permessage-Deflate; Server_No_Context_Takeover", [(PMD, [("server_no_context_takeover", None)])]),
]


@pytest.mark.parametrize("value, expected", PARSE_OK, ids=[v for v, _ in PARSE_OK])
def test_parse_valid(value: str, expected: object) -> None:
    assert parse_extensions([value]) == expected


def test_parse_repeated_headers_are_one_list() -> None:
    assert parse_extensions(["a; x=1", "b, c"]) == [("a", [("x", "1")]), ("b", []), ("c", [])]


PARSE_BAD = [
    "",
    "  ",
    " , ",
    "permessage-deflate;",
    "permessage-deflate; ;x",
    "permessage-deflate; =1",
    "permessage-deflate; a=",
    "permessage-deflate; a=b=c",
    'permessage-deflate; a="1 2"',
    'permessage-deflate; a=""',
    'permessage-deflate; a="unterminated',
    "permessage-deflate x",
    "permessage-deflate; a b",
    "@",
    "permessage-deflate; a=\"b\" c",
]


@pytest.mark.parametrize("value", PARSE_BAD)
def test_parse_malformed_raises_400(value: str) -> None:
    with pytest.raises(InvalidHeaderValue) as info:
        parse_extensions([value])
    assert info.value.status == 400


# -- negotiation -----------------------------------------------------------------

S12 = "server_max_window_bits=12"
C12 = "client_max_window_bits=12"

NEGOTIATE = [
    # (offers, response header or None for "declined")
    (["permessage-deflate"], f"{PMD}; {S12}"),
    (["permessage-deflate; client_max_window_bits"], f"{PMD}; {S12}; {C12}"),
    (["permessage-deflate; client_max_window_bits=10"], f"{PMD}; {S12}; client_max_window_bits=10"),
    (["permessage-deflate; client_max_window_bits=15"], f"{PMD}; {S12}; {C12}"),
    (["permessage-deflate; client_max_window_bits=8"], f"{PMD}; {S12}; client_max_window_bits=8"),
    (['permessage-deflate; client_max_window_bits="9"'], f"{PMD}; {S12}; client_max_window_bits=9"),
    (["permessage-deflate; server_max_window_bits=8"], f"{PMD}; server_max_window_bits=8"),
    (["permessage-deflate; server_max_window_bits=10"], f"{PMD}; server_max_window_bits=10"),
    (["permessage-deflate; server_max_window_bits=15"], f"{PMD}; {S12}"),
    (["permessage-deflate; server_no_context_takeover"], f"{PMD}; server_no_context_takeover; {S12}"),
    (["permessage-deflate; client_no_context_takeover"], f"{PMD}; client_no_context_takeover; {S12}"),
    # Chromium's and autobahn's offers.
    (["permessage-deflate; client_max_window_bits"], f"{PMD}; {S12}; {C12}"),
    (
        ["permessage-deflate; client_no_context_takeover; client_max_window_bits; server_max_window_bits=9"],
        f"{PMD}; client_no_context_takeover; server_max_window_bits=9; {C12}",
    ),
    # Declined offers (RFC 7692 section 5.1), each alone: no extension.
    (["permessage-deflate; foo"], None),
    (["permessage-deflate; server_max_window_bits"], None),
    (["permessage-deflate; server_max_window_bits=7"], None),
    (["permessage-deflate; server_max_window_bits=16"], None),
    (["permessage-deflate; server_max_window_bits=08"], None),
    (["permessage-deflate; server_max_window_bits=+9"], None),
    (["permessage-deflate; client_max_window_bits=7"], None),
    (["permessage-deflate; client_max_window_bits=x"], None),
    (["permessage-deflate; server_no_context_takeover=1"], None),
    (["permessage-deflate; client_no_context_takeover=true"], None),
    (["permessage-deflate; client_max_window_bits; client_max_window_bits"], None),
    (["permessage-deflate; server_no_context_takeover; server_no_context_takeover"], None),
    (["x-webkit-deflate-frame"], None),
    # ...and the first acceptable one wins, across headers.
    (["permessage-deflate; foo, permessage-deflate; client_max_window_bits"], f"{PMD}; {S12}; {C12}"),
    (["x-webkit-deflate-frame", "permessage-deflate; server_max_window_bits=10"], f"{PMD}; server_max_window_bits=10"),
    (
        ["permessage-deflate; server_max_window_bits=9; server_no_context_takeover, permessage-deflate"],
        f"{PMD}; server_no_context_takeover; server_max_window_bits=9",
    ),
]


@pytest.mark.parametrize("offers, expected", NEGOTIATE, ids=[" | ".join(o) for o, _ in NEGOTIATE])
def test_negotiate_defaults(offers: list[str], expected: str | None) -> None:
    result = negotiate(offers, DEFAULTS)
    if expected is None:
        assert result is None
    else:
        assert result is not None
        assert result[0] == expected
        # The object's view of what was agreed is the same header.
        assert result[1].response_params() == expected.replace("; server_max_window_bits=15", "")


CONFIGURED = [
    ({"deflate_client_max_window_bits": None}, "permessage-deflate; client_max_window_bits", f"{PMD}; {S12}"),
    ({"deflate_client_max_window_bits": None}, "permessage-deflate; client_max_window_bits=10", f"{PMD}; {S12}; client_max_window_bits=10"),
    ({"deflate_client_max_window_bits": 9}, "permessage-deflate; client_max_window_bits", f"{PMD}; {S12}; client_max_window_bits=9"),
    ({"deflate_server_max_window_bits": 15}, "permessage-deflate", PMD),
    ({"deflate_server_max_window_bits": 15}, "permessage-deflate; server_max_window_bits=10", f"{PMD}; server_max_window_bits=10"),
    ({"deflate_server_max_window_bits": 8}, "permessage-deflate", f"{PMD}; server_max_window_bits=8"),
    ({"deflate_server_no_context_takeover": True}, "permessage-deflate", f"{PMD}; server_no_context_takeover; {S12}"),
    ({"deflate_client_no_context_takeover": True}, "permessage-deflate", f"{PMD}; client_no_context_takeover; {S12}"),
]


@pytest.mark.parametrize("changes, offer, expected", CONFIGURED)
def test_negotiate_configured(changes: dict[str, object], offer: str, expected: str) -> None:
    result = negotiate([offer], DEFAULTS.replace(**changes))
    assert result is not None and result[0] == expected


def test_negotiate_malformed_raises() -> None:
    with pytest.raises(InvalidHeaderValue):
        negotiate(["permessage-deflate; a="], DEFAULTS)
    # Even when an acceptable offer came first: the header is malformed.
    with pytest.raises(InvalidHeaderValue):
        negotiate(["permessage-deflate", "permessage-deflate; a="], DEFAULTS)


# -- the data path -----------------------------------------------------------------


def client_compress(c: "zlib._Compress", data: bytes) -> bytes:
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Every event in frames the server built, read as a client would."""
    reader = _frame_py.FrameReader(require_mask=False, rsv1_allowed=True, max_message_size=None)
    reader.feed_data(data)
    events = []
    while (event := reader.next_event()) is not None:
        events.append(event)
    return events


def raw_frames(data: bytes) -> list[tuple[int, bool, bool, bytes]]:
    """(opcode, fin, rsv1, payload) of each unmasked frame in ``data``."""
    out = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        n = b1 & 0x7F
        pos += 2
        if n == 126:
            n = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
        elif n == 127:
            n = int.from_bytes(data[pos : pos + 8], "big")
            pos += 8
        out.append((b0 & 0x0F, bool(b0 & 0x80), bool(b0 & 0x40), data[pos : pos + n]))
        pos += n
    return out


# 2,000 bytes of ASCII words that deflate squeezes only a little on its own
# (so a message that refers back to a previous one is much smaller), and that
# fit in a 4 KiB window.
_rng = random.Random(7692)
TEXT = " ".join("".join(_rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_rng.randint(2, 9))) for _ in range(400)).encode()[:2000]


def test_inflate_round_trip_with_context_takeover() -> None:
    pmd = PerMessageDeflate(client_max_window_bits=12)
    c = zlib.compressobj(wbits=-12)
    for i in range(5):
        message = TEXT + str(i).encode()
        compressed = client_compress(c, message)
        if i:
            # The client refers back into earlier messages: the server's
            # decompressor must keep its window between messages.
            assert len(compressed) < 30
        assert pmd.inflate(compressed, True) == message


def test_client_no_context_takeover_resets_the_decompressor() -> None:
    pmd = PerMessageDeflate(client_no_context_takeover=True)
    c = zlib.compressobj(wbits=-15)
    assert pmd.inflate(client_compress(c, TEXT), True) == TEXT
    # A client breaking its promise (using the previous window) cannot be
    # understood: the server really started afresh.
    with pytest.raises(codec.ProtocolError) as info:
        pmd.inflate(client_compress(c, TEXT), True)
    assert info.value.code == 1002
    # A client keeping it is.
    pmd = PerMessageDeflate(client_no_context_takeover=True)
    for _ in range(3):
        assert pmd.inflate(client_compress(zlib.compressobj(wbits=-15), TEXT), False) == TEXT


def test_inflate_limit_stops_a_bomb() -> None:
    bomb = client_compress(zlib.compressobj(wbits=-15), bytes(10 * 2**20))
    assert len(bomb) < 20000
    pmd = PerMessageDeflate(max_message_size=2**20)
    with pytest.raises(codec.ProtocolError) as info:
        pmd.inflate(bomb, False)
    assert info.value.code == 1009


def test_inflate_stops_at_the_limit_not_at_the_bomb_size() -> None:
    bomb = client_compress(zlib.compressobj(wbits=-15), bytes(32 * 2**20))
    pmd = PerMessageDeflate(max_message_size=2**20)
    tracemalloc.start()
    try:
        with pytest.raises(codec.ProtocolError):
            pmd.inflate(bomb, False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Inflating the whole bomb would take 32 MiB.
    assert peak < 4 * 2**20, peak


@pytest.mark.parametrize("size", [2**20 - 1, 2**20])
def test_inflate_limit_is_inclusive(size: int) -> None:
    data = client_compress(zlib.compressobj(wbits=-15), bytes(size))
    assert len(PerMessageDeflate(max_message_size=2**20).inflate(data, False)) == size


def test_inflate_one_byte_over_the_limit() -> None:
    data = client_compress(zlib.compressobj(wbits=-15), bytes(2**20 + 1))
    with pytest.raises(codec.ProtocolError) as info:
        PerMessageDeflate(max_message_size=2**20).inflate(data, False)
    assert info.value.code == 1009


def test_no_limit() -> None:
    data = client_compress(zlib.compressobj(wbits=-15), bytes(3 * 2**20))
    assert len(PerMessageDeflate(max_message_size=None).inflate(data, False)) == 3 * 2**20


def test_invalid_utf8_after_inflating_is_1007() -> None:
    bad = "caf\u00e9".encode("latin-1") * 20
    data = client_compress(zlib.compressobj(wbits=-15), bad)
    with pytest.raises(codec.ProtocolError) as info:
        PerMessageDeflate().inflate(data, True)
    assert info.value.code == 1007
    # The same bytes as a binary message are fine.
    assert PerMessageDeflate().inflate(data, False) == bad


def test_corrupt_deflate_data_is_1002() -> None:
    with pytest.raises(codec.ProtocolError) as info:
        PerMessageDeflate().inflate(b"\xff\xff\xff\xff garbage", False)
    assert info.value.code == 1002


def test_final_block_then_next_message() -> None:
    # RFC 7692 section 7.2.3.4: a sender may end a message with BFINAL set.
    pmd = PerMessageDeflate()
    for i in range(3):
        c = zlib.compressobj(wbits=-15)
        message = TEXT + bytes([i])
        assert pmd.inflate(c.compress(message) + c.flush(zlib.Z_FINISH), False) == message


def test_deflate_frame_and_threshold() -> None:
    pmd = PerMessageDeflate(server_max_window_bits=12, min_size=32)
    d = zlib.decompressobj(wbits=-12)
    # Short: plain frame, RSV1 clear.
    [(opcode, fin, rsv1, payload)] = raw_frames(pmd.frame(codec.OP_TEXT, "x" * 31))
    assert (opcode, fin, rsv1, payload) == (codec.OP_TEXT, True, False, b"x" * 31)
    # Long: compressed, RSV1 set, and with context takeover later copies
    # of the same text cost a few bytes.
    sizes = []
    for i in range(3):
        message = TEXT.decode() + "\u2603" * i
        [(opcode, fin, rsv1, payload)] = raw_frames(pmd.frame(codec.OP_TEXT, message))
        assert (opcode, fin, rsv1) == (codec.OP_TEXT, True, True)
        assert not payload.endswith(TAIL)
        assert d.decompress(payload + TAIL).decode() == message
        sizes.append(len(payload))
    assert sizes[0] > 1000 and sizes[1] < 50
    # bytes-likes are accepted.
    for data in (bytearray(TEXT), memoryview(TEXT)):
        [(opcode, _, rsv1, payload)] = raw_frames(pmd.frame(codec.OP_BINARY, data))
        assert opcode == codec.OP_BINARY and rsv1 and d.decompress(payload + TAIL) == TEXT


def test_server_no_context_takeover_messages_stand_alone() -> None:
    pmd = PerMessageDeflate(server_no_context_takeover=True)
    for _ in range(3):
        [(_, _, rsv1, payload)] = raw_frames(pmd.frame(codec.OP_BINARY, TEXT))
        assert rsv1
        assert zlib.decompressobj(wbits=-15).decompress(payload + TAIL) == TEXT


def test_min_size_zero_compresses_empty_messages() -> None:
    pmd = PerMessageDeflate(min_size=0)
    [(_, _, rsv1, payload)] = raw_frames(pmd.frame(codec.OP_BINARY, b""))
    assert rsv1 and zlib.decompressobj(wbits=-15).decompress(payload + TAIL) == b""


def test_window_bits_8_is_honoured() -> None:
    """A client that allows the server a 256-byte window gets one.

    zlib cannot compress with 8 bits and uses 9, whose matches still reach
    back at most 250 bytes. The test repeats a random block of 300 bytes in
    the next message: a compressor with a bigger window would refer 300
    bytes back, which a 256-byte inflater (kept between messages, as with
    context takeover) cannot follow.
    """
    block = os.urandom(300)
    # The check can fail: a 10-bit compressor breaks the 8-bit inflater.
    c = zlib.compressobj(wbits=-10)
    d = zlib.decompressobj(wbits=-8)
    d.decompress(client_compress(c, block) + TAIL)
    with pytest.raises(zlib.error):
        d.decompress(client_compress(c, block) + TAIL)
    # fastws at server_max_window_bits=8 does not.
    pmd = PerMessageDeflate(server_max_window_bits=8, min_size=0)
    d = zlib.decompressobj(wbits=-8)
    for _ in range(4):
        [(_, _, rsv1, payload)] = raw_frames(pmd.frame(codec.OP_BINARY, block))
        assert rsv1 and d.decompress(payload + TAIL) == block


def test_fragments_are_one_deflate_stream() -> None:
    pmd = PerMessageDeflate()
    chunks = [TEXT[:500], TEXT[500:1500], b"", TEXT[1500:]]
    data = pmd.fragment(codec.OP_BINARY, chunks[0], False)
    data += pmd.fragment(codec.OP_PING, b"between", True)  # control frames pass through
    data += pmd.fragment(codec.OP_CONT, chunks[1], False)
    data += pmd.fragment(codec.OP_CONT, chunks[2], False)
    data += pmd.fragment(codec.OP_CONT, chunks[3], True)
    frames = raw_frames(data)
    assert [(f[0], f[1], f[2]) for f in frames] == [
        (codec.OP_BINARY, False, True),
        (codec.OP_PING, True, False),
        (codec.OP_CONT, False, False),
        (codec.OP_CONT, False, False),
        (codec.OP_CONT, True, False),
    ]
    assert frames[1][3] == b"between"
    d = zlib.decompressobj(wbits=-15)
    assert b"".join(d.decompress(f[3]) for f in frames if f[0] != codec.OP_PING) + d.decompress(TAIL) == TEXT
    # The client's reader agrees: one compressed message and a ping.
    events = server_frames(data)
    assert [e[0] for e in events] == [codec.OP_PING, codec.OP_BINARY | codec.FLAG_RSV1]
    # A whole message sent after it shares the context (takeover).
    [(_, _, rsv1, payload)] = raw_frames(pmd.frame(codec.OP_BINARY, TEXT))
    assert rsv1 and d.decompress(payload + TAIL) == TEXT and len(payload) < 30


def test_fragment_single_frame_follows_the_threshold() -> None:
    pmd = PerMessageDeflate()
    [(_, _, rsv1, payload)] = raw_frames(pmd.fragment(codec.OP_TEXT, "short", True))
    assert not rsv1 and payload == b"short"
    # A continuation of a message not started compressed goes out as is.
    [(opcode, fin, rsv1, payload)] = raw_frames(pmd.fragment(codec.OP_CONT, b"tail" * 20, True))
    assert (opcode, fin, rsv1, payload) == (codec.OP_CONT, True, False, b"tail" * 20)


def test_wire_limit_leaves_room_for_expansion() -> None:
    pmd = PerMessageDeflate(max_message_size=2**20)
    assert pmd.max_size == 2**20
    incompressible = os.urandom(2**20)
    c = zlib.compressobj(wbits=-15)
    compressed = client_compress(c, incompressible)
    assert 2**20 < len(compressed) <= pmd.wire_limit  # type: ignore[operator]
    assert pmd.inflate(compressed, False) == incompressible
    assert PerMessageDeflate(max_message_size=None).wire_limit is None


# -- options -----------------------------------------------------------------------


def test_config_default_and_validation() -> None:
    assert DEFAULTS.compression == "deflate"
    assert Config(compression=None).compression is None
    for bad in (
        {"compression": "brotli"},
        {"deflate_server_max_window_bits": 7},
        {"deflate_server_max_window_bits": 16},
        {"deflate_client_max_window_bits": 16},
        {"deflate_mem_level": 0},
        {"deflate_level": 10},
        {"deflate_min_size": -1},
    ):
        with pytest.raises(ValueError):
            Config(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "flags, expected",
    [([], "deflate"), (["--ws-per-message-deflate", "false"], None), (["--ws-per-message-deflate", "TRUE"], "deflate")],
)
def test_cli_flag(flags: list[str], expected: str | None) -> None:
    config = config_from_args(build_parser().parse_args(["serve", *flags]))
    assert config.compression == expected
    assert config.replace(compression=DEFAULTS.compression) == DEFAULTS


def test_cli_flag_rejects_other_values() -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["serve", "--ws-per-message-deflate", "maybe"])
    assert info.value.code == 2
