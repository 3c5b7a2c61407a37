"""Opening-handshake helpers, compiled (twin: ``fastws.codec._handshake_py``).

SHA-1 and base64 are computed in C with no per-call Python objects besides
the returned ``bytes``; the pure-Python twin has the same names and behaviour.
"""

__all__ = ["GUID", "accept_key", "build_101", "is_valid_key"]

GUID: bytes
"""The magic string RFC 6455 section 1.3 appends to ``Sec-WebSocket-Key``:
``b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"``."""

def accept_key(key: bytes | str) -> bytes:
    """Return ``Sec-WebSocket-Accept`` for ``key``: base64(SHA-1(key + GUID)).

    ``key`` is used exactly as given (the caller strips surrounding
    whitespace); a ``str`` is encoded as UTF-8. The result is 28 ASCII bytes.
    Raises ``TypeError`` for anything but ``bytes`` or ``str``.
    """

def is_valid_key(key: bytes | str) -> bool:
    """Whether ``key`` is a well-formed ``Sec-WebSocket-Key`` (RFC 6455 4.2.1).

    True exactly when ``len(base64.b64decode(key, validate=True)) == 16``,
    which is the check websockets makes: 22 characters of the standard base64
    alphabet followed by ``==``. Like websockets this is lenient about the
    four padding bits of the 22nd character (``...R==`` is accepted although
    only ``A``, ``Q``, ``g``, ``w`` are canonical there). A ``str`` that is
    not ASCII is never valid (False, no exception). Raises ``TypeError`` for
    anything but ``bytes`` or ``str``.
    """

def build_101(accept: bytes, extra_headers: bytes = b"") -> bytes:
    """Return the complete ``101 Switching Protocols`` response.

    ``accept`` is the ``Sec-WebSocket-Accept`` value (see :func:`accept_key`);
    ``extra_headers`` is zero or more already-formatted ``Name: value\\r\\n``
    lines (subprotocol, extensions, ``Server``), inserted verbatim before the
    blank line that ends the head. Raises ``TypeError`` unless both are
    ``bytes``.
    """
