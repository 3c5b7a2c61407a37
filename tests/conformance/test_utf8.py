"""UTF-8 handling of text messages (Autobahn section 6).

A table of valid and invalid byte sequences in the manner of Markus Kuhn's
UTF-8 decoder stress test. Each is sent as one text frame, and again split
into two fragments at every byte position and as one fragment per byte:
valid samples come back whole, invalid ones fail the connection with 1007
(fastws fails fast, so the close may come before the last fragment is sent).
Binary messages are never checked.
"""

from __future__ import annotations

import pytest

from tests.conformance.conftest import bytewise, whole
from tests.conformance.wire import (
    TEXT,
    B,
    T,
    binary,
    echo,
    fails,
    fragments,
    open_ws,
    read_until_closed,
    run_case,
    text,
)

KOSME = "κόσμε".encode()

VALID = {
    "empty": b"",
    "ascii": b"Hello, world!",
    "mixed": "Hello-µ@ßöäüàá-UTF-8!!".encode(),
    "kosme": KOSME,
    "nul": b"\x00",
    # First and last code point of each sequence length (Kuhn 2.1, 2.2).
    "first-2": b"\xc2\x80",
    "first-3": b"\xe0\xa0\x80",
    "first-4": b"\xf0\x90\x80\x80",
    "last-1": b"\x7f",
    "last-2": b"\xdf\xbf",
    "last-3": b"\xef\xbf\xbf",
    "last-4": b"\xf4\x8f\xbf\xbf",
    # Other boundaries (Kuhn 2.3): around the surrogates, the replacement
    # character, noncharacters (legal in UTF-8).
    "U+D7FF": b"\xed\x9f\xbf",
    "U+E000": b"\xee\x80\x80",
    "U+FFFD": b"\xef\xbf\xbd",
    "U+FFFE": b"\xef\xbf\xbe",
    "U+FDD0": b"\xef\xb7\x90",
    "U+1FFFF": b"\xf0\x9f\xbf\xbf",
    "emoji": "😀👍🏽".encode(),
    "cjk": "日本語のテキスト".encode(),
    "all-lengths": "a\u00e9\u4e2d\U0001f600z".encode(),
}

INVALID = {
    # Unexpected continuation bytes (Kuhn 3.1).
    "cont-80": b"\x80",
    "cont-bf": b"\xbf",
    "cont-80bf": b"\x80\xbf",
    "cont-80bf80bf": b"\x80\xbf\x80\xbf",
    "all-continuations": bytes(range(0x80, 0xC0)),
    "text-then-cont": b"abc\x80def",
    # Lonely start bytes (Kuhn 3.2).
    "lonely-c0": b"\xc0 ",
    "lonely-df": b"\xdf ",
    "lonely-e0": b"\xe0 ",
    "lonely-f0": b"\xf0 ",
    "lonely-f8": b"\xf8 ",
    "lonely-fc": b"\xfc ",
    # Truncated sequences (Kuhn 3.3), alone and at the end of valid text.
    "trunc-c2": b"\xc2",
    "trunc-e0a0": b"\xe0\xa0",
    "trunc-f0908080-1": b"\xf0\x90\x80",
    "trunc-df": b"\xdf",
    "trunc-efbf": b"\xef\xbf",
    "trunc-f48fbf": b"\xf4\x8f\xbf",
    "kosme-trunc": KOSME + b"\xce",
    "trunc-then-ascii": b"\xe2\x82a",
    "concat-truncated": b"\xc0\xe0\x80\xf0\x80\x80\xdf\xef\xbf\xf7\xbf\xbf",
    # Impossible bytes (Kuhn 3.5).
    "fe": b"\xfe",
    "ff": b"\xff",
    "fefeffff": b"\xfe\xfe\xff\xff",
    "ascii-then-ff": b"hello\xffworld",
    # Overlong forms (Kuhn 4.1-4.3).
    "overlong-slash-2": b"\xc0\xaf",
    "overlong-slash-3": b"\xe0\x80\xaf",
    "overlong-slash-4": b"\xf0\x80\x80\xaf",
    "overlong-slash-5": b"\xf8\x80\x80\x80\xaf",
    "overlong-slash-6": b"\xfc\x80\x80\x80\x80\xaf",
    "overlong-max-2": b"\xc1\xbf",
    "overlong-max-3": b"\xe0\x9f\xbf",
    "overlong-max-4": b"\xf0\x8f\xbf\xbf",
    "overlong-nul-2": b"\xc0\x80",
    "overlong-nul-3": b"\xe0\x80\x80",
    "overlong-nul-4": b"\xf0\x80\x80\x80",
    # UTF-16 surrogates U+D800-U+DFFF (Kuhn 5.1, 5.2).
    "U+D800": b"\xed\xa0\x80",
    "U+DB7F": b"\xed\xad\xbf",
    "U+DB80": b"\xed\xae\x80",
    "U+DBFF": b"\xed\xaf\xbf",
    "U+DC00": b"\xed\xb0\x80",
    "U+DF80": b"\xed\xbe\x80",
    "U+DFFF": b"\xed\xbf\xbf",
    "surrogate-pair": b"\xed\xa0\x80\xed\xb0\x80",
    "kosme-surrogate-edited": KOSME + b"\xed\xa0\x80" + b"edited",
    # Above U+10FFFF.
    "U+110000": b"\xf4\x90\x80\x80",
    "f5": b"\xf5\x80\x80\x80",
    "f7bfbfbf": b"\xf7\xbf\xbf\xbf",
    "5-byte-U+200000": b"\xf8\x88\x80\x80\x80",
    "6-byte-max": b"\xfd\xbf\xbf\xbf\xbf\xbf",
}


def _check_samples() -> None:
    # The table is right about itself: Python's decoder is the oracle.
    for name, data in VALID.items():
        data.decode("utf-8")
    for name, data in INVALID.items():
        with pytest.raises(UnicodeDecodeError):
            data.decode("utf-8")


_check_samples()

# Text near max_message_size (1 MiB), 4-byte characters: the server reads
# such a frame in several socket reads, cut anywhere inside a character, and
# checks each part as it comes (fail fast).
EMOJI_MIB = ("\U0001f600" * 2**18).encode()
BIG = [
    echo("big-emoji-1MiB", text(EMOJI_MIB), T(EMOJI_MIB)),
    echo(
        "big-emoji-fragments-cut-mid-char",
        fragments(TEXT, [EMOJI_MIB[:100001], EMOJI_MIB[100001:700003], EMOJI_MIB[700003:]]),
        T(EMOJI_MIB),
    ),
    fails("big-emoji-invalid-last-byte", text(EMOJI_MIB[:-1] + b"\xff"), 1007),
    fails("big-emoji-truncated-at-end", text(EMOJI_MIB[:-1]), 1007),
    fails("big-emoji-surrogate-in-middle", text(EMOJI_MIB[:500000] + b"\xed\xa0\x80" + EMOJI_MIB[500003:]), 1007),
]

SINGLE = [
    *(echo(f"valid-{k}", text(v), T(v)) for k, v in VALID.items()),
    *(fails(f"invalid-{k}", text(v), 1007) for k, v in INVALID.items()),
    # What precedes the invalid message is echoed.
    *(fails(f"invalid-{k}-after-echo", text("ok") + text(v), 1007, T("ok")) for k, v in list(INVALID.items())[::6]),
    # Binary messages are bytes: never checked.
    *(echo(f"binary-{k}", binary(v), B(v)) for k, v in list(INVALID.items())[::4]),
    # One fragment per byte of the sample.
    *(echo(f"valid-{k}-per-byte", fragments(TEXT, [v[i : i + 1] for i in range(len(v))] or [b""]), T(v))
      for k, v in VALID.items()),
    *(fails(f"invalid-{k}-per-byte", fragments(TEXT, [v[i : i + 1] for i in range(len(v))]), 1007)
      for k, v in INVALID.items()),
]


@pytest.mark.parametrize("case", whole(SINGLE + BIG))
def test_utf8(echo_server, case):
    run_case(echo_server.port, case)


@pytest.mark.parametrize("case", bytewise(SINGLE))
def test_utf8_bytewise(echo_server, case):
    run_case(echo_server.port, case, "bytewise")


@pytest.mark.parametrize("name", list(VALID))
def test_valid_split_everywhere(echo_server, name):
    """Two fragments, split at every byte position: one connection, each
    split echoed whole."""
    data = VALID[name]
    splits = [fragments(TEXT, [data[:i], data[i:]]) for i in range(len(data) + 1)]
    case = echo(f"valid-{name}-splits", b"".join(splits), *[T(data)] * len(splits))
    run_case(echo_server.port, case)


@pytest.mark.parametrize("name", list(INVALID))
def test_invalid_split_everywhere(echo_server, name):
    """Two fragments, split at every byte position, each on its own
    connection: 1007 whatever the split."""
    data = INVALID[name]
    for i in range(len(data) + 1):
        run_case(echo_server.port, fails(f"invalid-{name}-split-{i}", fragments(TEXT, [data[:i], data[i:]]), 1007))


@pytest.mark.parametrize("name", ["kosme-surrogate-edited", "U+D800", "overlong-slash-3", "kosme-trunc", "ff"])
def test_invalid_split_everywhere_bytewise(echo_server, name):
    data = INVALID[name]
    for i in range(len(data) + 1):
        case = fails(f"invalid-{name}-split-{i}", fragments(TEXT, [data[:i], data[i:]]), 1007)
        run_case(echo_server.port, case, "bytewise")


@pytest.mark.parametrize("name", ["U+D800", "ff", "overlong-nul-2", "U+110000"])
def test_fail_fast(echo_server, name):
    """Invalid text fails on the fragment that makes it invalid: the server
    closes with 1007 before the message is finished (Autobahn 6.4.x)."""
    sock, rest = open_ws(echo_server.port)
    try:
        sock.sendall(text(b"ok") + fragments(TEXT, [b"prefix-" + INVALID[name], b"more"])[:-10])
        reply = read_until_closed(sock, buf=rest)
    finally:
        sock.close()
    assert [f.brief() for f in reply.frames] == [T("ok"), ("close", 1007)]
    assert reply.ending in ("eof", "reset")


@pytest.mark.parametrize("name", ["U+D800", "kosme-trunc"])
def test_fail_fast_single_frame(echo_server, name):
    """Inside one text frame, too: the header announces 1000 bytes, the
    invalid bytes come first, the rest never does."""
    sock, rest = open_ws(echo_server.port)
    payload = INVALID[name] + b"x" * (1000 - len(INVALID[name]))
    try:
        sock.sendall(text(payload)[: 8 + len(INVALID[name]) + 10])
        reply = read_until_closed(sock, buf=rest)
    finally:
        sock.close()
    assert [f.brief() for f in reply.frames] == [("close", 1007)]
