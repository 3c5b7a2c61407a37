"""``Headers``: a case-insensitive multi-map that keeps the pairs in order,
and ``compact()``, which packs request headers into one string while a
connection sits idle (issue 13: idle memory)."""

from __future__ import annotations

import sys

import pytest

from fastws.protocol.http import Headers, MultipleValuesError

PAIRS = [("Host", "example.org"), ("X-Tag", "a: b"), ("x-tag", "two"), ("Empty", ""), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]


def wire() -> Headers:
    return Headers._from_wire(list(PAIRS))


def test_lookups_before_and_after_compact() -> None:
    for packed in (False, True):
        h = wire()
        if packed:
            h.compact()
        assert h["host"] == "example.org" and h["EMPTY"] == ""
        assert h.get_all("X-TAG") == ["a: b", "two"]
        with pytest.raises(MultipleValuesError):
            h["x-tag"]
        assert "sec-websocket-key" in h and "nope" not in h
        assert list(h.raw_items()) == PAIRS
        assert len(h) == 4 and sorted(h) == ["empty", "host", "sec-websocket-key", "x-tag"]
        assert h.serialize() == b"".join(f"{n}: {v}\r\n".encode() for n, v in PAIRS)


def test_compact_packs_into_one_string_and_changes_nothing_seen() -> None:
    h = wire()
    h["host"]  # the index exists now
    before = (list(h.raw_items()), h.get_all("x-tag"), str(h), repr(h))
    h.compact()
    assert isinstance(h._packed, str) and h._list_ is None and h._dict is None
    assert (list(h.raw_items()), h.get_all("x-tag"), str(h), repr(h)) == before
    # and the pairs are back after the first use, ready to be packed again
    assert h._list_ is not None
    h.compact()
    h["New"] = "v"
    assert list(h.raw_items())[-1] == ("New", "v") and h["new"] == "v"
    del h["x-tag"]
    assert h.get_all("X-Tag") == [] and len(list(h.raw_items())) == 4


def test_compact_saves_memory() -> None:
    def size(h: Headers) -> int:
        objs = [h._dict, h._list_, h._packed]
        total = 0
        for obj in objs:
            if obj is None:
                continue
            total += sys.getsizeof(obj)
            if isinstance(obj, list):
                total += sum(sys.getsizeof(p) + sys.getsizeof(p[0]) + sys.getsizeof(p[1]) for p in obj)
            if isinstance(obj, dict):
                total += sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in obj.items())
        return total

    h = wire()
    h["host"]
    full = size(h)
    h.compact()
    assert size(h) < full / 3, (size(h), full)


def test_a_name_that_is_not_a_token_is_not_packed() -> None:
    h = Headers()
    h["odd: name"] = "v"
    h.compact()
    assert list(h.raw_items()) == [("odd: name", "v")] and h["odd: name"] == "v"


def test_copy_and_equality_of_a_packed_one() -> None:
    h = wire()
    h.compact()
    c = h.copy()
    assert c == wire() and list(c.raw_items()) == PAIRS
