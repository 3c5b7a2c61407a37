"""WebSocket frame codec (RFC 6455 section 5, RFC 7692 RSV1), compiled.

Sans-I/O: :class:`FrameReader` turns received bytes into events,
:func:`encode_frame` turns a payload into frame bytes. The pure-Python twin
:mod:`fastws.codec._frame_py` has the same interface and behaviour.
"""

from typing import Final

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

OP_CONT: Final[int]
"""Continuation frame (0x0)."""
OP_TEXT: Final[int]
"""Text frame or message (0x1): the payload is UTF-8."""
OP_BINARY: Final[int]
"""Binary frame or message (0x2)."""
OP_CLOSE: Final[int]
"""Close frame (0x8)."""
OP_PING: Final[int]
"""Ping frame (0x9)."""
OP_PONG: Final[int]
"""Pong frame (0xA)."""
FLAG_RSV1: Final[int]
"""0x40, OR'd into a message event's opcode when the first frame of that
message had RSV1 set, i.e. it is compressed (RFC 7692). The reader does not
check the UTF-8 of such a text message: the caller does, after inflating."""

from fastws.exceptions import ProtocolError as ProtocolError

class FrameReader:
    """Incremental parser of the frames a WebSocket peer sends.

    Feed it bytes with :meth:`feed_data`, pull events with :meth:`next_event`
    until that returns None. Events are ``(opcode, payload)`` tuples with a
    ``bytes`` payload:

    - ``(OP_TEXT, data)`` / ``(OP_BINARY, data)``: a complete message,
      fragments reassembled; text is checked UTF-8 (still bytes). The opcode
      has ``FLAG_RSV1`` OR'd in when the message is compressed.
    - ``(OP_PING, data)`` / ``(OP_PONG, data)``: control frames, which may
      arrive between the fragments of a message.
    - ``(OP_CLOSE, data)``: the raw close payload, already valid by the rules
      of :func:`parse_close`. The reader is finished after it.

    The first rule the peer breaks raises :class:`ProtocolError`, as early
    in the byte stream as it can be known (a bad header byte, an oversized
    length, invalid text in a frame still arriving). After that, or after
    the close event, :meth:`next_event` returns None and :meth:`feed_data`
    ignores its input.
    """

    max_message_size: int | None
    """Largest message payload accepted, in bytes (the sum of a fragmented
    message's frames; control frames do not count; for compressed messages,
    the compressed size); None for no limit. A frame header declaring more
    fails the connection with 1009 before the payload is received. May be
    changed at any time; it applies from the next frame header on."""

    def __init__(
        self,
        *,
        max_message_size: int | None = 1048576,
        require_mask: bool = True,
        rsv1_allowed: bool = False,
    ) -> None:
        """Create a reader.

        ``require_mask`` True is the server side: every frame must be masked;
        False is the client side: every frame must be unmasked (RFC 6455
        section 5.1). ``rsv1_allowed`` means permessage-deflate was
        negotiated: RSV1 is then accepted on the first frame of a data
        message. RSV2/RSV3 are always a protocol error.
        """

    @property
    def buffered(self) -> int:
        """Bytes held by the reader (unparsed input plus the partial message),
        for memory accounting."""

    def feed_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the peer; ignored once finished.

        A ``bytes`` object that arrives while nothing is buffered is parsed
        in place; anything else is copied, since the caller may reuse it.
        """

    def next_event(self) -> tuple[int, bytes] | None:
        """Return the next complete event, or None until more data arrives.

        Raises :class:`ProtocolError` at the first violation.
        """

def encode_frame(
    opcode: int,
    payload: bytes | bytearray | memoryview | str,
    fin: bool = True,
    rsv1: bool = False,
    mask: bytes | None = None,
) -> bytes:
    """Build one frame.

    A ``str`` payload is encoded as UTF-8. With a 4-byte ``mask`` the frame is
    masked with it (client side); without, it is unmasked (server side). The
    shortest length encoding is used. Raises ValueError for an unknown
    opcode, a control frame that is fragmented, has RSV1 or carries more than
    125 bytes, RSV1 on a continuation frame, or a mask that is not 4 bytes.
    """

class FrameWriter:
    """Frames what the server sends (unmasked), for one connection.

    The compiled protocol calls :meth:`frame` through the vtable; this is
    where per-connection send state (permessage-deflate) will live.
    """

    def frame(self, opcode: int, payload: bytes | bytearray | memoryview | str, fin: bool = True) -> bytes:
        """One unmasked frame: ``encode_frame(opcode, payload, fin)``."""
    def header(self, opcode: int, length: int, fin: bool = True) -> bytes:
        """The unmasked header of a data frame of ``length`` payload bytes:
        ``header(op, len(p)) + p == frame(op, p)``."""

def close_payload(code: int, reason: str = "") -> bytes:
    """Payload of a close frame: the 2-byte code then the UTF-8 reason.

    Returns ``b""`` for 1005 ("no status"), which is never sent as a code;
    the reason is dropped with it. Raises ValueError for a code that may not
    be sent (only 1000-1003, 1007-1014 and 3000-4999 may) or a reason longer
    than 123 bytes once encoded.
    """

def parse_close(payload: bytes | bytearray | memoryview) -> tuple[int, str]:
    """``(code, reason)`` of a close frame payload; ``(1005, "")`` if empty.

    Raises :class:`ProtocolError` 1002 for a 1-byte payload or a code that
    may not be sent, 1007 for a reason that is not UTF-8.
    """

def validate_utf8(data: bytes | bytearray | memoryview) -> bool:
    """True if ``data`` is well-formed UTF-8: no overlong forms, no
    surrogates (U+D800..U+DFFF), nothing above U+10FFFF, no truncated
    sequence at the end."""
