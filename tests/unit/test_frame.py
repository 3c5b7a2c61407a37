"""Frame codec: the compiled module and its pure-Python twin, one suite.

Every table test takes the ``frame`` fixture, which runs it once against
``fastws.codec._frame_py`` and once against ``fastws.codec._frame``. A missing compiled
module is a failure, not a skip, unless ``FASTWS_NO_EXTENSIONS`` is set (any
value but "" or "0", as in ``setup.py``).

Inputs are raw bytes built here by :func:`raw` (independently of
``encode_frame``, which is under test too). Every reader input is parsed
three ways, whole, one byte at a time and in odd-sized mutable chunks, and
must give the same events and the same close code each way. The hypothesis
tests hold the two implementations against each other on random streams.
"""

from __future__ import annotations

import itertools
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import import_module_or_fail
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TWIN, COMPILED = "fastws.codec._frame_py", "fastws.codec._frame"

MASK = b"\x37\xfa\x21\x3d"
FIN = 0x80
RSV1, RSV2, RSV3 = 0x40, 0x20, 0x10
TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA

Events = list[tuple[int, bytes]]


def _load(name: str) -> ModuleType:
    return import_module_or_fail(name)


# Module scope: modules are immutable, and hypothesis rejects function-scoped
# fixtures in @given tests.
@pytest.fixture(scope="module", params=[TWIN, COMPILED], ids=["py", "c"])
def frame(request: pytest.FixtureRequest) -> ModuleType:
    return _load(request.param)


@pytest.fixture(scope="module")
def both() -> tuple[ModuleType, ModuleType]:
    return _load(TWIN), _load(COMPILED)


# -- helpers ----------------------------------------------------------------


def xor(data: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


def raw(b0: int, payload: bytes = b"", *, mask: bytes | None = MASK, enc: int | None = None,
        length: int | None = None) -> bytes:
    """One frame from its first byte. ``enc`` forces a 7/16/64-bit length
    field, ``length`` overrides the declared length (the payload is then
    sent as given, e.g. truncated)."""
    n = len(payload) if length is None else length
    if enc is None:
        enc = 7 if n < 126 else 16 if n < 65536 else 64
    b1 = 0x80 if mask is not None else 0
    if enc == 7:
        head = bytes((b0, b1 | n))
    elif enc == 16:
        head = bytes((b0, b1 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, b1 | 127)) + n.to_bytes(8, "big")
    if mask is None:
        return head + payload
    return head + mask + xor(payload, mask)


def drain(reader: Any, mod: ModuleType, out: Events) -> int | None:
    """Pull events into ``out``; the close code of a ProtocolError, if any."""
    while True:
        try:
            event = reader.next_event()
        except mod.ProtocolError as exc:
            assert exc.code in (1002, 1007, 1009)
            assert "RFC" in str(exc)
            return int(exc.code)
        if event is None:
            return None
        assert type(event) is tuple and len(event) == 2
        assert type(event[0]) is int and type(event[1]) is bytes
        out.append(event)


def parse(mod: ModuleType, chunks: Any, **kwargs: Any) -> tuple[Events, int | None]:
    """Feed ``chunks`` one by one, draining after each: (events, code)."""
    reader = mod.FrameReader(**kwargs)
    events: Events = []
    for chunk in chunks:
        reader.feed_data(chunk)
        code = drain(reader, mod, events)
        if code is not None:
            # Finished: everything is ignored from now on.
            reader.feed_data(raw(FIN | PING, b"x"))
            assert reader.next_event() is None
            assert reader.buffered == 0
            return events, code
    return events, None


def splits(data: bytes) -> list[list[Any]]:
    """The ways every input is fed: whole, byte by byte, odd mutable chunks."""
    ways: list[list[Any]] = [[data], [data[i : i + 1] for i in range(len(data))]]
    chunks: list[Any] = []
    for n, i in enumerate(range(0, len(data), 7)):
        piece = data[i : i + 7]
        chunks.append(bytearray(piece) if n % 2 else memoryview(piece))
    ways.append(chunks)
    return ways


def check(mod: ModuleType, data: bytes, events: Events, code: int | None = None,
          **kwargs: Any) -> None:
    for chunks in splits(data):
        assert parse(mod, chunks, **kwargs) == (events, code)


# -- valid streams ----------------------------------------------------------

BIG = bytes(range(256)) * 300  # 76800 bytes

VALID: list[tuple[str, bytes, Events, dict[str, Any]]] = [
    ("text-empty", raw(FIN | TEXT), [(1, b"")], {}),
    ("binary-empty", raw(FIN | BINARY), [(2, b"")], {}),
    ("text-ascii", raw(FIN | TEXT, b"Hello"), [(1, b"Hello")], {}),
    ("text-utf8", raw(FIN | TEXT, "κόσμε €𝄞".encode()), [(1, "κόσμε €𝄞".encode())], {}),
    ("len-125", raw(FIN | BINARY, BIG[:125]), [(2, BIG[:125])], {}),
    ("len-126", raw(FIN | BINARY, BIG[:126]), [(2, BIG[:126])], {}),
    ("len-65535", raw(FIN | BINARY, BIG[:65535]), [(2, BIG[:65535])], {}),
    ("len-65536", raw(FIN | BINARY, BIG[:65536]), [(2, BIG[:65536])], {}),
    ("len-0-enc16", raw(FIN | BINARY, b"", enc=16), [(2, b"")], {}),
    ("len-5-enc16", raw(FIN | BINARY, b"abcde", enc=16), [(2, b"abcde")], {}),
    ("len-5-enc64", raw(FIN | TEXT, b"abcde", enc=64), [(1, b"abcde")], {}),
    ("len-125-enc64", raw(FIN | BINARY, BIG[:125], enc=64), [(2, BIG[:125])], {}),
    ("len-65535-enc64", raw(FIN | BINARY, BIG[:65535], enc=64), [(2, BIG[:65535])], {}),
    ("ping-empty", raw(FIN | PING), [(9, b"")], {}),
    ("ping-125", raw(FIN | PING, BIG[:125]), [(9, BIG[:125])], {}),
    ("pong", raw(FIN | PONG, b"pong"), [(10, b"pong")], {}),
    # Lenient about non-minimal lengths, control frames included.
    ("ping-enc16", raw(FIN | PING, b"hi", enc=16), [(9, b"hi")], {}),
    ("close-enc64", raw(FIN | CLOSE, b"\x03\xe8", enc=64), [(8, b"\x03\xe8")], {}),
    (
        "fragments-with-controls",
        raw(TEXT, b"Hel") + raw(FIN | PING, b"1") + raw(CONT, b"lo ")
        + raw(FIN | PONG, b"2") + raw(FIN | CONT, "wörld".encode()),
        [(9, b"1"), (10, b"2"), (1, "Hello wörld".encode())],
        {},
    ),
    (
        "fragments-empty",
        raw(BINARY) + raw(CONT) + raw(CONT, b"x") + raw(FIN | CONT),
        [(2, b"x")],
        {},
    ),
    (
        "fragments-big",
        raw(BINARY, BIG[:70000]) + raw(FIN | CONT, BIG[70000:]),
        [(2, BIG)],
        {},
    ),
    (
        "messages-back-to-back",
        raw(FIN | TEXT, b"a") + raw(FIN | BINARY, b"b") + raw(TEXT, b"c") + raw(FIN | CONT, b"d")
        + raw(FIN | BINARY, BIG[:300]),
        [(1, b"a"), (2, b"b"), (1, b"cd"), (2, BIG[:300])],
        {},
    ),
    ("close-empty", raw(FIN | CLOSE), [(8, b"")], {}),
    ("close-code", raw(FIN | CLOSE, b"\x03\xe8"), [(8, b"\x03\xe8")], {}),
    ("close-reason", raw(FIN | CLOSE, b"\x0f\xa0" + "bye ü".encode()),
     [(8, b"\x0f\xa0" + "bye ü".encode())], {}),
    # After the close frame the reader is finished: what follows is dropped,
    # even garbage.
    ("close-then-ignored", raw(FIN | CLOSE, b"\x03\xe9") + raw(FIN | TEXT, b"late") + b"\xff\xff",
     [(8, b"\x03\xe9")], {}),
    ("client-unmasked", raw(FIN | TEXT, b"hi", mask=None) + raw(FIN | BINARY, BIG[:200], mask=None),
     [(1, b"hi"), (2, BIG[:200])], {"require_mask": False}),
    ("client-fragments", raw(TEXT, "é".encode()[:1], mask=None) + raw(FIN | PING, mask=None)
     + raw(FIN | CONT, "é".encode()[1:], mask=None),
     [(9, b""), (1, "é".encode())], {"require_mask": False}),
    # Compressed: flagged, and the reader leaves the UTF-8 check to the
    # layer that inflates.
    ("rsv1-text", raw(FIN | RSV1 | TEXT, b"\xf2\x48\xcd\xc9\xc9\x07\x00\xff"),
     [(0x41, b"\xf2\x48\xcd\xc9\xc9\x07\x00\xff")], {"rsv1_allowed": True}),
    ("rsv1-fragments", raw(RSV1 | BINARY, b"\xff\xfe") + raw(FIN | PING) + raw(FIN | CONT, b"\x00"),
     [(9, b""), (0x42, b"\xff\xfe\x00")], {"rsv1_allowed": True}),
    ("rsv1-fragmented-text", raw(RSV1 | TEXT, b"\xc3") + raw(FIN | CONT, b"\xff"),
     [(0x41, b"\xc3\xff")], {"rsv1_allowed": True}),
    ("rsv1-allowed-not-used", raw(FIN | TEXT, b"plain"), [(1, b"plain")], {"rsv1_allowed": True}),
    ("max-exact", raw(TEXT, b"12345") + raw(FIN | CONT, b"67890"), [(1, b"1234567890")],
     {"max_message_size": 10}),
    ("max-zero-empty", raw(FIN | BINARY), [(2, b"")], {"max_message_size": 0}),
    ("max-controls-not-counted", raw(BINARY, b"123456") + raw(FIN | PING, BIG[:100])
     + raw(FIN | CONT, b"7890"), [(9, BIG[:100]), (2, b"1234567890")], {"max_message_size": 10}),
    ("max-close-not-counted", raw(FIN | CLOSE, b"\x03\xe8" + b"r" * 100),
     [(8, b"\x03\xe8" + b"r" * 100)], {"max_message_size": 10}),
]


@pytest.mark.parametrize(("data", "events", "kwargs"), [v[1:] for v in VALID],
                         ids=[v[0] for v in VALID])
def test_valid(frame: ModuleType, data: bytes, events: Events, kwargs: dict[str, Any]) -> None:
    check(frame, data, events, **kwargs)


# -- protocol errors --------------------------------------------------------

PING_1 = raw(FIN | PING, b"p")
ERRORS: list[tuple[str, bytes, Events, int, dict[str, Any]]] = [
    ("unmasked-client-frame", PING_1 + raw(FIN | TEXT, b"hi", mask=None), [(9, b"p")], 1002, {}),
    ("masked-server-frame", raw(FIN | TEXT, b"hi"), [], 1002, {"require_mask": False}),
    ("rsv1-not-negotiated", PING_1 + raw(FIN | RSV1 | TEXT, b"x"), [(9, b"p")], 1002, {}),
    ("rsv2", raw(FIN | RSV2 | BINARY, b"x"), [], 1002, {}),
    ("rsv3", raw(FIN | RSV3 | BINARY, b"x"), [], 1002, {}),
    ("rsv2-with-deflate", raw(FIN | RSV2 | BINARY, b"x"), [], 1002, {"rsv1_allowed": True}),
    ("rsv3-with-deflate", raw(FIN | RSV3 | TEXT, b"x"), [], 1002, {"rsv1_allowed": True}),
    ("rsv1-continuation", raw(RSV1 | TEXT, b"x") + raw(FIN | RSV1 | CONT, b"y"), [], 1002,
     {"rsv1_allowed": True}),
    ("rsv1-ping", raw(FIN | RSV1 | PING), [], 1002, {"rsv1_allowed": True}),
    ("rsv1-close", raw(FIN | RSV1 | CLOSE), [], 1002, {"rsv1_allowed": True}),
    *[(f"opcode-{op}", PING_1 + raw(FIN | op, b"x"), [(9, b"p")], 1002, {})
      for op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15)],
    ("ping-126", raw(FIN | PING, BIG[:126]), [], 1002, {}),
    ("pong-126", raw(FIN | PONG, BIG[:126]), [], 1002, {}),
    ("close-126", raw(FIN | CLOSE, b"\x03\xe8" + BIG[:124]), [], 1002, {}),
    ("ping-64bit-length", raw(FIN | PING, b"x" * 200, enc=64), [], 1002, {}),
    ("ping-not-fin", raw(PING, b"x"), [], 1002, {}),
    ("close-not-fin", raw(CLOSE), [], 1002, {}),
    ("continuation-first", raw(FIN | CONT, b"x"), [], 1002, {}),
    ("continuation-after-message", raw(FIN | TEXT, b"a") + raw(FIN | CONT, b"x"), [(1, b"a")], 1002, {}),
    ("text-during-fragments", raw(TEXT, b"a") + raw(FIN | PING) + raw(FIN | TEXT, b"b"), [(9, b"")],
     1002, {}),
    ("binary-during-fragments", raw(BINARY, b"a") + raw(BINARY, b"b"), [], 1002, {}),
    ("length-msb", bytes((FIN | BINARY, 0xFF)) + b"\x80" + b"\x00" * 7 + MASK, [], 1002,
     {"max_message_size": None}),
    ("length-msb-only-header", bytes((FIN | BINARY, 0xFF)) + b"\xff" * 8, [], 1002,
     {"max_message_size": None}),
    ("close-1-byte", raw(FIN | CLOSE, b"\x03"), [], 1002, {}),
    ("close-code-1005", raw(FIN | CLOSE, b"\x03\xed"), [], 1002, {}),
    ("close-code-999", PING_1 + raw(FIN | CLOSE, b"\x03\xe7reason"), [(9, b"p")], 1002, {}),
    ("close-bad-reason", raw(FIN | CLOSE, b"\x03\xe8\xff"), [], 1007, {}),
    ("close-surrogate-reason", raw(FIN | CLOSE, b"\x03\xe8\xed\xa0\x80"), [], 1007, {}),
    ("text-invalid", PING_1 + raw(FIN | TEXT, b"ab\xffcd"), [(9, b"p")], 1007, {}),
    ("text-truncated", raw(FIN | TEXT, b"\xe2\x82"), [], 1007, {}),
    ("fragments-truncated-at-fin", raw(TEXT, b"ok") + raw(FIN | CONT, b"\xf0\x9f\x98"), [], 1007, {}),
    ("fragments-invalid-second", raw(TEXT, b"\xce") + raw(FIN | CONT, b"\x41"), [], 1007, {}),
    ("text-unmasked-client-invalid", raw(FIN | TEXT, b"\xc0\xaf", mask=None), [], 1007,
     {"require_mask": False}),
    ("max-single", raw(FIN | BINARY, b"x" * 11), [], 1009, {"max_message_size": 10}),
    ("max-zero", raw(FIN | TEXT, b"x"), [], 1009, {"max_message_size": 0}),
    ("max-fragments", raw(TEXT, b"x" * 6) + raw(FIN | PING) + raw(FIN | CONT, b"x" * 5), [(9, b"")],
     1009, {"max_message_size": 10}),
    ("max-default-1MiB", raw(FIN | BINARY, length=1048577), [], 1009, {}),
    ("max-64bit-huge", raw(FIN | BINARY, length=2**63 - 1), [], 1009, {}),
    ("no-limit-absurd-length", raw(FIN | BINARY, length=2**63 - 1), [], 1009, {"max_message_size": None}),
    # A message over the limit fails before its text is checked.
    ("max-before-utf8", raw(FIN | TEXT, b"\xff" * 20), [], 1009, {"max_message_size": 10}),
]


@pytest.mark.parametrize(("data", "events", "code", "kwargs"), [e[1:] for e in ERRORS],
                         ids=[e[0] for e in ERRORS])
def test_error(frame: ModuleType, data: bytes, events: Events, code: int,
               kwargs: dict[str, Any]) -> None:
    check(frame, data, events, code, **kwargs)


def test_error_is_raised_once_then_finished(frame: ModuleType) -> None:
    reader = frame.FrameReader()
    reader.feed_data(raw(FIN | TEXT, b"x", mask=None) + raw(FIN | PING))
    with pytest.raises(frame.ProtocolError) as info:
        reader.next_event()
    assert info.value.code == 1002
    assert str(info.value) == info.value.args[0]
    assert "5.1" in str(info.value)
    assert reader.next_event() is None
    reader.feed_data(raw(FIN | PING))
    assert reader.next_event() is None
    assert reader.buffered == 0


def test_protocol_error_class(frame: ModuleType) -> None:
    assert issubclass(frame.ProtocolError, Exception)
    exc = frame.ProtocolError(1007, "invalid text (RFC 6455 section 8.1)")
    assert exc.code == 1007
    assert str(exc) == "invalid text (RFC 6455 section 8.1)"


def test_constants(frame: ModuleType) -> None:
    assert (frame.OP_CONT, frame.OP_TEXT, frame.OP_BINARY) == (0, 1, 2)
    assert (frame.OP_CLOSE, frame.OP_PING, frame.OP_PONG) == (8, 9, 10)
    assert frame.FLAG_RSV1 == 0x40


# -- errors as early as they can be known ----------------------------------

EARLY: list[tuple[str, bytes, int, dict[str, Any]]] = [
    # Prefixes of a stream that already show the violation.
    ("rsv2-first-byte", bytes((FIN | RSV2 | TEXT,)), 1002, {}),
    ("opcode-first-byte", bytes((FIN | 3,)), 1002, {}),
    ("unmasked-second-byte", bytes((FIN | TEXT, 0x05)), 1002, {}),
    ("control-length-before-mask-key", bytes((FIN | PING, 0x80 | 126, 0x00, 0x7E)), 1002, {}),
    # The limit trips on the header alone, before the mask key or payload.
    ("max-16bit-header", bytes((FIN | BINARY, 0x80 | 126, 0x00, 0xC8)), 1009, {"max_message_size": 100}),
    ("max-64bit-header", bytes((FIN | BINARY, 0x80 | 127)) + (100 * 2**20).to_bytes(8, "big"), 1009, {}),
    ("max-fragment-header", raw(TEXT, b"x" * 60) + bytes((CONT, 0x80 | 60)), 1009,
     {"max_message_size": 100}),
    # Invalid text fails before the rest of the frame (Autobahn 6.4.x) or
    # the rest of the message arrives.
    ("utf8-in-first-fragment", raw(TEXT, b"abc\xc0"), 1007, {}),
    ("utf8-surrogate-prefix-in-fragment", raw(TEXT, b"abc\xed\xa0"), 1007, {}),
    ("utf8-beyond-max-prefix-in-fragment", raw(TEXT, b"abc\xf4\x90"), 1007, {}),
    ("utf8-in-partial-frame", raw(FIN | TEXT, b"x" * 1000 + b"\xf5", length=100000), 1007, {}),
    ("utf8-in-partial-continuation", raw(TEXT, b"ok") + raw(FIN | CONT, b"\xce\xba\xce\x41", length=5000),
     1007, {}),
    ("utf8-partial-unmasked", raw(FIN | TEXT, b"x" * 20 + b"\xe0\x80", mask=None, length=5000), 1007,
     {"require_mask": False}),
]


@pytest.mark.parametrize(("data", "code", "kwargs"), [e[1:] for e in EARLY], ids=[e[0] for e in EARLY])
def test_error_before_frame_complete(frame: ModuleType, data: bytes, code: int,
                                     kwargs: dict[str, Any]) -> None:
    # `raw(..., length=)` declares more than it sends: the frame never
    # completes, so only an early check can raise.
    check(frame, data, [], code, **kwargs)


def test_partial_text_frame_is_not_an_error(frame: ModuleType) -> None:
    # A valid prefix, even one ending inside a character, must not fail.
    text = "ab€𝄞".encode()
    for cut in range(len(text) + 1):
        data = raw(FIN | TEXT, text[:cut], length=len(text) + 10)
        check(frame, data, [], None)
    check(frame, raw(TEXT, text[:3]), [], None)


# -- UTF-8 ------------------------------------------------------------------

VALID_UTF8 = [
    b"",
    b"\x00",
    b"\x7f",
    b"Hello, world",
    b"a" * 100,
    b"\xc2\x80",                 # U+0080, smallest 2-byte
    b"\xdf\xbf",                 # U+07FF
    b"\xe0\xa0\x80",             # U+0800, smallest 3-byte
    b"\xe1\x80\x80",
    b"\xec\xbf\xbf",
    b"\xed\x80\x80",             # U+D000
    b"\xed\x9f\xbf",             # U+D7FF, just below the surrogates
    b"\xee\x80\x80",             # U+E000, just above
    b"\xef\xbf\xbd",             # U+FFFD
    b"\xef\xbf\xbf",             # U+FFFF (a noncharacter, still valid)
    b"\xf0\x90\x80\x80",         # U+10000, smallest 4-byte
    b"\xf1\x80\x80\x80",
    b"\xf3\xbf\xbf\xbf",
    b"\xf4\x8f\xbf\xbf",         # U+10FFFF, the largest
    "κόσμε".encode(),
    "Ünïcödé – 日本語 – 🎉🚀".encode(),
    b"x" * 15 + "é".encode() + b"y" * 17 + "𝄞".encode() + b"z" * 33,
    "日本".encode() * 50,
]

INVALID_UTF8 = [
    b"\x80",                     # lone continuation bytes
    b"\xbf",
    b"a\x80b",
    b"\xc0\x80",                 # overlong U+0000
    b"\xc1\xbf",                 # overlong U+007F
    b"\xe0\x80\x80",             # overlong 3-byte
    b"\xe0\x9f\xbf",             # overlong U+07FF
    b"\xf0\x80\x80\x80",         # overlong 4-byte
    b"\xf0\x8f\xbf\xbf",         # overlong U+FFFF
    b"\xed\xa0\x80",             # U+D800, first surrogate
    b"\xed\xaf\xbf",             # U+DBFF
    b"\xed\xb0\x80",             # U+DC00
    b"\xed\xbf\xbf",             # U+DFFF, last surrogate
    b"\xed\xa0\x80\xed\xb0\x80", # a surrogate pair, CESU-8 style
    b"\xf4\x90\x80\x80",         # U+110000
    b"\xf5\x80\x80\x80",
    b"\xf7\xbf\xbf\xbf",
    b"\xf8\x88\x80\x80\x80",     # 5-byte form
    b"\xfc\x84\x80\x80\x80\x80", # 6-byte form
    b"\xfe",
    b"\xff",
    b"\xc2",                     # truncated at the end
    b"\xe2\x82",
    b"\xf0\x9f\x98",
    b"\xc2A",                    # continuation missing
    b"\xe2\x28\xa1",
    b"\xe2\x82\x28",
    b"\xf0\x28\x8c\xbc",
    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64",
    b"a" * 7 + b"\xff",          # at every offset of the ASCII fast path
    b"a" * 8 + b"\xff",
    b"a" * 15 + b"\xff",
    b"a" * 16 + b"\xff" + b"a" * 20,
    b"a" * 31 + b"\x80" + b"a" * 40,
    "€".encode() * 10 + b"\xed\xbf\xbf" + b"a" * 16,
]


@pytest.mark.parametrize("data", VALID_UTF8)
def test_validate_utf8_valid(frame: ModuleType, data: bytes) -> None:
    assert frame.validate_utf8(data) is True
    assert frame.validate_utf8(bytearray(data)) is True
    assert frame.validate_utf8(memoryview(data)) is True
    check(frame, raw(FIN | TEXT, data), [(1, data)])


@pytest.mark.parametrize("data", INVALID_UTF8)
def test_validate_utf8_invalid(frame: ModuleType, data: bytes) -> None:
    assert frame.validate_utf8(data) is False
    assert frame.validate_utf8(bytearray(data)) is False
    assert frame.validate_utf8(memoryview(data)) is False
    check(frame, raw(FIN | TEXT, data), [], 1007)
    check(frame, raw(FIN | CLOSE, b"\x03\xe8" + data), [], 1007)
    # Binary payloads are not checked.
    check(frame, raw(FIN | BINARY, data), [(2, data)])


def test_validate_utf8_short_strings_exhaustive(frame: ModuleType) -> None:
    # Every 1- and 2-byte string, and every 3-byte string around the
    # boundaries that matter, against CPython's decoder.
    def expected(b: bytes) -> bool:
        try:
            b.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True

    samples = [bytes((a,)) for a in range(256)]
    samples += [bytes((a, b)) for a in range(256) for b in range(256)]
    thirds = (0x00, 0x7F, 0x80, 0x9F, 0xA0, 0xBF, 0xC0)
    samples += [bytes((a, b, c)) for a in range(0xE0, 0xF6) for b in range(0x70, 0xC8) for c in thirds]
    wrong = [s for s in samples if frame.validate_utf8(s) != expected(s)]
    assert wrong == []


def _viable(prefix: bytes) -> bool:
    """Whether some valid UTF-8 text starts with ``prefix`` (brute force:
    only the second byte of a sequence has a narrowed range, later ones are
    any of 80..BF)."""
    for second in (b"", b"\x80", b"\x90", b"\xa0"):
        for k in range(4):
            try:
                (prefix + second + b"\x80" * k).decode("utf-8")
            except UnicodeDecodeError:
                continue
            return True
    return False


def test_fail_fast_on_every_two_byte_prefix(frame: ModuleType) -> None:
    # A non-final fragment ending with these bytes fails (1007) exactly when
    # no continuation could make them valid.
    wrong = []
    for a in range(0x80, 0x100):
        for b in range(0x100):
            prefix = bytes((a, b))
            reader = frame.FrameReader(require_mask=False)
            reader.feed_data(bytes((TEXT, 3)) + b"x" + prefix)
            try:
                reader.next_event()
                failed = False
            except frame.ProtocolError as exc:
                assert exc.code == 1007
                failed = True
            if failed == _viable(prefix):
                wrong.append(prefix)
    assert wrong == []


TEXT_SAMPLE = "a€𝄞é日\x7fz".encode()


def test_text_split_at_every_position(frame: ModuleType) -> None:
    for i in range(len(TEXT_SAMPLE) + 1):
        data = raw(TEXT, TEXT_SAMPLE[:i]) + raw(FIN | PING, b"!") + raw(FIN | CONT, TEXT_SAMPLE[i:])
        check(frame, data, [(9, b"!"), (1, TEXT_SAMPLE)])


def test_text_split_in_three_everywhere(frame: ModuleType) -> None:
    n = len(TEXT_SAMPLE)
    for i, j in itertools.combinations_with_replacement(range(n + 1), 2):
        data = raw(TEXT, TEXT_SAMPLE[:i]) + raw(CONT, TEXT_SAMPLE[i:j]) + raw(FIN | CONT, TEXT_SAMPLE[j:])
        assert parse(frame, [data]) == ([(1, TEXT_SAMPLE)], None)


def test_text_incomplete_at_final_fragment_at_every_cut(frame: ModuleType) -> None:
    for cut in (1, 2, 3):
        data = raw(TEXT, b"ok") + raw(FIN | CONT, "𝄞".encode()[:cut])
        check(frame, data, [], 1007)


def test_big_text_in_chunks_of_every_size(frame: ModuleType) -> None:
    # Partial frames get unmasked in place at offsets that are not multiples
    # of 4 and then finished from there: the mask must rotate with them.
    text = ("ascii run " * 7 + "κόσμε 日本語 🎉 ").encode() * 20
    data = raw(FIN | TEXT, text) + raw(FIN | BINARY, text) + raw(TEXT, text[:333]) + raw(FIN | CONT, text[333:])
    expected = [(1, text), (2, text), (1, text)]
    for size in (1, 2, 3, 5, 6, 7, 9, 13, 31, 37, 64, 100, 509, 1000):
        assert parse(frame, [data[i : i + size] for i in range(0, len(data), size)]) == (expected, None)


# A one-frame message of 256 KiB or more that is still arriving is filled in
# place (compiled reader): chunks of every kind and size, frames behind it in
# the same chunk, text checked as it comes, errors at the same point as the
# twin.

LARGE = 300_000


def _chunks(data: bytes, sizes: list[int], kinds: str) -> list[Any]:
    out: list[Any] = []
    i = 0
    k = 0
    while i < len(data):
        size = sizes[k % len(sizes)]
        piece = data[i : i + size]
        kind = kinds[k % len(kinds)]
        out.append(piece if kind == "b" else bytearray(piece) if kind == "a" else memoryview(piece))
        i += size
        k += 1
    return out


@pytest.mark.parametrize("sizes", [[65536], [262144], [1, 4095, 70000], [300_010], [10**6], [7, 65536, 13, 200_000]])
@pytest.mark.parametrize("kinds", ["b", "a", "m", "bam"])
def test_big_messages_in_chunks(both: tuple[ModuleType, ModuleType], sizes: list[int], kinds: str) -> None:
    text = ("κόσμε 日本語 🎉 ascii " * (LARGE // 30)).encode()[:LARGE]
    text = text[: len(text.decode("utf-8", "ignore").encode())]  # whole characters
    blob = bytes(range(256)) * (LARGE // 256 + 1)
    data = (
        raw(FIN | TEXT, text) + raw(FIN | PING, b"between") + raw(FIN | BINARY, blob)
        + raw(FIN | BINARY | RSV1, blob[:LARGE]) + raw(FIN | TEXT, b"after") + raw(FIN | BINARY, b"")
    )  # fmt: skip
    expected = [(1, text), (9, b"between"), (2, blob), (2 | 0x40, blob[:LARGE]), (1, b"after"), (2, b"")]
    for mod in both:
        assert parse(mod, _chunks(data, sizes, kinds), rsv1_allowed=True, max_message_size=None) == (expected, None)


@pytest.mark.parametrize("at", [0, 1, 65535, 262144, LARGE - 1])
def test_big_text_fails_where_the_twin_fails(both: tuple[ModuleType, ModuleType], at: int) -> None:
    text = bytearray(b"a" * LARGE)
    text[at] = 0xFF  # never valid UTF-8
    data = raw(FIN | TEXT, bytes(text)) + raw(FIN | TEXT, b"never seen")
    for sizes in ([65536], [1000, 299_000], [10**6]):
        results = [parse(mod, _chunks(data, sizes, "b"), max_message_size=None) for mod in both]
        assert results[0] == results[1] == ([], 1007)


def test_big_text_cut_inside_a_character_fails_at_the_end(both: tuple[ModuleType, ModuleType]) -> None:
    text = b"a" * (LARGE - 1) + "é".encode()[:1]
    data = raw(FIN | TEXT, text)
    for mod in both:
        assert parse(mod, _chunks(data, [70000], "b"), max_message_size=None) == ([], 1007)


def test_big_message_buffered_and_fed_twice(frame: ModuleType) -> None:
    reader = frame.FrameReader(max_message_size=None)
    blob = b"x" * LARGE
    data = raw(FIN | BINARY, blob) + raw(FIN | TEXT, b"next")
    reader.feed_data(data[:1000])
    assert reader.next_event() is None
    reader.feed_data(data[1000:200_000])
    reader.feed_data(data[200_000:])  # completes it, with the next frame behind
    assert reader.next_event() == (2, blob)
    assert reader.next_event() == (1, b"next")
    assert reader.next_event() is None and reader.buffered == 0


def test_big_message_over_the_limit_fails_on_its_header(frame: ModuleType) -> None:
    data = raw(FIN | BINARY, b"x" * LARGE)
    assert parse(frame, [data[:20]], max_message_size=LARGE - 1) == ([], 1009)


# -- max_message_size -------------------------------------------------------


def test_max_message_size_attribute(frame: ModuleType) -> None:
    reader = frame.FrameReader()
    assert reader.max_message_size == 1048576
    reader.max_message_size = 5
    assert reader.max_message_size == 5
    reader.feed_data(raw(FIN | BINARY, b"12345"))
    assert reader.next_event() == (2, b"12345")
    reader.feed_data(raw(FIN | BINARY, b"123456"))
    with pytest.raises(frame.ProtocolError) as info:
        reader.next_event()
    assert info.value.code == 1009
    reader = frame.FrameReader(max_message_size=None)
    assert reader.max_message_size is None
    reader.max_message_size = 7
    assert reader.max_message_size == 7
    reader.max_message_size = None
    assert reader.max_message_size is None
    with pytest.raises(ValueError):
        reader.max_message_size = -1
    with pytest.raises(TypeError):
        reader.max_message_size = 1.5
    with pytest.raises(ValueError):
        frame.FrameReader(max_message_size=-5)


def test_max_message_size_none(frame: ModuleType) -> None:
    # Over the 1 MiB default: refused by default, accepted without a limit.
    data = raw(FIN | BINARY, BIG * 14)
    assert parse(frame, [data]) == ([], 1009)
    for size in (len(data), 4096):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        assert parse(frame, chunks, max_message_size=None) == ([(2, BIG * 14)], None)


def test_max_message_size_lowered_mid_message(frame: ModuleType) -> None:
    reader = frame.FrameReader(max_message_size=100)
    reader.feed_data(raw(BINARY, b"x" * 50))
    assert reader.next_event() is None
    reader.max_message_size = 40
    reader.feed_data(raw(FIN | CONT, b""))
    with pytest.raises(frame.ProtocolError) as info:
        reader.next_event()
    assert info.value.code == 1009


def test_max_message_size_fails_on_header_without_payload(frame: ModuleType) -> None:
    # A peer announcing 100 MB is refused on 10 bytes, with nothing buffered
    # beyond the header.
    reader = frame.FrameReader(max_message_size=1000)
    header = bytes((FIN | BINARY, 0x80 | 127)) + (100 * 2**20).to_bytes(8, "big")
    reader.feed_data(header[:9])
    assert reader.next_event() is None
    assert reader.buffered == 9
    reader.feed_data(header[9:])
    with pytest.raises(frame.ProtocolError) as info:
        reader.next_event()
    assert info.value.code == 1009


# -- buffering --------------------------------------------------------------


def test_buffered(frame: ModuleType) -> None:
    reader = frame.FrameReader()
    assert reader.buffered == 0
    first = raw(BINARY, b"0123456789")
    second = raw(FIN | CONT, b"abc")
    reader.feed_data(first + second[:3])
    assert reader.buffered == len(first) + 3
    assert reader.next_event() is None
    assert reader.buffered == 10 + 3  # the partial message and the unparsed bytes
    reader.feed_data(second[3:])
    assert reader.next_event() == (2, b"0123456789abc")
    assert reader.buffered == 0
    assert reader.next_event() is None


def test_feed_twice_before_draining(frame: ModuleType) -> None:
    data = raw(FIN | TEXT, b"one") + raw(FIN | TEXT, b"two") + raw(FIN | PING, b"3")
    reader = frame.FrameReader()
    reader.feed_data(data[:10])
    reader.feed_data(data[10:20])
    reader.feed_data(data[20:])
    events: Events = []
    assert drain(reader, frame, events) is None
    assert events == [(1, b"one"), (1, b"two"), (9, b"3")]
    # And after a first event was taken out of the caller's bytes.
    reader = frame.FrameReader()
    reader.feed_data(data[:12])
    assert reader.next_event() == (1, b"one")
    reader.feed_data(data[12:])
    events = []
    assert drain(reader, frame, events) is None
    assert events == [(1, b"two"), (9, b"3")]


def test_mutable_input_may_be_reused(frame: ModuleType) -> None:
    # A bytearray or memoryview may be a reused receive buffer: the reader
    # must not look at it after feed_data returns.
    data = raw(FIN | TEXT, b"hello") + raw(FIN | BINARY, b"world")
    for kind in (bytearray, lambda b: memoryview(bytearray(b))):
        buf = kind(data)
        reader = frame.FrameReader()
        reader.feed_data(buf)
        buf[:] = b"\xff" * len(data)
        events: Events = []
        assert drain(reader, frame, events) is None
        assert events == [(1, b"hello"), (2, b"world")]


def test_buffers_grow_and_shrink(frame: ModuleType) -> None:
    # 600 kB frames in pieces grow the buffers past their shrink threshold,
    # they are given back once empty, and must grow again for the next round.
    big = BIG * 8
    data = raw(FIN | BINARY, big) + raw(BINARY, big) + raw(FIN | CONT, b"!") + raw(FIN | TEXT, b"small")
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    expected = [(2, big), (2, big + b"!"), (1, b"small")]
    reader = frame.FrameReader(max_message_size=None)
    for _ in range(3):
        events: Events = []
        for chunk in chunks:
            reader.feed_data(chunk)
            assert drain(reader, frame, events) is None
        assert events == expected
        assert reader.buffered == 0


def test_many_frames_in_odd_chunks(frame: ModuleType) -> None:
    # Frame boundaries never line up with chunk boundaries, so parsed bytes
    # pile up at the front of the buffer until it is compacted.
    payloads = [BIG[i : i + (i * 37) % 301] for i in range(400)]
    data = b"".join(raw(FIN | BINARY, p, mask=bytes((i & 0xFF, 1, 2, 3))) for i, p in enumerate(payloads))
    expected = [(2, p) for p in payloads]
    for size in (7, 100, 1000, 4097, 20000):
        chunks: list[Any] = [data[i : i + size] for i in range(0, len(data), size)]
        assert parse(frame, chunks) == (expected, None)
        mixed = [bytearray(c) if n % 3 == 0 else c for n, c in enumerate(chunks)]
        assert parse(frame, mixed) == (expected, None)


def test_feed_data_rejects_str(frame: ModuleType) -> None:
    reader = frame.FrameReader()
    with pytest.raises(TypeError):
        reader.feed_data("text")


def test_options_are_keyword_only(frame: ModuleType) -> None:
    with pytest.raises(TypeError):
        frame.FrameReader(100)


# -- close payloads ---------------------------------------------------------

VALID_CODES = [*range(1000, 1004), *range(1007, 1015), *range(3000, 5000)]
INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


def test_parse_close_every_code(frame: ModuleType) -> None:
    valid = set(VALID_CODES)
    for code in range(65536):
        payload = code.to_bytes(2, "big")
        if code in valid:
            assert frame.parse_close(payload) == (code, "")
        else:
            with pytest.raises(frame.ProtocolError) as info:
                frame.parse_close(payload)
            assert info.value.code == 1002


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013,
                                  1014, 3000, 3999, 4000, 4999])
def test_close_frame_valid_code(frame: ModuleType, code: int) -> None:
    payload = code.to_bytes(2, "big") + "reason ✓".encode()
    check(frame, raw(FIN | CLOSE, payload), [(8, payload)])
    assert frame.parse_close(payload) == (code, "reason ✓")
    assert frame.close_payload(code, "reason ✓") == payload


@pytest.mark.parametrize("code", INVALID_CODES)
def test_close_frame_invalid_code(frame: ModuleType, code: int) -> None:
    payload = code.to_bytes(2, "big") + b"why"
    check(frame, raw(FIN | CLOSE, payload), [], 1002)
    with pytest.raises(frame.ProtocolError) as info:
        frame.parse_close(payload)
    assert info.value.code == 1002
    if code != 1005:
        with pytest.raises(ValueError):
            frame.close_payload(code)


def test_parse_close(frame: ModuleType) -> None:
    assert frame.parse_close(b"") == (1005, "")
    assert frame.parse_close(b"\x03\xe8") == (1000, "")
    assert frame.parse_close(b"\x0b\xb8caf\xc3\xa9") == (3000, "café")
    assert frame.parse_close(bytearray(b"\x03\xe9ok")) == (1001, "ok")
    assert frame.parse_close(memoryview(b"\x03\xe9ok")) == (1001, "ok")
    for bad, code in ((b"\x03", 1002), (b"\x03\xe8\xc3", 1007), (b"\x03\xe8\xed\xa0\x80", 1007),
                      (b"\x00\x00", 1002), (b"\x03\xe7", 1002)):
        with pytest.raises(frame.ProtocolError) as info:
            frame.parse_close(bad)
        assert info.value.code == code
        assert "RFC 6455" in str(info.value)


def test_close_payload(frame: ModuleType) -> None:
    assert frame.close_payload(1005) == b""
    assert frame.close_payload(1000) == b"\x03\xe8"
    assert frame.close_payload(1000, "") == b"\x03\xe8"
    assert frame.close_payload(4999, "é") == b"\x13\x87\xc3\xa9"
    assert frame.close_payload(1001, "x" * 123) == b"\x03\xe9" + b"x" * 123
    assert frame.close_payload(1001, "é" * 61 + "x") == b"\x03\xe9" + "é".encode() * 61 + b"x"
    for reason in ("x" * 124, "é" * 62, "🎉" * 31):
        with pytest.raises(ValueError):
            frame.close_payload(1000, reason)
    for code in VALID_CODES:
        assert frame.parse_close(frame.close_payload(code, "r")) == (code, "r")


# -- encoding ---------------------------------------------------------------

LENGTHS = [0, 1, 3, 4, 5, 125, 126, 127, 65535, 65536, 70001]


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_encode_frame_round_trip(frame: ModuleType, n: int, masked: bool) -> None:
    mask = MASK if masked else None
    payload = BIG[:n]
    expected = raw(FIN | BINARY, payload, mask=mask)
    for kind in (bytes, bytearray, memoryview):
        assert frame.encode_frame(2, kind(payload), mask=mask) == expected
    text = ("é" * n)[: n // 2] + "x" * (n - 2 * (n // 2))
    encoded = text.encode()
    assert frame.encode_frame(1, text, mask=mask) == raw(FIN | TEXT, encoded, mask=mask)
    stream = frame.encode_frame(2, payload, mask=mask) + frame.encode_frame(1, text, mask=mask)
    assert parse(frame, [stream], require_mask=masked, max_message_size=None) == (
        [(2, payload), (1, encoded)], None)


def test_encode_frame_header_bits(frame: ModuleType) -> None:
    assert frame.encode_frame(1, b"a", fin=False) == bytes((TEXT, 1)) + b"a"
    assert frame.encode_frame(0, b"a") == bytes((FIN | CONT, 1)) + b"a"
    assert frame.encode_frame(2, b"a", rsv1=True) == bytes((FIN | RSV1 | BINARY, 1)) + b"a"
    assert frame.encode_frame(1, b"", fin=False, rsv1=True) == bytes((RSV1 | TEXT, 0))
    assert frame.encode_frame(8, frame.close_payload(1000)) == b"\x88\x02\x03\xe8"
    assert frame.encode_frame(9, b"") == b"\x89\x00"
    assert frame.encode_frame(10, "p") == b"\x8a\x01p"
    assert frame.encode_frame(9, b"x" * 125)[:2] == b"\x89\x7d"
    assert frame.encode_frame(9, b"", mask=b"\x00\x00\x00\x00") == b"\x89\x80\x00\x00\x00\x00"
    assert frame.encode_frame(2, b"\x00" * 4, mask=bytearray(b"\x01\x02\x03\x04")) == (
        b"\x82\x84\x01\x02\x03\x04\x01\x02\x03\x04")


def test_encode_frame_rejects(frame: ModuleType) -> None:
    cases: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((9, b"x" * 126), {}),
        ((8, b"x" * 126), {}),
        ((10, "é" * 63), {}),
        ((9, b""), {"fin": False}),
        ((9, b""), {"rsv1": True}),
        ((0, b""), {"rsv1": True}),
        ((3, b""), {}),
        ((7, b""), {}),
        ((11, b""), {}),
        ((15, b""), {}),
        ((-1, b""), {}),
        ((1, b""), {"mask": b"abc"}),
        ((1, b""), {"mask": b"abcde"}),
    ]
    for args, kwargs in cases:
        with pytest.raises(ValueError):
            frame.encode_frame(*args, **kwargs)
    with pytest.raises(UnicodeEncodeError):
        frame.encode_frame(1, "\ud800")


def test_encode_then_read_fragments(frame: ModuleType) -> None:
    stream = (frame.encode_frame(1, "frag", fin=False, mask=MASK)
              + frame.encode_frame(9, b"ping", mask=MASK)
              + frame.encode_frame(0, "ment€", fin=False, mask=MASK)
              + frame.encode_frame(0, b"", mask=MASK)
              + frame.encode_frame(8, frame.close_payload(1000, "done"), mask=MASK))
    check(frame, stream, [(9, b"ping"), (1, "fragment€".encode()), (8, b"\x03\xe8done")])


# -- the two implementations against each other ----------------------------

VALID_CLOSE = [b"", b"\x03\xe8", b"\x03\xe9bye", b"\x0f\xa0\xc3\xa9"]
INVALID_CLOSE = [b"\x03", b"\x03\xed", b"\x00\x00x", b"\x03\xe8\xff", b"\x03\xe8\xed\xa0\x80"]
GOOD_UTF8 = [b"a", b"z", b"\x7f", b"\xc2\x80", b"\xc3\xa9", b"\xe0\xa0\x80", b"\xe2\x82\xac",
             b"\xed\x9f\xbf", b"\xee\x80\x80", b"\xf0\x90\x80\x80", b"\xf0\x9f\x8e\x89",
             b"\xf4\x8f\xbf\xbf"]
BAD_UTF8 = [b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xc0\xaf", b"\xc1\xbf", b"\xe0\x9f\xbf",
            b"\xf0\x8f\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80", b"\x80", b"\xbf", b"\xe2",
            b"\xf0\x9f", b"\xff", b"\xc3A"]


@st.composite
def utf8ish(draw: st.DrawFn) -> bytes:
    """Valid UTF-8 from characters of every length, and in half the cases
    one broken sequence somewhere: the place where an error must show."""
    parts = draw(st.lists(st.sampled_from(GOOD_UTF8), max_size=30))
    if draw(st.booleans()):
        parts.insert(draw(st.integers(0, len(parts))), draw(st.sampled_from(BAD_UTF8)))
    return b"".join(parts)


def rarely(draw: st.DrawFn, one_in: int) -> bool:
    # Not integers(1, n) == 1: hypothesis favours bounds, and shrinks to False.
    return draw(st.sampled_from([False] * (one_in - 1) + [True]))


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    """A byte stream of random frames: mostly well-formed messages, with a
    violation of each kind now and then."""
    kwargs = {
        "require_mask": draw(st.booleans()),
        "rsv1_allowed": draw(st.booleans()),
        "max_message_size": draw(st.one_of(st.none(), st.none(), st.integers(0, 600))),
    }

    def one(b0: int, payload: bytes) -> bytes:
        masked = kwargs["require_mask"] != rarely(draw, 40)
        key = draw(st.binary(min_size=4, max_size=4)) if masked else None
        n = len(payload)
        enc = draw(st.sampled_from([e for e in (None, None, 7, 16, 64) if e != 7 or n < 126]))
        return raw(b0, payload, mask=key, enc=enc)

    def control() -> bytes:
        op = draw(st.sampled_from([PING, PONG, PING, PONG, CLOSE]))
        if op == CLOSE:
            payload = draw(st.sampled_from(VALID_CLOSE * 2 + INVALID_CLOSE))
        else:
            payload = draw(st.binary(max_size=130 if rarely(draw, 10) else 125))
        bits = draw(st.sampled_from([0, FIN | RSV1])) if rarely(draw, 20) else FIN
        return one(bits | op, payload)

    out = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["message"] * 10 + ["control"] * 3 + ["garbage"]))
        if kind == "control":
            out.append(control())
        elif kind == "garbage":
            out.append(one(draw(st.integers(0, 255)), draw(st.binary(max_size=20))))
        else:
            op = draw(st.sampled_from([TEXT, TEXT, BINARY]))
            if op == TEXT:
                payload = draw(st.one_of(st.text(max_size=60).map(str.encode), utf8ish(), utf8ish()))
            else:
                payload = draw(st.binary(max_size=300))
            cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
            pieces = [payload[i:j] for i, j in zip([0, *cuts], [*cuts, len(payload)])]
            rsv1 = RSV1 if rarely(draw, 6) else 0
            for k, piece in enumerate(pieces):
                b0 = (FIN if k == len(pieces) - 1 else 0) | (op | rsv1 if k == 0 else CONT)
                if rarely(draw, 40):
                    b0 ^= draw(st.sampled_from([FIN, RSV1, RSV2, RSV3, 0x1, 0x2, 0x4, 0x8]))
                out.append(one(b0, piece))
                if rarely(draw, 4):
                    out.append(control())
    return b"".join(out), kwargs


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams(), data=st.data())
def test_twin_and_compiled_agree(both: tuple[ModuleType, ModuleType],
                                 stream: tuple[bytes, dict[str, Any]], data: st.DataObject) -> None:
    raw_bytes, kwargs = stream
    twin, compiled = both
    expected = parse(twin, [raw_bytes], **kwargs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw_bytes)), max_size=8)))
    chunks = [raw_bytes[i:j] for i, j in zip([0, *cuts], [*cuts, len(raw_bytes)])]
    bytewise = [raw_bytes[i : i + 1] for i in range(len(raw_bytes))]
    for mod in (twin, compiled):
        assert parse(mod, [raw_bytes], **kwargs) == expected
        assert parse(mod, chunks, **kwargs) == expected
        assert parse(mod, bytewise, **kwargs) == expected
        assert parse(mod, [bytearray(c) for c in chunks], **kwargs) == expected


@settings(max_examples=200, deadline=None)
@given(payload=st.one_of(st.binary(max_size=200), st.text(max_size=100)),
       opcode=st.sampled_from([0, 1, 2, 8, 9, 10]), fin=st.booleans(), rsv1=st.booleans(),
       mask=st.one_of(st.none(), st.binary(min_size=4, max_size=4)))
def test_encode_frame_agrees(both: tuple[ModuleType, ModuleType], payload: bytes | str, opcode: int,
                             fin: bool, rsv1: bool, mask: bytes | None) -> None:
    results = []
    for mod in both:
        try:
            results.append(mod.encode_frame(opcode, payload, fin, rsv1, mask))
        except ValueError:
            results.append(ValueError)
    assert results[0] == results[1]


@settings(max_examples=200, deadline=None)
@given(data=st.one_of(st.binary(max_size=100), utf8ish(),
                      st.text(max_size=80).map(lambda s: s.encode("utf-8", "surrogatepass"))))
def test_validate_utf8_agrees(both: tuple[ModuleType, ModuleType], data: bytes) -> None:
    try:
        data.decode("utf-8")
        expected = True
    except UnicodeDecodeError:
        expected = False
    assert both[0].validate_utf8(data) is expected
    assert both[1].validate_utf8(data) is expected


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=80))
def test_validate_utf8_accepts_any_text(both: tuple[ModuleType, ModuleType], text: str) -> None:
    data = text.encode("utf-8")
    assert both[0].validate_utf8(data) is True
    assert both[1].validate_utf8(data) is True
