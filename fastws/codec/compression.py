"""permessage-deflate (RFC 7692): negotiation and per-connection zlib state.

Two parts, both per connection rather than per message, so they may be Python
(zlib does the heavy lifting in C):

- :func:`parse_extensions` reads every ``Sec-WebSocket-Extensions`` header of
  the request (RFC 6455 section 9.1 grammar); :func:`negotiate` picks the
  first permessage-deflate offer the server can accept and returns the
  response header value and a :class:`PerMessageDeflate`.
- :class:`PerMessageDeflate` inflates the compressed messages the codec
  reports (opcode ``| FLAG_RSV1``) and deflates what the server sends.

The connection keeps ``None`` instead of a :class:`PerMessageDeflate` when
the extension is not in use, so the uncompressed path pays one pointer
comparison per sent message and nothing per received one. See
``docs/compression.md`` for the defaults and what they cost in memory.
"""

from __future__ import annotations

import re
import sys
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..exceptions import InvalidHeaderValue, ProtocolError
from ..types import CloseCode
from . import frame as _frame

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["PerMessageDeflate", "deflate_message", "negotiate", "parse_extensions"]

_encode_frame: Callable[..., bytes] = _frame.encode_frame
_validate_utf8: Callable[[bytes], bool] = _frame.validate_utf8
OP_CONT: int = _frame.OP_CONT
OP_TEXT: int = _frame.OP_TEXT
OP_BINARY: int = _frame.OP_BINARY

NAME = "permessage-deflate"

# What a Z_SYNC_FLUSH ends with: an empty stored block. The sender strips it
# and the receiver puts it back (RFC 7692 sections 7.2.1 and 7.2.2).
_TAIL = b"\x00\x00\xff\xff"

Params = list[tuple[str, "str | None"]]

# -- parsing (RFC 6455 section 9.1, RFC 9110 section 5.6) ---------------------

_OWS = re.compile(r"[ \t]*")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# qdtext and quoted-pair of RFC 9110 section 5.6.4 (obs-text included).
_QUOTED = re.compile(r'"((?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*)"')
_UNESCAPE = re.compile(r"\\(.)")


def parse_extensions(values: list[str]) -> list[tuple[str, Params]]:
    """Every extension offered, in order, across every header occurrence.

    ``["permessage-deflate; client_max_window_bits, x-foo"]`` gives
    ``[("permessage-deflate", [("client_max_window_bits", None)]), ("x-foo",
    [])]``. Names are lower-cased; a quoted value is unescaped. Raises
    :class:`InvalidHeaderValue` (HTTP 400) if a value does not follow the
    grammar, including a quoted value that is not a token once unescaped
    (RFC 6455 section 9.1) and an empty header.
    """
    result: list[tuple[str, Params]] = []
    for value in values:
        items = _parse_one(value)
        if not items:
            raise InvalidHeaderValue(f"empty Sec-WebSocket-Extensions header: {value!r}")
        result.extend(items)
    return result


def _parse_one(value: str) -> list[tuple[str, Params]]:
    def fail(pos: int, what: str) -> InvalidHeaderValue:
        return InvalidHeaderValue(f"invalid Sec-WebSocket-Extensions header: {what} at {pos} in {value!r}")

    items: list[tuple[str, Params]] = []
    pos = _OWS.match(value, 0).end()  # type: ignore[union-attr]
    end = len(value)
    while pos < end:
        if value[pos] == ",":
            # Empty list elements are allowed and ignored (RFC 9110 5.6.1).
            pos = _OWS.match(value, pos + 1).end()  # type: ignore[union-attr]
            continue
        m = _TOKEN.match(value, pos)
        if m is None:
            raise fail(pos, "expected an extension name")
        name = m.group().lower()
        params: Params = []
        pos = _OWS.match(value, m.end()).end()  # type: ignore[union-attr]
        while pos < end and value[pos] == ";":
            pos = _OWS.match(value, pos + 1).end()  # type: ignore[union-attr]
            m = _TOKEN.match(value, pos)
            if m is None:
                raise fail(pos, "expected a parameter name")
            pname = m.group().lower()
            pvalue: str | None = None
            pos = _OWS.match(value, m.end()).end()  # type: ignore[union-attr]
            if pos < end and value[pos] == "=":
                pos = _OWS.match(value, pos + 1).end()  # type: ignore[union-attr]
                m = _TOKEN.match(value, pos)
                if m is not None:
                    pvalue = m.group()
                else:
                    m = _QUOTED.match(value, pos)
                    if m is None:
                        raise fail(pos, "expected a token or a quoted string")
                    pvalue = _UNESCAPE.sub(r"\1", m.group(1))
                    if _TOKEN.fullmatch(pvalue) is None:
                        raise fail(pos, "quoted value is not a token (RFC 6455 section 9.1)")
                pos = _OWS.match(value, m.end()).end()  # type: ignore[union-attr]
            params.append((pname, pvalue))
        items.append((name, params))
        if pos < end:
            if value[pos] != ",":
                raise fail(pos, "expected ',' or ';'")
    return items


# -- negotiation (RFC 7692 section 7.1) ---------------------------------------

_BITS = {str(n): n for n in range(8, 16)}  # no leading zeros, no sign (7.1.2)


def _accept_offer(params: Params, config: "Config") -> tuple[bool, bool, int | None, int | None] | None:
    """The agreed parameters for one offer, or None to decline it.

    Returns ``(server_no_context_takeover, client_no_context_takeover,
    server_max_window_bits, client_max_window_bits)``; a window of None is
    left out of the response (15, the default, applies).
    """
    seen: set[str] = set()
    server_nct = client_nct = False
    server_bits: int | None = None
    client_bits: int | bool | None = None  # True: offered without a value
    for name, value in params:
        # RFC 7692 section 5.1: decline an offer with an unknown parameter,
        # an invalid value, or the same parameter twice.
        if name in seen:
            return None
        seen.add(name)
        if name == "server_no_context_takeover":
            if value is not None:
                return None
            server_nct = True
        elif name == "client_no_context_takeover":
            if value is not None:
                return None
            client_nct = True
        elif name == "server_max_window_bits":
            if value is None or value not in _BITS:
                return None
            server_bits = _BITS[value]
        elif name == "client_max_window_bits":
            if value is None:
                client_bits = True
            elif value in _BITS:
                client_bits = _BITS[value]
            else:
                return None
        else:
            return None
    server_nct = server_nct or config.deflate_server_no_context_takeover
    client_nct = client_nct or config.deflate_client_no_context_takeover
    # Our compressor's window: at most what the client allows (7.1.2.1); a
    # smaller one may be announced even if the client did not ask (ditto).
    ours = config.deflate_server_max_window_bits
    if server_bits is None or ours < server_bits:
        server_bits = ours if ours < 15 else None
    # The client's window: only if it offered the parameter (7.1.2.2), and
    # then at most the value it offered.
    wanted = config.deflate_client_max_window_bits
    agreed_client: int | None
    if client_bits is None:
        agreed_client = None
    elif client_bits is True:
        agreed_client = wanted
    else:
        agreed_client = client_bits if wanted is None else min(int(client_bits), wanted)
    return server_nct, client_nct, server_bits, agreed_client


def deflate_message(data: bytes | bytearray | memoryview, bits: int, level: int, mem_level: int) -> bytes:
    """One message compressed on its own (no context kept), as the payload
    of a frame with RSV1 set: what a connection with ``shared_bits == bits``
    would send, made once for all of them."""
    c = zlib.compressobj(level, zlib.DEFLATED, -bits, mem_level)
    # The flush ends with the empty stored block; the peer adds it back.
    return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


def negotiate(values: list[str], config: "Config") -> "tuple[str, PerMessageDeflate] | None":
    """Answer the ``Sec-WebSocket-Extensions`` headers of a request.

    Returns ``(response header value, PerMessageDeflate)`` for the first
    permessage-deflate offer that can be accepted, None if there is none
    (the server then answers without the header and nothing is compressed).
    Raises :class:`InvalidHeaderValue` for a malformed header.
    """
    for name, params in parse_extensions(values):
        if name != NAME:
            continue
        agreed = _accept_offer(params, config)
        if agreed is None:
            continue
        server_nct, client_nct, server_bits, client_bits = agreed
        response = NAME
        if server_nct:
            response += "; server_no_context_takeover"
        if client_nct:
            response += "; client_no_context_takeover"
        if server_bits is not None:
            response += f"; server_max_window_bits={server_bits}"
        if client_bits is not None:
            response += f"; client_max_window_bits={client_bits}"
        return response, PerMessageDeflate(
            server_no_context_takeover=server_nct,
            client_no_context_takeover=client_nct,
            server_max_window_bits=server_bits or 15,
            client_max_window_bits=client_bits or 15,
            level=config.deflate_level,
            mem_level=config.deflate_mem_level,
            min_size=config.deflate_min_size,
            max_message_size=config.max_message_size,
        )
    return None


# -- the data path -------------------------------------------------------------


class PerMessageDeflate:
    """The compression state of one connection (server side).

    zlib objects are created on first use and, without context takeover,
    dropped after each message, so a connection that exchanges no compressed
    message holds no zlib memory.
    """

    __slots__ = (
        "server_no_context_takeover",
        "client_no_context_takeover",
        "server_max_window_bits",
        "client_max_window_bits",
        "max_size",
        "wire_limit",
        "_level",
        "_mem_level",
        "_min_size",
        "_limit",
        "_compress_bits",
        "_compressor",
        "_decompressor",
        "_fragmenting",
    )

    def __init__(
        self,
        *,
        server_no_context_takeover: bool = False,
        client_no_context_takeover: bool = False,
        server_max_window_bits: int = 15,
        client_max_window_bits: int = 15,
        level: int = 6,
        mem_level: int = 5,
        min_size: int = 32,
        max_message_size: int | None = 2**20,
    ) -> None:
        #: The agreed parameters (RFC 7692 section 7.1).
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        self.server_max_window_bits = server_max_window_bits
        self.client_max_window_bits = client_max_window_bits
        self._level = level
        self._mem_level = mem_level
        self._min_size = min_size
        # zlib's max_length: one byte over the limit proves the message too
        # big without inflating the rest; 0 means no limit.
        self._limit = 0 if max_message_size is None else max_message_size + 1
        #: Largest message, inflated or sent uncompressed (sys.maxsize: none).
        self.max_size = sys.maxsize if max_message_size is None else max_message_size
        #: Largest message on the wire (the reader's limit), None for none:
        #: max_size plus what deflate may add to data that does not compress
        #: (zlib adds 5 bytes per 16 KiB stored block; a naive encoder using
        #: fixed Huffman codes up to 1/8).
        self.wire_limit = None if max_message_size is None else max_message_size + (max_message_size >> 3) + 64
        # zlib refuses a raw deflate window of 8 bits and uses 9 for it
        # (madler/zlib#171); that is still within a 256-byte window, because
        # deflate never reaches back further than 2**bits - 262 bytes
        # (MAX_DIST in deflate.h): 250 bytes at 9 bits.
        self._compress_bits = max(server_max_window_bits, 9)
        self._compressor: "zlib._Compress | None" = None
        self._decompressor: "zlib._Decompress | None" = None
        self._fragmenting = False  # a compressed fragmented message is being sent

    def __repr__(self) -> str:
        return f"<PerMessageDeflate {self.response_params()}>"

    @property
    def shared_bits(self) -> int:
        """The compressor's window bits when each message is compressed on
        its own (server_no_context_takeover), so one compressed frame serves
        every such connection (rooms); 0 when the context is kept."""
        return self._compress_bits if self.server_no_context_takeover else 0

    def response_params(self) -> str:
        """The agreed parameters as they appear in the response header."""
        parts = [NAME]
        if self.server_no_context_takeover:
            parts.append("server_no_context_takeover")
        if self.client_no_context_takeover:
            parts.append("client_no_context_takeover")
        if self.server_max_window_bits != 15:
            parts.append(f"server_max_window_bits={self.server_max_window_bits}")
        if self.client_max_window_bits != 15:
            parts.append(f"client_max_window_bits={self.client_max_window_bits}")
        return "; ".join(parts)

    # -- receiving ---------------------------------------------------------

    def inflate(self, payload: bytes, is_text: bool) -> bytes:
        """The message a compressed payload (reassembled) stands for.

        Raises the codec's ProtocolError: 1009 when the message inflates to
        more than ``max_message_size`` (zlib stops one byte past the limit:
        a decompression bomb costs the limit, not its size), 1007 for a text
        message that is not UTF-8, 1002 for data that is not deflate.
        """
        d = self._decompressor
        if d is None:
            d = zlib.decompressobj(wbits=-self.client_max_window_bits)
        try:
            # One call: a copy of the compressed payload is cheap next to
            # inflating it, and it lets zlib finish the sync-flush block.
            data = d.decompress(payload + _TAIL, self._limit)
        except zlib.error as exc:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"compressed message is not valid deflate data ({exc}) (RFC 7692 section 7.2.2)") from None
        limit = self._limit
        if limit and len(data) >= limit:
            raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, f"message inflates to more than {limit - 1} bytes (max_message_size)")
        # Keep the window for the next message unless the client resets its
        # own (client_no_context_takeover) or ended the deflate stream with
        # a final block (RFC 7692 section 7.2.3.4): then start afresh.
        self._decompressor = None if self.client_no_context_takeover or d.eof else d
        if is_text and not _validate_utf8(data):
            raise ProtocolError(CloseCode.INVALID_DATA, "invalid UTF-8 in a compressed text message (RFC 6455 section 8.1)")
        return data

    # -- sending -----------------------------------------------------------

    def _deflate(self, data: bytes | bytearray | memoryview, final: bool) -> bytes:
        c = self._compressor
        if c is None:
            c = self._compressor = zlib.compressobj(self._level, zlib.DEFLATED, -self._compress_bits, self._mem_level)
        out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
        if final:
            if self.server_no_context_takeover:
                self._compressor = None
            # The flush ends with the empty stored block; the peer adds it back.
            return out[:-4]
        return out

    def frame(self, opcode: int, data: str | bytes | bytearray | memoryview) -> bytes:
        """One frame carrying a whole message, compressed unless it is short.

        A message under ``deflate_min_size`` bytes goes out uncompressed
        (RSV1 clear), which RFC 7692 allows for any message: deflate would
        make it bigger or save a few bytes for a zlib call.
        """
        if isinstance(data, str):
            data = data.encode("utf-8")
        if len(data) < self._min_size:
            return _encode_frame(opcode, data)
        return _encode_frame(opcode, self._deflate(data, True), True, True)

    def fragment(self, opcode: int, data: str | bytes | bytearray | memoryview, fin: bool) -> bytes:
        """One frame of a message sent in fragments (``send_frame``).

        The fragments of a message are one deflate stream: RSV1 on the first
        frame only, each fragment flushed so the peer can inflate it as it
        arrives, the final one without the sync-flush tail (RFC 7692 section
        7.2.1). Control frames, and continuations of a message that was not
        started here, pass through unchanged.
        """
        if opcode == OP_TEXT or opcode == OP_BINARY:
            if isinstance(data, str):
                data = data.encode("utf-8")
            if fin and len(data) < self._min_size:
                return _encode_frame(opcode, data)
            self._fragmenting = not fin
            return _encode_frame(opcode, self._deflate(data, fin), fin, True)
        if opcode == OP_CONT and self._fragmenting:
            if isinstance(data, str):
                data = data.encode("utf-8")
            self._fragmenting = not fin
            return _encode_frame(OP_CONT, self._deflate(data, fin), fin)
        return _encode_frame(opcode, data, fin)
