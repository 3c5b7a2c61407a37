"""The load generator's reply checker: ``fastws.bench._echo`` (compiled) and
its pure-Python twin ``fastws.bench._echo_py``, one suite.

Every table test takes the ``echo`` fixture, which runs it once against each
implementation. The hypothesis tests hold the two against each other: the
same operations (``sent``, ``feed`` in random chunks, ``recording``
toggles, ``settle``) must give the same return values, the same events, the
same counters and a byte-identical histogram. ``run_blocking`` is driven on
a ``socket.socketpair()`` with a Python thread playing the server.
``handshake_loop`` needs a real server: see
``tests/integration/test_bench_echo_live.py``.

Server frames are built with ``encode_frame`` of the pure frame codec; what
it refuses to build (protocol violations) with :func:`raw` here.
"""

from __future__ import annotations

import math
import random
import socket
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastws.codec._frame_py import encode_frame
from tests.conftest import NO_EXTENSIONS, import_module_or_fail, unit

TWIN, COMPILED = "fastws.bench._echo_py", "fastws.bench._echo"

FIN, RSV1, RSV2, RSV3 = 0x80, 0x40, 0x20, 0x10
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MASK = b"abcd"
PROTOCOL_ERROR, MESSAGE_TOO_BIG = 1002, 1009
#: Bytes of Histogram.to_bytes: total, min, max, then 256 + 32 * 128 buckets.
HIST_BYTES = (3 + 256 + 32 * 128) * 8


@pytest.fixture(scope="module", params=[TWIN, COMPILED], ids=["py", "c"])
def echo(request: pytest.FixtureRequest) -> ModuleType:
    return import_module_or_fail(request.param)


@pytest.fixture(scope="module")
def both() -> tuple[ModuleType, ModuleType]:
    return import_module_or_fail(TWIN), import_module_or_fail(COMPILED)


# -- helpers ----------------------------------------------------------------


def raw(b0: int, payload: bytes = b"", *, mask: bytes | None = None, enc: int | None = None,
        length: int | None = None) -> bytes:
    """One frame from its first byte, anything goes: ``enc`` forces a
    7/16/64-bit length field, ``length`` overrides the declared length."""
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
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def stamp(t: int, rest: bytes) -> bytes:
    """A stamped (broadcast) message: send time, little-endian, then ``rest``."""
    return t.to_bytes(8, "little") + rest


def reference(values: list[int], mod: ModuleType) -> Any:
    h = mod.Histogram()
    for v in values:
        h.record(v)
    return h


def stream(echo: ModuleType, payload: bytes = b"hello", opcode: int = BINARY, **kw: Any) -> tuple[Any, Any]:
    h = echo.Histogram()
    return echo.EchoStream(opcode, payload, h, **kw), h


def the_section(text: str) -> str:
    return text[text.index("RFC") :] if "RFC" in text else ""


# -- 1. the two implementations against each other --------------------------


def rarely(draw: st.DrawFn, one_in: int) -> bool:
    # Not integers(1, n) == 1: hypothesis favours bounds, and shrinks to False.
    return draw(st.sampled_from([False] * (one_in - 1) + [True]))


#: Any 8 bytes: mostly near the feed times, sometimes anything (a stamp
#: with the top bit set is negative; see test_stamp_with_the_top_bit_set).
STAMPS = st.one_of(st.integers(10**9 - 10**8, 10**12), st.integers(0, 2**64 - 1))

VIOLATIONS = [
    "masked", "rsv2", "rsv3", "rsv1_plain", "reserved_op", "lonely_cont", "long_control", "fragmented_control",
    "rsv_control", "data_in_fragment", "huge_length", "rsv1_cont",
]  # fmt: skip


@st.composite
def scenarios(draw: st.DrawFn, mode: str) -> dict[str, Any]:
    """A mode's stream parameters, a byte stream of server frames, and the
    operations around its chunks."""
    stamped, deflate = mode == "stamped", mode == "deflate"
    opcode = draw(st.sampled_from([BINARY, TEXT]))
    expected = draw(st.binary(min_size=8 if stamped else 0, max_size=300))
    max_deflated = draw(st.sampled_from([64 * 2**20, 64 * 2**20, 4, 40])) if deflate else 64 * 2**20

    def payload_like() -> bytes:
        """What a right reply carries."""
        return stamp(draw(STAMPS), expected[8:]) if stamped else expected

    def restamp(p: bytes) -> bytes:
        return stamp(draw(STAMPS), p[8:]) if stamped and len(p) >= 8 else p

    def one(b0: int, payload: bytes) -> bytes:
        n = len(payload)
        enc = draw(st.sampled_from([e for e in (None, None, None, 7, 16, 64) if e != 7 or n < 126]))
        if enc is None:
            return encode_frame(b0 & 0x0F, payload, fin=bool(b0 & FIN), rsv1=bool(b0 & RSV1))
        return raw(b0, payload, enc=enc)

    def control() -> bytes:
        op = draw(st.sampled_from([PING, PING, PONG]))
        return encode_frame(op, draw(st.binary(max_size=125)))

    def message(op: int, payload: bytes, rsv1: bool = False) -> list[bytes]:
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3))) if rarely(draw, 3) else []
        pieces = [payload[i:j] for i, j in zip([0, *cuts], [*cuts, len(payload)])]
        out = []
        for k, piece in enumerate(pieces):
            b0 = (FIN if k == len(pieces) - 1 else 0) | ((op | (RSV1 if rsv1 else 0)) if k == 0 else CONT)
            out.append(one(b0, piece))
            if k < len(pieces) - 1 and rarely(draw, 3):
                out.append(control())
        return out

    def violation() -> list[bytes]:
        kind = draw(st.sampled_from(VIOLATIONS))
        p = payload_like()
        if kind == "masked":
            return [raw(FIN | opcode, p, mask=draw(st.binary(min_size=4, max_size=4)))]
        if kind == "rsv2":
            return [raw(FIN | RSV2 | opcode, p)]
        if kind == "rsv3":
            return [raw(FIN | RSV3 | opcode, p)]
        if kind == "rsv1_plain":  # a violation only without deflate
            return [raw(FIN | RSV1 | opcode, p)]
        if kind == "reserved_op":
            return [raw(FIN | draw(st.sampled_from([3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])), b"x")]
        if kind == "lonely_cont":
            return [raw(FIN | CONT, p)]
        if kind == "long_control":
            return [raw(FIN | draw(st.sampled_from([PING, PONG, CLOSE])), b"x" * draw(st.integers(126, 200)))]
        if kind == "fragmented_control":
            return [raw(draw(st.sampled_from([PING, PONG, CLOSE])), b"x")]
        if kind == "rsv_control":
            return [raw(FIN | draw(st.sampled_from([RSV1, RSV2, RSV3])) | PING, b"")]
        if kind == "data_in_fragment":
            return [raw(opcode, p[:3]), raw(FIN | opcode, p)]
        if kind == "huge_length":
            return [raw(FIN | opcode, b"", enc=64, length=2**63 + draw(st.integers(0, 2**63 - 1)))]
        # rsv1 on a continuation frame
        return [raw(opcode | (RSV1 if deflate else 0), p[:2]), raw(FIN | RSV1 | CONT, p[2:])]

    kinds = ["echo"] * 8 + ["wrong_payload", "wrong_opcode", "control", "control", "violation"]
    if deflate:
        kinds += ["deflated"] * 4
    frames: list[bytes] = []
    for _ in range(draw(st.integers(0, 10))):
        kind = draw(st.sampled_from(kinds))
        if kind == "echo":
            frames += message(opcode, payload_like())
        elif kind == "wrong_payload":
            if expected and rarely(draw, 2):  # one byte off, the same length
                i = draw(st.integers(8 if stamped and len(expected) > 8 else 0, len(expected) - 1))
                p = expected[:i] + bytes([expected[i] ^ draw(st.integers(1, 255))]) + expected[i + 1 :]
            else:
                p = draw(st.binary(max_size=300))
            frames += message(opcode, restamp(p))
        elif kind == "wrong_opcode":
            frames += message(TEXT + BINARY - opcode, payload_like())
        elif kind == "deflated":
            p = payload_like() if draw(st.booleans()) else draw(st.binary(max_size=80))
            frames += message(opcode, p, rsv1=True)
        elif kind == "control":
            frames.append(control())
        else:
            frames += violation()
        if rarely(draw, 25):
            frames.append(encode_frame(CLOSE, b"\x03\xe8" + draw(st.binary(max_size=20))))
    blob = b"".join(frames)

    # operations: sent runs, recording toggles, chunks fed at rising times
    cuts = sorted(draw(st.lists(st.integers(0, len(blob)), max_size=12)))
    chunks = [blob[i:j] for i, j in zip([0, *cuts], [*cuts, len(blob)])]
    now = draw(st.integers(10**9, 10**12))
    ops: list[tuple[Any, ...]] = []
    for chunk in chunks:
        for _ in range(draw(st.integers(0, 2))):
            first = now - draw(st.integers(-1000, 10**8))
            ops.append(("sent", draw(st.integers(-1, 4)), first, draw(st.sampled_from([0, 0, 1, 37, 10**6]))))
        if rarely(draw, 3):
            ops.append(("recording", draw(st.booleans())))
        now += draw(st.integers(0, 10**7))
        ops.append(("feed", chunk, now, draw(st.sampled_from([bytes, bytearray, memoryview]))))
        if rarely(draw, 4):
            ops.append(("clear",))
    return {
        "opcode": opcode, "expected": expected, "stamped": stamped, "deflate": deflate,
        "max_deflated": max_deflated, "recording": draw(st.booleans()), "ops": ops,
    }  # fmt: skip


def play(mod: ModuleType, sc: dict[str, Any]) -> tuple[list[Any], bytes]:
    """Run a scenario; everything observable, in order, and the histogram."""
    h = mod.Histogram()
    s = mod.EchoStream(sc["opcode"], sc["expected"], h, stamped=sc["stamped"], deflate=sc["deflate"],
                       max_deflated=sc["max_deflated"])  # fmt: skip
    s.recording = sc["recording"]
    trace: list[Any] = []
    seen = 0
    for op in sc["ops"]:
        if op[0] == "sent":
            s.sent(*op[1:])
        elif op[0] == "recording":
            s.recording = op[1]
        elif op[0] == "clear":
            s.events.clear()
            seen = 0
        else:
            _, chunk, now, kind = op
            trace.append(("feed", s.feed(kind(chunk), now)))
            trace.append(("events", list(s.events)))
            for event in s.events[seen:]:
                if event[0] == "deflated":  # "inflate": here the identity
                    trace.append(("settle", s.settle(event[2] == sc["expected"], now)))
            seen = len(s.events)
        trace.append((s.matched, s.mismatches, s.in_flight, s.closed, s.failed, s.recording))
    return trace, h.to_bytes()


@pytest.mark.parametrize("mode", ["echo", "stamped", "deflate"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_twin_and_compiled_agree(both: tuple[ModuleType, ModuleType], mode: str, data: st.DataObject) -> None:
    sc = data.draw(scenarios(mode))
    twin, compiled = both
    trace_py, hist_py = play(twin, sc)
    trace_c, hist_c = play(compiled, sc)
    assert trace_c == trace_py
    assert hist_c == hist_py


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(st.one_of(
    st.tuples(st.just("record"), st.integers(-10, 2**44), st.integers(0, 3)),
    st.tuples(st.just("run"), st.integers(0, 2**41), st.integers(0, 2**41), st.integers(-50, 2**30), st.integers(0, 20)),
), max_size=30), qs=st.lists(st.floats(-0.5, 1.5, allow_nan=False), max_size=6))  # fmt: skip
def test_twin_and_compiled_histograms_agree(both: tuple[ModuleType, ModuleType], ops: list[tuple[Any, ...]],
                                            qs: list[float]) -> None:
    out = []
    for mod in both:
        h = mod.Histogram()
        for op in ops:
            if op[0] == "record":
                h.record(op[1], op[2])
            else:
                h.record_run(*op[1:])
        out.append((h.to_bytes(), h.total, h.min, h.max, h.buckets(), h.quantiles(qs)))
    assert out[0] == out[1]


def test_histogram_bytes_cross_over(both: tuple[ModuleType, ModuleType]) -> None:
    twin, compiled = both
    values = [0, 1, 255, 256, 1000, 123456789, 2**41]
    for a, b in ((twin, compiled), (compiled, twin)):
        h = reference(values, a)
        back = b.Histogram.from_bytes(h.to_bytes())
        assert back.to_bytes() == h.to_bytes()
        assert (back.total, back.min, back.max, back.buckets()) == (h.total, h.min, h.max, h.buckets())


def test_the_package_picks_by_environment() -> None:
    from fastws.bench import echo as picked

    assert picked.__name__ == (TWIN if NO_EXTENSIONS else COMPILED)


# Disagreements the tests above found (now fixed), each as its minimal case.


def test_stamp_with_the_top_bit_set(both: tuple[ModuleType, ModuleType]) -> None:
    """The stamp is a signed int64 in both (b'\xff' * 8 is -1: now - -1 is recorded)."""
    out = []
    for mod in both:
        s, h = stream(mod, stamp(0, b"hello"), stamped=True)
        s.recording = True
        out.append((s.feed(encode_frame(BINARY, b"\xff" * 8 + b"hello"), 1000), h.total, h.min, h.max))
    assert out[0] == out[1] == (1, 1, 1001, 1001)


def test_stamped_and_deflate_are_refused_together(both: tuple[ModuleType, ModuleType]) -> None:
    for mod in both:
        with pytest.raises(ValueError, match="stamped and deflate"):
            stream(mod, stamp(0, b"hello"), stamped=True, deflate=True)


# -- 2. behaviour, table by table --------------------------------------------


def test_a_right_echo_is_matched_and_timed(echo: ModuleType) -> None:
    s, h = stream(echo)
    s.sent(1, 1000)
    assert s.in_flight == 1
    s.recording = True
    assert s.feed(encode_frame(BINARY, b"hello"), 1500) == 1
    assert (s.matched, s.mismatches, s.in_flight, s.events) == (1, 0, 0, [])
    assert (h.total, h.min, h.max, h.buckets()) == (1, 500, 500, [(500, 1)])


def test_round_trips_are_recorded_only_while_recording(echo: ModuleType) -> None:
    s, h = stream(echo)
    s.sent(2, 1000)
    assert s.feed(encode_frame(BINARY, b"hello"), 1500) == 1  # recording is off at first
    assert h.total == 0 and s.matched == 1
    s.recording = True
    assert s.feed(encode_frame(BINARY, b"hello"), 1600) == 1
    assert (h.total, h.min, h.max) == (1, 600, 600)


def test_several_replies_in_one_read(echo: ModuleType) -> None:
    s, h = stream(echo, b"ab", TEXT)
    s.recording = True
    s.sent(3, 100)
    assert s.feed(encode_frame(TEXT, b"ab") * 3, 200) == 3
    assert (s.matched, s.in_flight, h.total, h.buckets()) == (3, 0, 3, [(100, 3)])


def test_a_fragmented_echo_with_a_ping_inside(echo: ModuleType) -> None:
    s, h = stream(echo, b"hello world")
    s.sent(1, 0)
    s.recording = True
    data = (encode_frame(BINARY, b"hello", fin=False) + encode_frame(PING, b"p")
            + encode_frame(CONT, b" wor", fin=False) + encode_frame(CONT, b"ld"))  # fmt: skip
    assert s.feed(data, 10) == 1
    assert s.events == [("control", PING, b"p")] and h.buckets() == [(10, 1)]


def test_a_wrong_echo_is_a_mismatch_that_takes_its_slot(echo: ModuleType) -> None:
    s, h = stream(echo)
    s.recording = True
    s.sent(2, 1000)
    assert s.feed(encode_frame(BINARY, b"hellO"), 2000) == 0
    assert s.events == [("mismatch", BINARY, "reply differs from the message sent (5 bytes, sent 5)")]
    assert (s.matched, s.mismatches, s.in_flight, h.total) == (0, 1, 1, 0)
    s.events.clear()
    assert s.feed(encode_frame(BINARY, b"hello, world"), 2000) == 0
    assert s.events == [("mismatch", BINARY, "reply differs from the message sent (12 bytes, sent 5)")]
    assert (s.mismatches, s.in_flight, h.total) == (2, 0, 0)


def test_a_shorter_echo_is_a_mismatch(echo: ModuleType) -> None:
    s, _h = stream(echo)
    s.sent(1, 0)
    assert s.feed(encode_frame(BINARY, b"hell"), 1) == 0
    assert s.events == [("mismatch", BINARY, "reply differs from the message sent (4 bytes, sent 5)")]


def test_a_wrong_opcode_is_a_mismatch(echo: ModuleType) -> None:
    s, _h = stream(echo)
    s.sent(1, 0)
    assert s.feed(encode_frame(TEXT, b"hello"), 1) == 0
    assert s.events == [("mismatch", TEXT, "reply has opcode 0x1, sent 0x2")]
    assert (s.mismatches, s.in_flight) == (1, 0)


def test_a_reply_with_nothing_in_flight(echo: ModuleType) -> None:
    s, h = stream(echo)
    s.recording = True
    for payload in (b"hello", b"other"):  # right or wrong: nothing was sent
        s.events.clear()
        assert s.feed(encode_frame(BINARY, payload), 1) == 0
        assert s.events == [("mismatch", -1, "a reply came with no message in flight")]
    assert (s.matched, s.mismatches, s.in_flight, h.total) == (0, 2, 0, 0)


def test_the_stream_goes_on_after_a_mismatch(echo: ModuleType) -> None:
    s, _h = stream(echo)
    s.sent(3, 0)
    data = encode_frame(BINARY, b"hello") + encode_frame(BINARY, b"xxx") + encode_frame(BINARY, b"hello")
    assert s.feed(data, 1) == 2
    assert [e[0] for e in s.events] == ["mismatch"] and (s.matched, s.mismatches, s.in_flight) == (2, 1, 0)


PROTOCOL_VIOLATIONS = [
    ("masked", raw(FIN | BINARY, b"hello", mask=MASK), "5.1"),
    ("masked control", raw(FIN | PING, b"", mask=MASK), "5.1"),
    ("rsv1 without deflate", raw(FIN | RSV1 | BINARY, b"hello"), "5.2"),
    ("rsv2", raw(FIN | RSV2 | BINARY, b"hello"), "5.2"),
    ("rsv3", raw(FIN | RSV3 | TEXT, b"hello"), "5.2"),
    ("reserved opcode 3", raw(FIN | 0x3, b"hello"), "5.2"),
    ("reserved opcode 7", raw(FIN | 0x7, b""), "5.2"),
    ("reserved control opcode 0xb", raw(FIN | 0xB, b""), "5.5"),
    ("reserved control opcode 0xf", raw(FIN | 0xF, b""), "5.5"),
    ("continuation with no start", raw(FIN | CONT, b"hello"), "5.4"),
    ("rsv1 on a continuation", raw(BINARY, b"he") + raw(FIN | RSV1 | CONT, b"llo"), "5.2"),
    ("data frame inside a fragmented message", raw(BINARY, b"he") + raw(FIN | BINARY, b"hello"), "5.4"),
    ("ping of 126 bytes", raw(FIN | PING, b"x" * 126), "5.5"),
    ("close of 200 bytes", raw(FIN | CLOSE, b"\x03\xe8" + b"x" * 198), "5.5"),
    ("fragmented ping", raw(PING, b"x"), "5.5"),
    ("fragmented close", raw(CLOSE, b"\x03\xe8"), "5.5"),
    ("rsv1 on a pong", raw(FIN | RSV1 | PONG, b""), "5.5"),
    ("length over 2**63", raw(FIN | BINARY, b"", enc=64, length=2**63), "5.2"),
]


@pytest.mark.parametrize("data, section", [p[1:] for p in PROTOCOL_VIOLATIONS],
                         ids=[p[0] for p in PROTOCOL_VIOLATIONS])  # fmt: skip
@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_protocol_violations(echo: ModuleType, data: bytes, section: str, split: str) -> None:
    s, h = stream(echo)
    s.recording = True
    s.sent(3, 0)
    good = encode_frame(BINARY, b"hello")
    data = good + data + good
    pieces = [data] if split == "whole" else [data[i : i + 1] for i in range(len(data))]
    assert sum(s.feed(p, 10) for p in pieces) == 1  # the echo before, not the one after
    ((kind, code, text),) = s.events
    assert (kind, code) == ("error", PROTOCOL_ERROR)
    assert f"RFC 6455 section {section}" in text, text
    assert s.failed and not s.closed
    assert s.feed(good, 20) == 0 and len(s.events) == 1 and s.matched == 1 and h.total == 1
    s.events.clear()
    assert s.feed(encode_frame(PING, b""), 30) == 0 and s.events == []


def test_rsv1_is_a_compressed_message_with_deflate(echo: ModuleType) -> None:
    s, h = stream(echo, deflate=True)
    s.recording = True
    s.sent(2, 100)
    data = encode_frame(BINARY, b"zz", fin=False, rsv1=True) + encode_frame(PONG, b"") + encode_frame(CONT, b"zzz")
    assert s.feed(data, 1000) == 0
    assert s.events == [("control", PONG, b""), ("deflated", BINARY, b"zzzzz")]
    assert (s.matched, s.in_flight) == (0, 2)  # the caller inflates and settles
    assert s.settle(True, 1100) is True
    assert (s.matched, s.in_flight, h.buckets()) == (1, 1, [(1000, 1)])
    assert s.settle(False, 1200) is False
    assert (s.matched, s.mismatches, s.in_flight, h.total) == (1, 1, 0, 1)
    assert s.settle(True, 1300) is False  # nothing in flight
    assert s.mismatches == 2
    # a plain echo still works with deflate
    s.sent(1, 2300)
    assert s.feed(encode_frame(BINARY, b"hello"), 2500) == 1 and h.buckets() == [(200, 1), (1000, 1)]


def test_a_compressed_message_too_large_to_buffer(echo: ModuleType) -> None:
    s, _h = stream(echo, deflate=True, max_deflated=10)
    s.sent(2, 0)
    assert s.feed(encode_frame(BINARY, b"x" * 10, rsv1=True), 1) == 0
    assert s.events == [("deflated", BINARY, b"x" * 10)]
    s.events.clear()
    assert s.feed(encode_frame(BINARY, b"x" * 6, fin=False, rsv1=True) + encode_frame(CONT, b"x" * 5), 1) == 0
    assert s.events == [("error", MESSAGE_TOO_BIG, "compressed message too large to buffer")] and s.failed


@pytest.mark.parametrize("op, payload", [(PING, b""), (PING, b"are you there"), (PONG, b"x" * 125)])
def test_ping_and_pong_are_control_events(echo: ModuleType, op: int, payload: bytes) -> None:
    s, _h = stream(echo)
    s.sent(1, 0)
    data = encode_frame(op, payload) + encode_frame(BINARY, b"hello")
    assert s.feed(data[:3], 1) + s.feed(data[3:], 2) == 1
    assert s.events == [("control", op, payload)]
    assert not s.closed and not s.failed


def test_a_close_frame_ends_the_stream(echo: ModuleType) -> None:
    s, _h = stream(echo)
    s.sent(2, 0)
    data = encode_frame(BINARY, b"hello") + encode_frame(CLOSE, b"\x03\xe8bye") + encode_frame(BINARY, b"hello")
    assert s.feed(data, 1) == 1
    assert s.events == [("control", CLOSE, b"\x03\xe8bye")]
    assert s.closed and not s.failed and s.in_flight == 1
    assert s.feed(encode_frame(BINARY, b"hello") + raw(FIN | 0x3), 2) == 0  # nothing more is parsed
    assert len(s.events) == 1 and (s.matched, s.mismatches) == (1, 0) and not s.failed


def test_an_empty_close_frame(echo: ModuleType) -> None:
    s, _h = stream(echo)
    assert s.feed(encode_frame(CLOSE, b""), 1) == 0
    assert s.events == [("control", CLOSE, b"")] and s.closed


def test_a_1mib_echo_in_4kib_chunks(echo: ModuleType) -> None:
    payload = bytes(random.Random(1).getrandbits(8) for _ in range(256)) * 4096
    s, h = stream(echo, payload)
    s.recording = True
    s.sent(2, 0)
    good = encode_frame(BINARY, payload)
    bad = encode_frame(BINARY, payload[:-1] + bytes([payload[-1] ^ 1]))
    assert len(good) == 2**20 + 10
    got = [s.feed(memoryview(good)[i : i + 4096], 7) for i in range(0, len(good), 4096)]
    assert sum(got) == 1 and got[-1] == 1 and s.events == []
    assert s.feed(bad, 8) == 0
    assert s.events == [("mismatch", BINARY, f"reply differs from the message sent ({2**20} bytes, sent {2**20})")]
    assert (s.matched, s.mismatches, h.buckets()) == (1, 1, [(7, 1)])


@pytest.mark.parametrize("n", [0, 5, 125, 126, 65535, 65536, 70000])
def test_every_length_encoding_split_byte_by_byte_in_the_header(echo: ModuleType, n: int) -> None:
    payload = b"y" * n
    for enc in (7, 16, 64):
        if enc == 7 and n > 125 or enc == 16 and n > 65535:
            continue
        s, _h = stream(echo, payload)
        s.sent(1, 0)
        frame = raw(FIN | BINARY, payload, enc=enc)
        head = 2 + {7: 0, 16: 2, 64: 8}[enc]
        total = sum(s.feed(frame[i : i + 1], 1) for i in range(head)) + s.feed(frame[head:], 1)
        assert (total, s.matched, s.events) == (1, 1, [])


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_feed_takes_any_buffer(echo: ModuleType, kind: Callable[[bytes], Any]) -> None:
    s, _h = stream(echo)
    s.sent(1, 0)
    assert s.feed(kind(encode_frame(BINARY, b"hello")), 1) == 1


def test_sent_with_a_step_times_each_message(echo: ModuleType) -> None:
    s, h = stream(echo)
    s.recording = True
    s.sent(5, 10_000, 10)  # sent at 10000, 10010, ..., 10040
    assert s.in_flight == 5
    assert s.feed(encode_frame(BINARY, b"hello") * 5, 10_200) == 5
    assert h.buckets() == [(160, 1), (170, 1), (180, 1), (190, 1), (200, 1)]
    s.sent(4, 0, 10**6)  # wider values: the same as recording them one by one
    assert s.feed(encode_frame(BINARY, b"hello") * 4, 5 * 10**6) == 4
    want = reference([200, 190, 180, 170, 160] + [5 * 10**6 - i * 10**6 for i in range(4)], echo)
    assert h.to_bytes() == want.to_bytes()


def test_runs_are_taken_oldest_first_across_a_growing_ring(echo: ModuleType) -> None:
    s, h = stream(echo)
    s.recording = True
    rng = random.Random(7)
    sent: list[int] = []
    taken: list[int] = []
    now = 10**9
    for _ in range(40):
        for _ in range(rng.randint(0, 9)):  # runs of 1 or 2 messages
            n = rng.randint(1, 2)
            first = now - rng.randint(0, 10**6)
            s.sent(n, first, 3)
            sent += [first + 3 * i for i in range(n)]
        k = rng.randint(0, len(sent))
        now += 1000
        assert s.feed(encode_frame(BINARY, b"hello") * k, now) == k
        taken += [now - t for t in sent[:k]]
        del sent[:k]
        assert s.in_flight == len(sent)
    assert h.to_bytes() == reference(taken, echo).to_bytes()


def test_sent_with_nothing(echo: ModuleType) -> None:
    s, _h = stream(echo)
    s.sent(0, 5)
    s.sent(-3, 5)
    assert s.in_flight == 0


def test_a_reply_before_its_send_time_counts_as_zero(echo: ModuleType) -> None:
    s, h = stream(echo)
    s.recording = True
    s.sent(1, 1000)
    assert s.feed(encode_frame(BINARY, b"hello"), 999) == 1
    assert h.buckets() == [(0, 1)]


def test_stamped_messages(echo: ModuleType) -> None:
    s, h = stream(echo, stamp(0, b"rest of it"), stamped=True)
    s.recording = True
    assert s.feed(encode_frame(BINARY, stamp(1000, b"rest of it")) * 2, 1250) == 2  # no sent() needed
    assert (s.matched, s.in_flight, h.buckets()) == (2, 0, [(250, 2)])
    assert s.feed(encode_frame(BINARY, stamp(1000, b"rest of IT")), 1300) == 0
    assert s.events == [("mismatch", BINARY, "reply differs from the message sent (18 bytes, sent 18)")]
    s.events.clear()
    assert s.feed(encode_frame(TEXT, stamp(1000, b"rest of it")), 1300) == 0
    assert s.events == [("mismatch", TEXT, "reply has opcode 0x1, sent 0x2")]
    s.events.clear()
    assert s.feed(encode_frame(BINARY, b"short"), 1300) == 0
    assert s.events == [("mismatch", BINARY, "reply differs from the message sent (5 bytes, sent 18)")]
    s.recording = False
    assert s.feed(encode_frame(BINARY, stamp(5, b"rest of it")), 10**6) == 1
    assert (s.matched, s.mismatches, h.total) == (3, 3, 2)


def test_a_stamped_message_split_inside_its_stamp(echo: ModuleType) -> None:
    s, h = stream(echo, stamp(0, b"abc"), stamped=True)
    s.recording = True
    frame = encode_frame(BINARY, stamp(123_456, b"abc"))
    assert sum(s.feed(frame[i : i + 1], 200_000) for i in range(len(frame))) == 1
    assert (h.total, h.min) == (1, 200_000 - 123_456)


def test_a_stamp_after_now_counts_as_zero(echo: ModuleType) -> None:
    s, h = stream(echo, stamp(0, b""), stamped=True)
    s.recording = True
    assert s.feed(encode_frame(BINARY, stamp(2**62, b"")), 1000) == 1
    assert h.buckets() == [(0, 1)]


@pytest.mark.parametrize("args, kw", [((0, b"x"), {}), ((8, b"x"), {}), ((3, b"x"), {}),
                                      ((2, b"1234567"), {"stamped": True})])  # fmt: skip
def test_bad_streams_are_refused(echo: ModuleType, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        echo.EchoStream(*args, echo.Histogram(), **kw)


def test_the_event_names(echo: ModuleType) -> None:
    assert (echo.EV_CONTROL, echo.EV_MISMATCH, echo.EV_ERROR, echo.EV_DEFLATED) == (
        "control", "mismatch", "error", "deflated")  # fmt: skip
    assert echo.HANDSHAKE_ERRORS == ("refused", "failed", "bad_status", "bad_accept", "no_close")
    assert echo.MAX_VALUE == 2**40 - 1


def test_now_ns_is_the_monotonic_clock(echo: ModuleType) -> None:
    import time

    a = time.monotonic_ns()
    b = echo.now_ns()
    c = time.monotonic_ns()
    assert a <= b <= c


# -- 3. the histogram --------------------------------------------------------


def exact_quantile(sorted_values: list[int], q: float) -> int:
    return sorted_values[max(1, math.ceil(q * len(sorted_values))) - 1]


@pytest.mark.parametrize("seed, mu, sigma", [(1, 10, 1.0), (2, 13, 2.0), (3, 4, 1.5), (4, 20, 0.3)])
def test_quantiles_are_within_0_8_percent(echo: ModuleType, seed: int, mu: float, sigma: float) -> None:
    rng = random.Random(seed)
    values = [int(rng.lognormvariate(mu, sigma)) for _ in range(5000)]
    h = reference(values, echo)
    values.sort()
    qs = [0.001, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0]
    for q, got in zip(qs, h.quantiles(qs)):
        exact = exact_quantile(values, q)
        assert exact <= got <= exact * (1 + 1 / 128), (q, got, exact)
    assert (h.total, h.min, h.max) == (5000, values[0], values[-1])
    assert h.quantiles([1.0]) == [values[-1]]


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.integers(0, 2**40 - 1), min_size=1, max_size=200),
       q=st.floats(0.0001, 1.0))  # fmt: skip
def test_any_quantile_is_within_a_bucket(both: tuple[ModuleType, ModuleType], values: list[int], q: float) -> None:
    for mod in both:
        h = reference(values, mod)
        exact = sorted(values)[min(len(values), max(1, int(q * len(values) + 0.9999999))) - 1]
        (got,) = h.quantiles([q])
        assert exact <= got <= exact + exact // 128, (got, exact)


def test_small_values_are_exact(echo: ModuleType) -> None:
    h = reference(list(range(256)), echo)
    assert h.buckets() == [(v, 1) for v in range(256)]
    assert h.quantiles([0.5, 1.0]) == [127, 255]


def test_min_and_max_are_exact(echo: ModuleType) -> None:
    h = reference([1_000_003, 999_999_937, 5_000_011], echo)
    assert (h.min, h.max) == (1_000_003, 999_999_937)
    assert h.quantiles([0.0, 1.0]) == [1_000_003, 999_999_937]  # the top bucket clamped to max
    assert 1_000_003 < h.quantiles([0.01])[0] <= 1_000_003 * (1 + 1 / 128)  # the bucket's highest value
    assert h.buckets()[-1][0] == 999_999_937


def test_an_empty_histogram(echo: ModuleType) -> None:
    h = echo.Histogram()
    assert (h.total, h.min, h.max, h.buckets()) == (0, 0, 0, [])
    assert h.quantiles([0.5, 0.99, 1.0]) == [0, 0, 0]
    assert h.to_bytes() == bytes(HIST_BYTES)


def test_record_counts_and_runs(echo: ModuleType) -> None:
    h = echo.Histogram()
    h.record(-5)  # negative as 0
    h.record(300, 4)
    h.record(7, 0)  # nothing
    h.record_run(1000, 900, 0, 3)  # three of 100
    h.record_run(1000, 900, 30, 4)  # 100, 70, 40, 10
    h.record_run(1000, 990, 5, 4)  # 10, 5, 0, -5 as 0
    assert h.total == 1 + 4 + 3 + 4 + 4
    assert h.buckets() == [(0, 3), (5, 1), (10, 2), (40, 1), (70, 1), (100, 4), (300, 4)]
    assert (h.min, h.max) == (0, 300)


def test_round_trip_through_bytes(echo: ModuleType) -> None:
    rng = random.Random(5)
    h = reference([int(rng.lognormvariate(12, 2)) for _ in range(1000)] + [2**45], echo)
    data = h.to_bytes()
    assert len(data) == HIST_BYTES
    assert data[:24] == h.total.to_bytes(8, "little") + h.min.to_bytes(8, "little") + h.max.to_bytes(8, "little")
    back = echo.Histogram.from_bytes(data)
    assert back.to_bytes() == data
    assert (back.total, back.min, back.max, back.buckets()) == (h.total, h.min, h.max, h.buckets())
    assert back.quantiles([0.5, 0.99]) == h.quantiles([0.5, 0.99])
    assert echo.Histogram.from_bytes(bytearray(data)).to_bytes() == data


@pytest.mark.parametrize("size", [0, 24, HIST_BYTES - 1, HIST_BYTES - 8, HIST_BYTES + 8])
def test_from_bytes_rejects_wrong_lengths(echo: ModuleType, size: int) -> None:
    with pytest.raises(ValueError):
        echo.Histogram.from_bytes(bytes(size))


def test_merge_is_recording_both(echo: ModuleType) -> None:
    rng = random.Random(9)
    a_values = [int(rng.lognormvariate(10, 1)) for _ in range(500)]
    b_values = [int(rng.lognormvariate(14, 1)) for _ in range(300)]
    a, b = reference(a_values, echo), reference(b_values, echo)
    a.merge(b)
    assert a.to_bytes() == reference(a_values + b_values, echo).to_bytes()
    assert b.to_bytes() == reference(b_values, echo).to_bytes()  # untouched
    # with an empty one, either side
    e = echo.Histogram()
    e.merge(b)
    assert e.to_bytes() == b.to_bytes()
    b.merge(echo.Histogram())
    assert b.to_bytes() == reference(b_values, echo).to_bytes()


def test_values_above_max_value_clamp_to_the_last_bucket(echo: ModuleType) -> None:
    top = echo.MAX_VALUE
    h = reference([top, top + 1, 2**50], echo)
    assert h.buckets() == [(top, 3)]
    assert (h.total, h.min, h.max) == (3, top, 2**50)
    assert h.quantiles([1.0]) == [top]  # the bucket, not the exact max
    h.record(5)
    assert h.buckets() == [(5, 1), (top, 3)] and h.max == 2**50
    # the last bucket is [255 * 2**32, MAX_VALUE], like any other
    assert reference([255 * 2**32, 2**41], echo).buckets() == [(top, 2)]
    assert reference([255 * 2**32 - 1, 2**41], echo).buckets() == [(255 * 2**32 - 1, 1), (top, 1)]


@pytest.mark.parametrize("call", ["record", "record_run"])
def test_negative_counts_raise(echo: ModuleType, call: str) -> None:
    h = echo.Histogram()
    with pytest.raises(ValueError):
        if call == "record":
            h.record(5, -1)
        else:
            h.record_run(10, 5, 1, -1)
    assert h.total == 0


def test_bucket_edges_are_0_8_percent(echo: ModuleType) -> None:
    # above 256, each power of two is cut into 128 buckets
    for lo in (256, 1024, 2**20, 2**39):
        width = lo // 128
        h = reference([lo, lo + width - 1, lo + width], echo)
        assert h.buckets() == [(lo + width - 1, 2), (lo + width, 1)]


# -- 4. run_blocking on a socket pair ------------------------------------------


def read_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def read_client_frame(sock: socket.socket) -> tuple[int, bytes] | None:
    """One masked client frame (< 126 bytes), unmasked; None at EOF."""
    head = read_exact(sock, 2)
    if head is None:
        return None
    assert head[1] & 0x80, "a client frame must be masked"
    n = head[1] & 0x7F
    assert n < 126
    key = read_exact(sock, 4)
    payload = read_exact(sock, n) if n else b""
    assert key is not None and payload is not None
    return head[0] & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class Peer(threading.Thread):
    """The server end of a socket pair: echoes every client frame,
    unmasked; ``first`` is sent before anything; the frame after the
    first ``hang_up_after`` is read and not answered: the socket is closed
    instead; ``reply`` may change the echo. The receive time of each
    answered frame is kept."""

    def __init__(self, sock: socket.socket, *, first: bytes = b"", hang_up_after: int | None = None,
                 reply: Callable[[int, bytes], bytes] | None = None) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.first = first
        self.hang_up_after = hang_up_after
        self.reply = reply or (lambda op, payload: encode_frame(op, payload))
        self.received: list[int] = []
        self.error: AssertionError | None = None

    def run(self) -> None:
        from fastws.bench._echo_py import now_ns

        try:
            if self.first:
                self.sock.sendall(self.first)
            while True:
                got = read_client_frame(self.sock)
                if got is None or len(self.received) == self.hang_up_after:
                    return
                self.received.append(now_ns())
                self.sock.sendall(self.reply(*got))
        except OSError:
            pass  # the test closed its end
        except AssertionError as exc:  # reported by the test
            self.error = exc
        finally:
            self.sock.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def start_peer(sock: socket.socket, **kw: Any) -> Peer:
    peer = Peer(sock, **kw)
    peer.start()
    return peer


def finish(peer: Peer, client: socket.socket) -> None:
    client.shutdown(socket.SHUT_RDWR)
    peer.join(unit(5))
    assert not peer.is_alive()
    if peer.error is not None:
        raise peer.error


PAYLOAD = b"0123456789abcdef" * 4
FRAME = encode_frame(BINARY, PAYLOAD, mask=MASK)
MS = 10**6


def test_run_blocking_records_only_the_window(echo: ModuleType, pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    peer = start_peer(server)
    s, h = stream(echo, PAYLOAD)
    t = echo.now_ns()
    ws, we, end = t + 50 * MS, t + 150 * MS, t + 200 * MS
    assert s.run_blocking(client.fileno(), FRAME, ws, we, end) is None
    assert echo.now_ns() >= end
    finish(peer, client)
    assert s.events == [] and s.matched == len(peer.received) > 0
    assert (s.mismatches, s.in_flight, s.recording) == (0, 0, False)
    # a message is sent after the previous one came back: between the
    # peer's receive times, so the counts differ by at most one per edge
    in_window = sum(ws <= r < we for r in peer.received)
    assert 0 < h.total < s.matched
    assert abs(h.total - in_window) <= 2, (h.total, in_window)
    assert 0 < h.max < unit(2) * 1e9


def test_run_blocking_with_a_step(echo: ModuleType, pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    peer = start_peer(server)
    s, h = stream(echo, PAYLOAD)
    step = 2 * MS
    t = echo.now_ns()
    # The due times are t0, t0 + step, ... from the call (t0 a little
    # after t); a message is recorded when it is written inside the window
    # (timed from its due time), so a window 30 steps long holds 30 of them,
    # give or take one at each edge when a write is late.
    ws = t + int(unit(0.1) * 1e9)
    we = ws + 30 * step
    end = we + int(unit(0.2) * 1e9)
    assert s.run_blocking(client.fileno(), FRAME, ws, we, end, step) is None
    finish(peer, client)
    assert 29 <= h.total <= 31, h.buckets()
    assert s.matched == len(peer.received) > 30  # and those before and after the window
    assert (s.mismatches, s.in_flight) == (0, 0)


def test_run_blocking_stops_for_a_ping_and_goes_on(echo: ModuleType, pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    peer = start_peer(server, first=encode_frame(PING, b"ping!"))
    s, h = stream(echo, PAYLOAD)
    t = echo.now_ns()
    end = t + 100 * MS
    assert s.run_blocking(client.fileno(), FRAME, t, end, end) == "events"
    # recording stays on: the reply still in flight is timed when it comes
    assert s.events == [("control", PING, b"ping!")] and s.recording
    s.events.clear()
    assert s.run_blocking(client.fileno(), FRAME, t, end, end) is None
    finish(peer, client)
    assert s.events == [] and s.matched == len(peer.received) > 1 and s.in_flight == 0
    # every message was sent in the window, but the one in flight when the
    # ping stopped the loop is not timed (recording is reset on return)
    assert h.total in (s.matched - 1, s.matched)


def test_run_blocking_returns_eof_when_the_peer_hangs_up(echo: ModuleType, pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    peer = start_peer(server, hang_up_after=3)
    s, _h = stream(echo, PAYLOAD)
    t = echo.now_ns()
    assert s.run_blocking(client.fileno(), FRAME, t, t + 10**10, t + 10**10) == "EOF"
    assert not s.recording
    peer.join(unit(5))
    assert peer.error is None
    # three echoed, the fourth written and never answered
    assert (s.matched, s.in_flight, s.events) == (3, 1, [])


def test_run_blocking_stops_for_a_wrong_echo(echo: ModuleType, pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    peer = start_peer(server, reply=lambda op, payload: encode_frame(op, payload[::-1]))
    s, h = stream(echo, PAYLOAD)
    t = echo.now_ns()
    assert s.run_blocking(client.fileno(), FRAME, t, t + 10**10, t + 10**10) == "events"
    assert s.events == [("mismatch", BINARY, "reply differs from the message sent (64 bytes, sent 64)")]
    assert (s.matched, s.mismatches, s.in_flight, h.total) == (0, 1, 0, 0)
    finish(peer, client)


def test_run_blocking_stops_for_a_close(echo: ModuleType, pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    peer = start_peer(server, reply=lambda op, payload: encode_frame(op, payload) + encode_frame(CLOSE, b"\x03\xe8"))
    s, _h = stream(echo, PAYLOAD)
    t = echo.now_ns()
    assert s.run_blocking(client.fileno(), FRAME, t, t + 10**10, t + 10**10) == "events"
    assert s.events == [("control", CLOSE, b"\x03\xe8")] and s.closed and s.matched == 1
    assert s.run_blocking(client.fileno(), FRAME, t, t + 10**10, t + 10**10) is None  # closed: nothing more
    finish(peer, client)
    assert len(peer.received) == 1


def test_run_blocking_stops_for_a_protocol_error(echo: ModuleType, pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    peer = start_peer(server, reply=lambda op, payload: encode_frame(op, payload, mask=MASK))
    s, _h = stream(echo, PAYLOAD)
    t = echo.now_ns()
    assert s.run_blocking(client.fileno(), FRAME, t, t + 10**10, t + 10**10) == "events"
    ((kind, code, text),) = s.events
    assert (kind, code, s.failed) == ("error", PROTOCOL_ERROR, True) and "section 5.1" in text
    finish(peer, client)


def test_run_blocking_reports_a_socket_error(echo: ModuleType) -> None:
    a, b = socket.socketpair()
    b.close()
    try:
        s, _h = stream(echo, PAYLOAD)
        t = echo.now_ns()
        result = s.run_blocking(a.fileno(), FRAME, t, t + 10**10, t + 10**10)
    finally:
        a.close()
    assert result == "Broken pipe", result
    assert s.in_flight == 0 and s.matched == 0
