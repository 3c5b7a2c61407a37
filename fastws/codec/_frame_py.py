"""Pure-Python twin of :mod:`fastws.codec._frame`, the WebSocket frame codec.

Same names, same events, same close codes as the compiled module; it is what
runs when the extension is not built (``FASTWS_NO_EXTENSIONS=1``) and the
oracle the tests hold the compiled module against. The parsing order below
mirrors ``_frame.pyx`` check for check, so that both fail a given byte stream
at the same point with the same code however the stream is split.

Sans-I/O: :class:`FrameReader` takes bytes and hands back events, nothing here
touches a socket.
"""

from __future__ import annotations

import codecs
import operator
import sys

from ..exceptions import ProtocolError
from ..types import CloseCode

__all__ = [
    "FLAG_RSV1",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameReader",
    "ProtocolError",
    "close_payload",
    "encode_frame",
    "FrameWriter",
    "parse_close",
    "validate_utf8",
]

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
FLAG_RSV1 = 0x40

_DATA_OPCODES = frozenset((OP_CONT, OP_TEXT, OP_BINARY))
_CONTROL_OPCODES = frozenset((OP_CLOSE, OP_PING, OP_PONG))

# The compiled reader keeps payload offsets in a Py_ssize_t next to a 14-byte
# header; the twin refuses the same absurd lengths so both agree on them.
_MAX_FRAME_LENGTH = sys.maxsize - 14

_Utf8Decoder = codecs.getincrementaldecoder("utf-8")


def _valid_close_code(code: int) -> bool:
    # RFC 6455 section 7.4.1 defines 1000-1003 and 1007-1011; IANA registered
    # 1012-1014 since. 1004-1006 and 1015 are reserved and must never appear
    # on the wire; 3000-4999 belong to libraries and applications.
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def _unmask(data: bytes | bytearray | memoryview, key: bytes, offset: int) -> bytes:
    """XOR ``data`` with ``key``, ``data[0]`` being payload byte ``offset``."""
    n = len(data)
    if offset & 3:
        key = key[offset & 3 :] + key[: offset & 3]
    keystream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(keystream, "little")).to_bytes(
        n, "little"
    )


def _utf8_feed(decoder: codecs.IncrementalDecoder, data: bytes, final: bool) -> bool:
    """Feed ``data`` to ``decoder``; False as soon as no valid text can follow."""
    try:
        decoder.decode(data, final)
    except UnicodeDecodeError:
        return False
    if not final:
        # CPython's decoder holds back ED A0..ED BF (a surrogate half) until
        # the third byte arrives, for the sake of the "surrogatepass" handler;
        # two bytes already rule out valid UTF-8, and the compiled DFA says so.
        pending = decoder.getstate()[0]
        if len(pending) >= 2 and pending[0] == 0xED and pending[1] >= 0xA0:
            return False
    return True


class FrameReader:
    """Incremental parser of the frames a WebSocket peer sends.

    Feed it bytes with :meth:`feed_data`, pull events with :meth:`next_event`
    until that returns None. Events are ``(opcode, payload)`` tuples: complete
    TEXT/BINARY messages (fragments reassembled; ``| FLAG_RSV1`` if
    compressed), PING/PONG frames and finally CLOSE. The first rule the peer
    breaks raises :class:`ProtocolError`; after that, or after the CLOSE
    event, the reader is finished and ignores everything.
    """

    __slots__ = (
        "_buf",
        "_pos",
        "_frame_done",
        "_msg",
        "_msg_opcode",
        "_decoder",
        "_max_size",
        "_require_mask",
        "_rsv1_allowed",
        "_finished",
    )

    def __init__(
        self,
        *,
        max_message_size: int | None = 1048576,
        require_mask: bool = True,
        rsv1_allowed: bool = False,
    ) -> None:
        self._buf = bytearray()
        self._pos = 0  # first unparsed byte of _buf
        # Payload bytes of the partial frame at _pos that were already
        # unmasked in place and UTF-8 checked (fail fast on big text frames).
        self._frame_done = 0
        self._msg = bytearray()  # fragments of the message in progress
        self._msg_opcode = -1  # its opcode | FLAG_RSV1, -1 when none
        self._decoder: codecs.IncrementalDecoder | None = None
        self._max_size: int | None = None
        self.max_message_size = max_message_size
        self._require_mask = bool(require_mask)
        self._rsv1_allowed = bool(rsv1_allowed)
        self._finished = False

    @property
    def max_message_size(self) -> int | None:
        """Largest message payload accepted, in bytes; None for no limit."""
        return self._max_size

    @max_message_size.setter
    def max_message_size(self, value: int | None) -> None:
        if value is not None:
            value = operator.index(value)
            if value < 0:
                raise ValueError("max_message_size must be >= 0 or None")
        self._max_size = value

    @property
    def buffered(self) -> int:
        """Bytes held by the reader: unparsed input plus the partial message."""
        return len(self._buf) - self._pos + len(self._msg)

    def feed_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the peer; ignored once finished."""
        if self._finished:
            return
        self._buf += data

    def next_event(self) -> tuple[int, bytes] | None:
        """Return the next complete event, or None until more data arrives."""
        while not self._finished:
            try:
                event = self._parse_frame()
            except ProtocolError:
                self._finish()
                raise
            if event is None:
                # Need more data: drop the consumed prefix (bytearray makes
                # deleting from the front cheap).
                if self._pos:
                    del self._buf[: self._pos]
                    self._pos = 0
                return None
            if event is not _CONSUMED:
                if self._finished:
                    self._finish()
                return event
        return None

    def _finish(self) -> None:
        self._finished = True
        self._buf = bytearray()
        self._pos = 0
        self._msg = bytearray()
        self._decoder = None

    def _parse_frame(self) -> tuple[int, bytes] | None:
        """Parse the frame at ``_pos``.

        Returns an event, ``_CONSUMED`` for a frame that ended without one (a
        non-final fragment) or None when more bytes are needed. Checks run
        in the order the header bytes arrive so that an error is raised as
        early as it can be known, whatever the split of the input.
        """
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < 1:
            return None
        b0 = buf[pos]
        fin = b0 & 0x80
        rsv1 = b0 & 0x40
        opcode = b0 & 0x0F
        if b0 & 0x30:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "RSV2/RSV3 bit set but no extension defines it (RFC 6455 section 5.2)")
        if opcode >= 8:
            if opcode not in _CONTROL_OPCODES:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"reserved opcode 0x{opcode:X} (RFC 6455 section 5.2)")
            if rsv1:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "RSV1 bit set on a control frame (RFC 7692 section 6)")
            if not fin:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "fragmented control frame (RFC 6455 section 5.5)")
        else:
            if opcode not in _DATA_OPCODES:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"reserved opcode 0x{opcode:X} (RFC 6455 section 5.2)")
            if opcode == OP_CONT:
                if self._msg_opcode < 0:
                    raise ProtocolError(
                        CloseCode.PROTOCOL_ERROR, "continuation frame without a message to continue (RFC 6455 section 5.4)"
                    )
                if rsv1:
                    raise ProtocolError(CloseCode.PROTOCOL_ERROR, "RSV1 bit set on a continuation frame (RFC 7692 section 6)")
            else:
                if self._msg_opcode >= 0:
                    raise ProtocolError(
                        CloseCode.PROTOCOL_ERROR,
                        "new data frame before the fragmented message was finished (RFC 6455 section 5.4)",
                    )
                if rsv1 and not self._rsv1_allowed:
                    raise ProtocolError(
                        CloseCode.PROTOCOL_ERROR, "RSV1 bit set but permessage-deflate was not negotiated (RFC 6455 section 5.2)"
                    )
        if avail < 2:
            return None
        b1 = buf[pos + 1]
        masked = b1 & 0x80
        if self._require_mask and not masked:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "client frame is not masked (RFC 6455 section 5.1)")
        if masked and not self._require_mask:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "server frame is masked (RFC 6455 section 5.1)")
        length = b1 & 0x7F
        # Lengths need not use the shortest encoding: RFC 6455 section 5.2 says
        # "must", but rejecting a peer over it buys nothing, so we are lenient
        # (also for control frames: their limit applies to the decoded length).
        hlen = 2
        if length == 126:
            if avail < 4:
                return None
            length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
            hlen = 4
        elif length == 127:
            if avail < 10:
                return None
            length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            if length >> 63:
                raise ProtocolError(
                    CloseCode.PROTOCOL_ERROR, "64-bit payload length has the most significant bit set (RFC 6455 section 5.2)"
                )
            hlen = 10
        if opcode >= 8 and length > 125:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "control frame payload longer than 125 bytes (RFC 6455 section 5.5)")
        # Refuse an oversized message on its header, before buffering it.
        if opcode < 8 and self._max_size is not None and len(self._msg) + length > self._max_size:
            raise ProtocolError(
                CloseCode.MESSAGE_TOO_BIG,
                f"message of {len(self._msg) + length} bytes exceeds max_message_size="
                f"{self._max_size} (RFC 6455 section 7.4.1)",
            )
        if length > _MAX_FRAME_LENGTH:
            raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, "frame length does not fit in memory (RFC 6455 section 7.4.1)")
        if masked:
            hlen += 4
        if avail < hlen:
            return None
        key = bytes(buf[pos + hlen - 4 : pos + hlen]) if masked else b""
        start = pos + hlen
        have = avail - hlen
        done = self._frame_done
        check_text = not rsv1 and (
            opcode == OP_TEXT or (opcode == OP_CONT and self._msg_opcode == OP_TEXT)
        )

        if have < length:
            # Partial frame: check the text received so far, so that garbage
            # fails now and not after the peer has sent megabytes more.
            if check_text and have > done:
                chunk: bytes | bytearray = buf[start + done : start + have]
                if masked:
                    chunk = _unmask(chunk, key, done)
                    buf[start + done : start + have] = chunk
                if self._decoder is None:
                    self._decoder = _Utf8Decoder()
                if not _utf8_feed(self._decoder, bytes(chunk), False):
                    raise ProtocolError(CloseCode.INVALID_DATA, "text message is not valid UTF-8 (RFC 6455 section 8.1)")
                self._frame_done = have
            return None

        self._pos = start + length
        self._frame_done = 0
        if masked:
            payload = bytes(buf[start : start + done]) + _unmask(
                buf[start + done : start + length], key, done
            )
        else:
            payload = bytes(buf[start : start + length])

        if opcode >= 8:
            if opcode == OP_CLOSE:
                parse_close(payload)
                self._finished = True
            return (opcode, payload)

        flagged = opcode | FLAG_RSV1 if rsv1 else opcode
        if fin and self._msg_opcode < 0:
            if check_text:
                if self._decoder is None:
                    ok = validate_utf8(payload)
                else:
                    ok = _utf8_feed(self._decoder, payload[done:], True)
                    self._decoder = None
                if not ok:
                    raise ProtocolError(CloseCode.INVALID_DATA, "text message is not valid UTF-8 (RFC 6455 section 8.1)")
            return (flagged, payload)

        if self._msg_opcode < 0:
            self._msg_opcode = flagged
        if check_text:
            if self._decoder is None:
                self._decoder = _Utf8Decoder()
            if not _utf8_feed(self._decoder, payload[done:], bool(fin)):
                raise ProtocolError(CloseCode.INVALID_DATA, "text message is not valid UTF-8 (RFC 6455 section 8.1)")
        self._msg += payload
        if not fin:
            return _CONSUMED
        event = (self._msg_opcode, bytes(self._msg))
        self._msg = bytearray()
        self._msg_opcode = -1
        self._decoder = None
        return event


# Returned by _parse_frame for a frame that yields no event; compared by identity.
_CONSUMED: tuple[int, bytes] = (-1, b"")


def encode_frame(
    opcode: int,
    payload: bytes | bytearray | memoryview | str,
    fin: bool = True,
    rsv1: bool = False,
    mask: bytes | None = None,
) -> bytes:
    """Build one frame; ``mask`` (4 bytes) masks it, as a client must."""
    if isinstance(payload, str):
        data = payload.encode("utf-8")
    else:
        data = bytes(payload)
    n = len(data)
    if opcode >= 8:
        if opcode not in _CONTROL_OPCODES:
            raise ValueError(f"invalid opcode 0x{opcode:X} (RFC 6455 section 5.2)")
        if n > 125:
            raise ValueError("control frame payload longer than 125 bytes (RFC 6455 section 5.5)")
        if not fin:
            raise ValueError("control frames cannot be fragmented (RFC 6455 section 5.5)")
        if rsv1:
            raise ValueError("RSV1 cannot be set on a control frame (RFC 7692 section 6)")
    elif opcode not in _DATA_OPCODES:
        raise ValueError(f"invalid opcode {opcode} (RFC 6455 section 5.2)")
    elif rsv1 and opcode == OP_CONT:
        raise ValueError("RSV1 cannot be set on a continuation frame (RFC 7692 section 6.1)")
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    mask_bit = 0
    if mask is not None:
        key = bytes(memoryview(mask))
        if len(key) != 4:
            raise ValueError("mask must be 4 bytes (RFC 6455 section 5.3)")
        mask_bit = 0x80
    if n < 126:
        header = bytes((b0, mask_bit | n))
    elif n < 65536:
        header = bytes((b0, mask_bit | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((b0, mask_bit | 127)) + n.to_bytes(8, "big")
    if mask is None:
        return header + data
    return header + key + _unmask(data, key, 0)


class FrameWriter:
    """Frames what the server sends (unmasked), for one connection."""

    __slots__ = ()

    def frame(self, opcode: int, payload: bytes | bytearray | memoryview | str, fin: bool = True) -> bytes:
        """One unmasked frame: ``encode_frame(opcode, payload, fin)``."""
        return encode_frame(opcode, payload, fin)

    def header(self, opcode: int, length: int, fin: bool = True) -> bytes:
        """The unmasked header of a data frame of ``length`` payload bytes
        (``header(op, len(p)) + p == frame(op, p)``)."""
        if opcode not in _DATA_OPCODES:
            raise ValueError(f"header() is for data frames, not opcode {opcode} (RFC 6455 section 5.2)")
        if length < 0:
            raise ValueError("length must be at least 0")
        b0 = (0x80 if fin else 0) | opcode
        if length < 126:
            return bytes((b0, length))
        if length < 65536:
            return bytes((b0, 126)) + length.to_bytes(2, "big")
        return bytes((b0, 127)) + length.to_bytes(8, "big")


def close_payload(code: int, reason: str = "") -> bytes:
    """Payload of a close frame; ``b""`` for 1005, which means "no status".

    1005 is never sent as a code (RFC 6455 section 7.4.1): an empty close
    frame says it, so ``reason`` is dropped with it.
    """
    if code == CloseCode.NO_STATUS_RCVD:
        return b""
    if not _valid_close_code(code):
        raise ValueError(f"close code {code} may not be sent (RFC 6455 section 7.4.1)")
    data = reason.encode("utf-8")
    if len(data) > 123:
        raise ValueError("close reason longer than 123 bytes (RFC 6455 section 5.5)")
    return code.to_bytes(2, "big") + data


def parse_close(payload: bytes) -> tuple[int, str]:
    """``(code, reason)`` of a close frame payload; ``(1005, "")`` if empty."""
    n = len(payload)
    if n == 0:
        return (CloseCode.NO_STATUS_RCVD, "")
    if n == 1:
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, "close frame payload of 1 byte (RFC 6455 section 5.5.1)")
    code = int.from_bytes(payload[:2], "big")
    if not _valid_close_code(code):
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"invalid close code {code} (RFC 6455 section 7.4)")
    try:
        reason = str(payload[2:], "utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(CloseCode.INVALID_DATA, "close reason is not valid UTF-8 (RFC 6455 section 5.5.1)") from None
    return (code, reason)


def validate_utf8(data: bytes | bytearray | memoryview) -> bool:
    """True if ``data`` is well-formed UTF-8 (no overlongs, no surrogates)."""
    try:
        str(data, "utf-8")
    except UnicodeDecodeError:
        return False
    return True
