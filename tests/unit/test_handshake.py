"""Handshake helpers: the compiled module and its pure-Python twin, one suite.

Every test takes the ``hs`` fixture, which runs it once against
``fastws.codec._handshake_py`` and once against ``fastws.codec._handshake``. A missing
compiled module is a failure, not a skip, unless ``FASTWS_NO_EXTENSIONS`` is
set (as in ``setup.py``: any value but "" or "0").

The oracles are hashlib/base64 for ``accept_key`` and, for ``is_valid_key``,
the check websockets makes: ``len(base64.b64decode(key, validate=True)) == 16``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from types import ModuleType

import pytest

from tests.conftest import import_module_or_fail
from hypothesis import given, settings
from hypothesis import strategies as st

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TWIN, COMPILED = "fastws.codec._handshake_py", "fastws.codec._handshake"

RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3
RFC_ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

STATUS_LINES = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: "
)


def _load(name: str) -> ModuleType:
    return import_module_or_fail(name)


# Module scope: the module is immutable, and hypothesis rejects function-scoped
# fixtures in @given tests.
@pytest.fixture(scope="module", params=[TWIN, COMPILED], ids=["py", "c"])
def hs(request: pytest.FixtureRequest) -> ModuleType:
    return _load(request.param)


@pytest.fixture(scope="module")
def both() -> tuple[ModuleType, ModuleType]:
    return _load(TWIN), _load(COMPILED)


def expected_accept(key: bytes | str) -> bytes:
    raw = key.encode("utf-8") if isinstance(key, str) else key
    return base64.b64encode(hashlib.sha1(raw + GUID).digest())


def websockets_valid(key: bytes | str) -> bool:
    # websockets encodes the header value and decodes it strictly.
    raw = key.encode("utf-8") if isinstance(key, str) else key
    try:
        return len(base64.b64decode(raw, validate=True)) == 16
    except binascii.Error:
        return False


keys_16 = st.binary(min_size=16, max_size=16).map(base64.b64encode)
any_bytes = st.binary(min_size=0, max_size=200)
any_text = st.text(max_size=100)
# Near-misses of a valid key: the length, padding and alphabet edges.
near_keys = st.text(alphabet="AQgwRZaz09+/=-_ \t\r\n\x00é", min_size=20, max_size=28)


class TestModule:
    def test_guid(self, hs: ModuleType) -> None:
        assert hs.GUID == GUID
        assert type(hs.GUID) is bytes

    def test_all(self, hs: ModuleType) -> None:
        assert sorted(hs.__all__) == ["GUID", "accept_key", "build_101", "is_valid_key"]

    def test_docstrings(self, hs: ModuleType) -> None:
        for name in ("accept_key", "is_valid_key", "build_101"):
            assert getattr(hs, name).__doc__


class TestAcceptKey:
    def test_rfc_sample(self, hs: ModuleType) -> None:
        assert hs.accept_key(RFC_KEY) == RFC_ACCEPT
        assert hs.accept_key(RFC_KEY.encode()) == RFC_ACCEPT

    def test_result_type(self, hs: ModuleType) -> None:
        out = hs.accept_key(RFC_KEY)
        assert type(out) is bytes
        assert len(out) == 28

    # key + GUID totals around the SHA-1 padding boundaries: 55 is the longest
    # message with one block, 56..63 spill the length into a second block, and
    # the same again one block further on.
    @pytest.mark.parametrize(
        "total", [36, 54, 55, 56, 57, 63, 64, 65, 100, 118, 119, 120, 121, 127, 128, 129, 183, 184, 192, 300]
    )
    def test_sha1_padding_boundaries(self, hs: ModuleType, total: int) -> None:
        key = bytes((i * 37 + 11) & 0xFF for i in range(total - len(GUID)))
        assert len(key + GUID) == total
        assert hs.accept_key(key) == expected_accept(key)

    def test_every_key_length(self, hs: ModuleType) -> None:
        for n in range(260):
            key = bytes((0x80 + i) & 0xFF for i in range(n))  # high bits set: catches signed chars
            assert hs.accept_key(key) == expected_accept(key), n

    def test_key_used_as_given(self, hs: ModuleType) -> None:
        assert hs.accept_key(" " + RFC_KEY) != RFC_ACCEPT
        assert hs.accept_key(" " + RFC_KEY) == expected_accept(" " + RFC_KEY)

    def test_str_is_utf8(self, hs: ModuleType) -> None:
        for key in ("ключ", "é", "\x00", "\U0001f600" * 30):
            assert hs.accept_key(key) == expected_accept(key.encode("utf-8"))

    def test_bytes_subclass(self, hs: ModuleType) -> None:
        class B(bytes):
            pass

        assert hs.accept_key(B(RFC_KEY.encode())) == RFC_ACCEPT

    def test_lone_surrogate(self, hs: ModuleType) -> None:
        with pytest.raises(UnicodeEncodeError):
            hs.accept_key("\ud800")

    @pytest.mark.parametrize("bad", [None, 1, bytearray(b"x"), memoryview(b"x"), [b"x"]])
    def test_type_error(self, hs: ModuleType, bad: object) -> None:
        with pytest.raises(TypeError, match="key must be bytes or str"):
            hs.accept_key(bad)

    @given(key=keys_16)
    def test_random_valid_keys(self, hs: ModuleType, key: bytes) -> None:
        assert hs.accept_key(key) == expected_accept(key)
        assert hs.accept_key(key.decode()) == expected_accept(key)

    @given(key=any_bytes)
    def test_random_bytes(self, hs: ModuleType, key: bytes) -> None:
        assert hs.accept_key(key) == expected_accept(key)

    @given(key=any_text)
    def test_random_text(self, hs: ModuleType, key: str) -> None:
        assert hs.accept_key(key) == expected_accept(key)


VALID_KEYS = [
    RFC_KEY,
    "AAAAAAAAAAAAAAAAAAAAAA==",
    "/////////////////////w==",
    "++++++++++++++++++++++==",
    "zzzzzzzzzzzzzzzzzzzzzg==",
    "0123456789abcdefABCDEQ==",
    base64.b64encode(bytes(range(16))).decode(),
    base64.b64encode(bytes(range(240, 256))).decode(),
    # Non-canonical padding bits (R = 010001, low four bits set): websockets
    # accepts it, since b64decode(validate=True) ignores those bits, so do we.
    "dGhlIHNhbXBsZSBub25jZR==",
    "AAAAAAAAAAAAAAAAAAAAA/==",
]

INVALID_KEYS = [
    "",
    "==",
    "A",
    "AAAA",
    "AAAAAAAAAAAAAAAAAAAA",  # 20 chars: 15 bytes
    "AAAAAAAAAAAAAAAAAAAA====",  # 15 bytes and extra padding
    "AAAAAAAAAAAAAAAAAAAAAAA=",  # 17 bytes
    "AAAAAAAAAAAAAAAAAAAAAAAA",  # 18 bytes
    "AAAAAAAAAAAAAAAAAAAAAAAAAA==",  # 19 bytes
    "dGhlIHNhbXBsZSBub25jZQ",  # padding missing
    "dGhlIHNhbXBsZSBub25jZQ=",  # half the padding
    "dGhlIHNhbXBsZSBub25jZQ===",  # too much padding
    "dGhlIHNhbXBsZSBub25jZQ=A",  # discontinuous padding
    "dGhlIHNhbXBsZSBub25j=Q==",  # padding in the middle
    "=GhlIHNhbXBsZSBub25jZQ==",
    "dGhlIHNhbXBsZSBub25jZ===",
    "dGhlIHNhbXBsZSBub25jZQ==dGhl",
    "dGhlIHNhbXBsZSBub25jZQ==" * 2,
    "dGhlIHNhbXBsZSBub25jZ-==",  # urlsafe alphabet
    "dGhlIHNhbXBsZSBub25jZ_==",
    "dGhlIHNhbXBsZSBub25jZ*==",
    "dGhlIHNhbXBsZSBub25jZ.==",
    "dGhlIHNhbXBsZSBub25j\x00Q==",
    " dGhlIHNhbXBsZSBub25jZQ==",  # whitespace is the caller's to strip
    "dGhlIHNhbXBsZSBub25jZQ== ",
    "dGhlIHNhbXBsZSBub25jZQ==\r\n",
    "dGhlIHNhbXBs ZSBub25jZQ==",
    "dGhlIHNhbXBs\tZSBub25jZQ==",
    "dGhlIHNhbXBsZSBub25jZ\n==",
    "dGhlIHNhbXBsZSBub25jZé==",
    "dGhlIHNhbXBsZSBub25jZ\u0100==",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
]


class TestIsValidKey:
    @pytest.mark.parametrize("key", VALID_KEYS)
    def test_valid(self, hs: ModuleType, key: str) -> None:
        assert websockets_valid(key)
        assert hs.is_valid_key(key) is True
        assert hs.is_valid_key(key.encode()) is True

    @pytest.mark.parametrize("key", INVALID_KEYS)
    def test_invalid(self, hs: ModuleType, key: str) -> None:
        assert not websockets_valid(key)
        assert hs.is_valid_key(key) is False
        assert hs.is_valid_key(key.encode("utf-8")) is False

    def test_non_ascii_str_never_raises(self, hs: ModuleType) -> None:
        assert hs.is_valid_key("\ud800" * 24) is False
        assert hs.is_valid_key("é" * 22 + "==") is False

    def test_every_alphabet_char_in_every_position(self, hs: ModuleType) -> None:
        base = bytearray(RFC_KEY.encode())
        for pos in range(24):
            for ch in range(256):
                key = bytes(base[:pos] + bytes([ch]) + base[pos + 1 :])
                assert hs.is_valid_key(key) is websockets_valid(key), (pos, ch)

    @pytest.mark.parametrize("bad", [None, 1, bytearray(RFC_KEY.encode()), memoryview(b"x")])
    def test_type_error(self, hs: ModuleType, bad: object) -> None:
        with pytest.raises(TypeError, match="key must be bytes or str"):
            hs.is_valid_key(bad)

    @given(key=keys_16)
    def test_random_valid(self, hs: ModuleType, key: bytes) -> None:
        assert hs.is_valid_key(key) is True
        assert hs.is_valid_key(key.decode()) is True

    @given(key=st.one_of(any_bytes, any_text, near_keys, near_keys.map(lambda s: s.encode())))
    def test_agrees_with_websockets(self, hs: ModuleType, key: bytes | str) -> None:
        assert hs.is_valid_key(key) is websockets_valid(key)


class TestBuild101:
    def test_exact_bytes(self, hs: ModuleType) -> None:
        assert hs.build_101(RFC_ACCEPT) == (
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
            b"\r\n"
        )

    def test_extra_headers(self, hs: ModuleType) -> None:
        extra = (
            b"Sec-WebSocket-Protocol: chat\r\n"
            b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
            b"Server: fastws\r\n"
        )
        assert hs.build_101(RFC_ACCEPT, extra) == (
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
            b"Sec-WebSocket-Protocol: chat\r\n"
            b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
            b"Server: fastws\r\n"
            b"\r\n"
        )
        assert hs.build_101(accept=RFC_ACCEPT, extra_headers=extra) == hs.build_101(RFC_ACCEPT, extra)

    def test_result_type(self, hs: ModuleType) -> None:
        assert type(hs.build_101(b"")) is bytes
        assert hs.build_101(b"") == STATUS_LINES + b"\r\n\r\n"

    @pytest.mark.parametrize(
        ("accept", "extra", "match"),
        [
            ("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", b"", "accept must be bytes"),
            (None, b"", "accept must be bytes"),
            (bytearray(RFC_ACCEPT), b"", "accept must be bytes"),
            (RFC_ACCEPT, "Server: x\r\n", "extra_headers must be bytes"),
            (RFC_ACCEPT, None, "extra_headers must be bytes"),
        ],
    )
    def test_type_error(self, hs: ModuleType, accept: object, extra: object, match: str) -> None:
        with pytest.raises(TypeError, match=match):
            hs.build_101(accept, extra)

    @given(accept=st.binary(max_size=40), extra=st.binary(max_size=300))
    def test_layout(self, hs: ModuleType, accept: bytes, extra: bytes) -> None:
        assert hs.build_101(accept, extra) == STATUS_LINES + accept + b"\r\n" + extra + b"\r\n"


class TestTwinAgreement:
    @settings(max_examples=200)
    @given(key=st.one_of(any_bytes, any_text, keys_16, near_keys))
    def test_same_answers(self, both: tuple[ModuleType, ModuleType], key: bytes | str) -> None:
        py, c = both
        assert c.accept_key(key) == py.accept_key(key)
        assert c.is_valid_key(key) is py.is_valid_key(key)

    @given(accept=st.binary(max_size=40), extra=st.binary(max_size=200))
    def test_same_response(self, both: tuple[ModuleType, ModuleType], accept: bytes, extra: bytes) -> None:
        py, c = both
        assert c.build_101(accept, extra) == py.build_101(accept, extra)
