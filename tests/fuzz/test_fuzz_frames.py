"""Fuzz the frame parser: the compiled reader and its pure-Python twin.

Random bytes and mutated streams of valid frames, split at random points,
go to both ``fastws.codec._frame.FrameReader`` and ``fastws.codec._frame_py.FrameReader``.
Neither may raise anything but ``ProtocolError``; both must give the same
events, and fail with the same code after the same chunk; and the events
and the code must not depend on how the stream was split.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import fastws.codec._frame_py as twin
from tests.fuzz.conftest import FUZZ

NO_EXTENSIONS = os.environ.get("FASTWS_NO_EXTENSIONS", "") not in ("", "0")


def _compiled() -> ModuleType | None:
    try:
        return importlib.import_module("fastws.codec._frame")
    except ImportError:
        if NO_EXTENSIONS:
            return None
        raise


compiled = _compiled()
READERS = [twin] + ([compiled] if compiled is not None else [])

OPCODES = [0, 1, 2, 8, 9, 10]
INTERESTING = [0x00, 0x01, 0x7D, 0x7E, 0x7F, 0x80, 0x81, 0x88, 0xC1, 0xED, 0xF4, 0xFF]


def _mask(data: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i & 3] for i, b in enumerate(data))


@st.composite
def one_frame(draw: Any, masked: bool) -> bytes:
    """A well-formed frame header around a payload (the stream it sits in
    may still be invalid: fragmentation order, UTF-8, close codes)."""
    op = draw(st.sampled_from(OPCODES))
    if op >= 8:
        payload = draw(st.binary(max_size=125))
        if op == 8 and draw(st.booleans()):
            code = draw(st.sampled_from([1000, 1001, 1005, 1007, 1015, 3000, 4999, 5000, 0]))
            payload = code.to_bytes(2, "big") + draw(st.text(max_size=20)).encode()[:123]
        fin = True
    else:
        payload = draw(st.one_of(st.binary(max_size=300), st.text(max_size=100).map(str.encode)))
        fin = draw(st.booleans())
    n = len(payload)
    form = draw(st.sampled_from(["min", "min", "min", "16", "64"])) if op < 8 else "min"
    b0 = (0x80 if fin else 0) | op
    mbit = 0x80 if masked else 0
    if form == "16" or (form == "min" and 126 <= n < 65536):
        head = bytes((b0, mbit | 126)) + n.to_bytes(2, "big")
    elif form == "64":
        head = bytes((b0, mbit | 127)) + n.to_bytes(8, "big")
    else:
        head = bytes((b0, mbit | n))
    if not masked:
        return head + payload
    key = draw(st.binary(min_size=4, max_size=4))
    return head + key + _mask(payload, key)


@st.composite
def mutated_stream(draw: Any, masked: bool) -> bytes:
    """Valid-looking frames, then a few byte-level mutations."""
    data = bytearray(b"".join(draw(st.lists(one_frame(masked), max_size=6))))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if kind == "insert" or not data:
            pos = draw(st.integers(0, len(data)))
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
            continue
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[pos] = draw(st.sampled_from(INTERESTING))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 4))]
        else:
            del data[pos:]
    return bytes(data)


OPTIONS = st.fixed_dictionaries(
    {
        "max_message_size": st.sampled_from([None, 0, 1, 125, 126, 1000, 65536, 1 << 20]),
        "require_mask": st.booleans(),
        "rsv1_allowed": st.booleans(),
    }
)


def trace(mod: ModuleType, chunks: list[bytes], options: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Feed ``chunks`` one by one, draining events after each; the first
    ProtocolError ends the trace. Any other exception propagates (a bug)."""
    reader = mod.FrameReader(**options)
    out: list[tuple[Any, ...]] = []
    for i, chunk in enumerate(chunks):
        reader.feed_data(chunk)
        while True:
            try:
                event = reader.next_event()
            except twin.ProtocolError as exc:
                out.append(("error", i, exc.code))
                # Finished: more input is ignored, no more events.
                reader.feed_data(b"\x81\x00")
                assert reader.next_event() is None
                return out
            if event is None:
                break
            out.append(("event", i, event[0], bytes(event[1])))
            if event[0] == 8:
                reader.feed_data(b"\x81\x00")
                assert reader.next_event() is None
                return out
    return out


def untimed(t: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """A trace without the chunk numbers: what must not depend on splits."""
    return [(x[0], *x[2:]) for x in t]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted(c % (len(data) + 1) for c in cuts)
    return [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)])]


def check(data: bytes, cuts: list[int], options: dict[str, Any]) -> None:
    chunks = split(data, cuts)
    whole = trace(twin, [data], options)
    for mod in READERS:
        got = trace(mod, chunks, options)
        # Same events and same error code, however the stream is split.
        assert untimed(got) == untimed(whole), (mod.__name__, chunks)
    if compiled is not None:
        # Twin and compiled fail at the same point (after the same chunk).
        assert trace(compiled, chunks, options) == trace(twin, chunks, options), chunks
        assert trace(compiled, [data], options) == whole


@FUZZ
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 10_000), max_size=8), options=OPTIONS)
@example(data=b"\x82\xff" + b"\x80" + b"\0" * 7, cuts=[], options={"max_message_size": None, "require_mask": False, "rsv1_allowed": False})
def test_random_bytes(data: bytes, cuts: list[int], options: dict[str, Any]) -> None:
    check(data, cuts, options)


@FUZZ
@given(data=st.data(), cuts=st.lists(st.integers(0, 10_000), max_size=8), options=OPTIONS)
def test_mutated_frames(data: st.DataObject, cuts: list[int], options: dict[str, Any]) -> None:
    masked = data.draw(st.sampled_from([options["require_mask"]] * 4 + [not options["require_mask"]]))
    stream = data.draw(mutated_stream(masked))
    check(stream, cuts, options)


@FUZZ
@given(data=st.data(), options=OPTIONS)
def test_mutated_frames_bytewise(data: st.DataObject, options: dict[str, Any]) -> None:
    """One byte per feed: the hardest split for incremental parsing."""
    stream = data.draw(mutated_stream(options["require_mask"]))
    chunks = [stream[i : i + 1] for i in range(len(stream))]
    expected = untimed(trace(twin, [stream], options))
    for mod in READERS:
        assert untimed(trace(mod, chunks, options)) == expected
    if compiled is not None:
        assert trace(compiled, chunks, options) == trace(twin, chunks, options)


def test_compiled_is_there() -> None:
    if compiled is None:
        pytest.skip("FASTWS_NO_EXTENSIONS=1: only the twin is fuzzed")
    assert compiled.ProtocolError is twin.ProtocolError
